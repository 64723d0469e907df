"""``study tokenizer-ceiling``: the scripted experts, closed loop, with every action sent through a tokenizer.

A policy whose actions are tokens can do no better than its teacher whose actions pass through the same
tokenizer (encode, then decode) before the env runs them: that success rate is the tokenizer's ceiling.
Each variant is a bins tokenizer fitted on the demos (``bins64``: 64 uniform bins on the 1st-99th
percentile range of each dimension, as the shipped LIBERO policies use; ``bins256-clip0``: 256 bins on the
full range); ``raw`` runs the experts unchanged, on the same episodes.

::

    python cli.py study tokenizer-ceiling --env libero_goal --data data/libero_goal_demos \\
        --variants raw,bins64,bins256,bins64-clip0 --episodes-per-task 10 --num-envs 2

Writes ``tokenizer_ceiling.md``/``.json``/``.png`` and, per variant, the fitted tokenizer and the
evaluation's ``results.json`` (resumable: run the same command again to continue).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.studies import common
from dfm_vla.studies.report import plot_bars, write_study

NAME = "tokenizer_ceiling"
_VARIANT = re.compile(r"^(raw|bins(\d+)(?:-clip([0-9.]+))?)$")


def parse_variant(text: str) -> dict[str, Any]:
    """``raw`` -> no tokenizer; ``bins64`` / ``bins256-clip0.1`` -> bins, clip percentile (default 1)."""
    m = _VARIANT.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected raw or bins<N>[-clip<P>] (e.g. bins64-clip0), got {text!r}"
        )
    if m.group(1) == "raw":
        return {"name": "raw"}
    clip = float(m.group(3)) if m.group(3) is not None else 1.0
    return {"name": m.group(1), "num_bins": int(m.group(2)), "clip_percentile": clip}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", nargs="+", required=True, metavar="PATH", help="demos the tokenizers are fitted on"
    )
    parser.add_argument(
        "--variants",
        type=lambda s: [parse_variant(v) for v in s.split(",") if v.strip()],
        default=[parse_variant(v) for v in ("raw", "bins64", "bins256", "bins64-clip0")],
        help="comma-separated: raw, bins<N>, bins<N>-clip<P> (default raw,bins64,bins256,bins64-clip0)",
    )
    parser.add_argument("--horizon", type=int, default=8, help="chunk length of the fitted tokenizers")
    parser.add_argument(
        "--gripper-dims", type=common.int_list, default=[6], help="binary dims (default 6, LIBERO's gripper)"
    )
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    common.add_protocol_arguments(parser)
    common.add_output_arguments(parser, "runs/study/tokenizer-ceiling-<env>")


def fit_variant(variant: dict[str, Any], chunks: np.ndarray, gripper_dims: list[int], out: Path) -> dict:
    """Fit the variant's tokenizer on ``chunks`` (N, H, D), save it in ``out``; its round-trip errors."""
    from dfm_vla.policy.bin_tokenizer import BinActionTokenizer, BinTokenizerConfig

    config = BinTokenizerConfig(
        num_bins=variant["num_bins"],
        gripper_dims=tuple(gripper_dims),
        clip_percentile=variant["clip_percentile"],
    )
    tok = BinActionTokenizer(config).fit(chunks)
    tok.save(out)
    back = tok.decode(tok.encode(chunks)).actions
    motion = [d for d in range(chunks.shape[2]) if d not in gripper_dims]
    err = np.abs(back[..., motion] - chunks[..., motion])
    return {"mae": float(err.mean()), "max_abs_error": float(err.max())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dfm_vla.evaluation.policies import PolicySpec
    from dfm_vla.evaluation.results import ResultsFile, run_meta
    from dfm_vla.evaluation.runner import RunConfig, run_protocol
    from dfm_vla.train.dataset import ChunkDataset
    from dfm_vla.train.readers import read_episodes

    common.check_protocol(args)
    out = common.out_dir(args, f"runs/study/tokenizer-ceiling-{args.env}")
    out.mkdir(parents=True, exist_ok=True)
    episodes = [ep for path in args.data for ep in read_episodes(path, obs_keys=[], load_images=False)]
    chunks = ChunkDataset(episodes, args.horizon, state_keys=()).actions
    env_kwargs = {"max_episode_steps": args.max_episode_steps} if args.max_episode_steps else {}
    cells = []
    for variant in args.variants:
        folder = out / variant["name"]
        round_trip, errors = None, {"mae": 0.0, "max_abs_error": 0.0}
        if variant["name"] != "raw":
            round_trip = str(folder / "action_tokenizer")
            errors = fit_variant(variant, chunks, args.gripper_dims, Path(round_trip))
        spec = PolicySpec("expert", seed=args.seed, round_trip=round_trip)
        meta = run_meta(
            args.env, spec, seed=args.seed, episodes_per_task=args.episodes_per_task, tasks=args.tasks
        )
        results = ResultsFile(folder, meta, resume=(folder / "results.json").is_file())
        if not (args.dry_run or args.report_only):
            cfg = RunConfig(env=args.env, policy=spec, out_dir=str(folder), env_kwargs=env_kwargs)
            stream = run_protocol(
                cfg,
                results,
                tasks=args.tasks,
                episodes_per_task=args.episodes_per_task,
                seed=args.seed,
                num_envs=args.num_envs,
            )
            for result in stream:
                print(
                    f"{variant['name']}: task {result.spec.task_id} init {result.spec.init_state_id} "
                    f"{'success' if result.success else 'fail'}",
                    flush=True,
                )
        overall = results.summary()["overall"]
        cells.append({"variant": variant, "round_trip_error": errors, "overall": overall, "dir": str(folder)})
    rows = [_row(c) for c in cells]
    plot = out / f"{NAME}.png"
    if rows and all(r["episodes"] for r in rows):
        plot_bars(rows, "variant", plot, f"{args.env}: experts through each tokenizer", panels=("success",))
    notes = [
        f"demos: {', '.join(args.data)} ({len(episodes)} episodes, {len(chunks)} chunks of {args.horizon})",
        "round-trip errors in the env's action units over the demo chunks, motion dims only",
    ]
    return write_study(out, NAME, f"Tokenizer ceilings on {args.env}", rows, notes, plot, cells, env=args.env)


def _row(cell: dict[str, Any]) -> dict[str, Any]:
    from dfm_vla.evaluation.results import wilson_interval

    o = cell["overall"]
    k, n = int(o["successes"]), int(o["episodes"])
    lo, hi = wilson_interval(k, n) if n else (0.0, 0.0)
    return {
        "variant": cell["variant"]["name"],
        "success": f"{k}/{n}",
        "success_%": round(100.0 * k / n, 1) if n else 0.0,
        "wilson_lo_%": round(100.0 * lo, 1),
        "wilson_hi_%": round(100.0 * hi, 1),
        "episodes": n,
        "round_trip_mae": round(cell["round_trip_error"]["mae"], 5),
        "round_trip_max": round(cell["round_trip_error"]["max_abs_error"], 4),
    }
