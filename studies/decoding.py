"""``study decoding --policy DIR``: success and ms per chunk of one trained DFM policy as decoding changes.

Three ablations, all on the same checkpoint and protocol:

- ``split``: T_fine stochastic Euler steps + T_val greedy validation steps, 16 in all (paper: 14 + 2
  best, 16 + 0 worst on LIBERO, 94.8% vs 95.7%);
- ``steps``: total model calls in {4, 8, 16, 32}, split 7:1 like 14 + 2 (T_val = max(1, total // 8));
- ``schedule``: beta_t = c (t / (1 - t))^alpha at decoding time, c x alpha (paper: robust for c in
  {1, 3, 5} and alpha in {0.5, 1}). The paper varies the schedule of the trained model; here only the
  sampler's schedule changes, the model is trained once.

A setting that appears in several ablations (14 + 2 with the policy's own schedule) runs once. Every plan
decodes cold by default (``--warm-start off``), whatever the checkpoint's ``warm_start`` says, so each row
measures its decoder; ``--warm-start on`` refines every plan after an episode's first from the previous
one with the checkpoint's warm-start fields, and the rows' steps then apply to the first plan only.
The checkpoint's other decoding fields (``posterior_temperature``, ``val_time``) apply to every cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dfm_vla.studies import common
from dfm_vla.studies.cells import Cell, cell_status
from dfm_vla.studies.report import aggregate, plot_bars, write_study

NAME = "decoding"
GROUP_BY = ("ablation", "setting")


def _pairs(text: str) -> list[tuple[int, int]]:
    """``16,0;14,2`` -> [(16, 0), (14, 2)]."""
    out = []
    for part in text.split(";"):
        nums = common.int_list(part)
        if len(nums) != 2 or min(nums) < 0 or sum(nums) == 0:
            raise argparse.ArgumentTypeError(f"expected T_FINE,T_VAL pairs like 14,2;8,8, got {part!r}")
        out.append((nums[0], nums[1]))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, metavar="DIR", help="a trained DFM policy folder")
    parser.add_argument(
        "--splits", type=_pairs, default=[(16, 0), (14, 2), (12, 4), (8, 8)], help="T_FINE,T_VAL;... pairs"
    )
    parser.add_argument(
        "--total-steps", type=common.int_list, default=[4, 8, 16, 32], help="model calls per chunk"
    )
    parser.add_argument("--c", type=common.float_list, default=[1.0, 3.0, 5.0], help="schedule scales c")
    parser.add_argument("--alpha", type=common.float_list, default=[0.5, 1.0, 2.0], help="schedule exponents")
    parser.add_argument(
        "--base-steps",
        type=lambda s: _pairs(s)[0],
        default=(14, 2),
        help="T_FINE,T_VAL of the schedule ablation",
    )
    parser.add_argument(
        "--seeds", type=common.seed_list, default=[0], help="evaluation seeds: a count or a list"
    )
    parser.add_argument(
        "--warm-start",
        choices=("off", "on"),
        default="off",
        help="off: every plan decodes cold, so each row measures its decoder (default); on: plans after an "
        "episode's first refine from the previous one with the checkpoint's warm-start fields",
    )
    common.add_protocol_arguments(parser)
    common.add_output_arguments(parser, "runs/study/decoding-<policy folder name>")


def split_of_total(total: int) -> tuple[int, int]:
    """(T_fine, T_val) for ``total`` model calls in the paper's 14:2 proportion, at least one greedy step."""
    if total < 2:
        raise ValueError(f"--total-steps: expected >= 2 (one Euler and one greedy step), got {total}")
    val = max(1, total // 8)
    return total - val, val


def _own_schedule(policy: Path) -> tuple[float, float] | None:
    """(c, alpha) of the policy's own metric path, from its config.json (None when it does not say)."""
    if not (policy / "config.json").is_file():
        return None
    from dfm_vla.policy.checkpoint import read_config

    _, extra = read_config(policy)
    path = extra.get("metric_path") or {}
    return (float(path["c"]), float(path["alpha"])) if "c" in path and "alpha" in path else None


def plan(args: argparse.Namespace) -> tuple[list[Cell], list[tuple[str, str, str, int]]]:
    """The distinct cells, and (ablation, setting label, cell key, seed) for every table entry."""
    policy = Path(args.policy)
    if not policy.is_dir():
        raise FileNotFoundError(f"--policy {policy}: no such policy folder")
    for c in args.c:
        if c <= 0:
            raise ValueError(f"--c: expected positive numbers, got {c}")
    for a in args.alpha:
        if a <= 0:
            raise ValueError(f"--alpha: expected positive numbers, got {a}")
    settings: list[tuple[str, str, tuple[int, int], tuple[float, float] | None]] = []
    for tf, tv in args.splits:
        settings.append(("split", f"{tf}+{tv}", (tf, tv), None))
    for total in args.total_steps:
        settings.append(("steps", str(total), split_of_total(total), None))
    own = _own_schedule(policy)
    for c in args.c:
        for a in args.alpha:
            schedule = None if (c, a) == own else (c, a)  # the policy's own schedule runs once
            settings.append(("schedule", f"c={c:g} a={a:g}", tuple(args.base_steps), schedule))
    warm = args.warm_start == "on"
    cells: dict[str, Cell] = {}
    entries = []
    for seed in args.seeds:
        for ablation, label, steps, schedule in settings:
            sched = "sched-policy" if schedule is None else f"c{schedule[0]:g}-a{schedule[1]:g}"
            key = f"T{steps[0]}+{steps[1]}-{sched}{'-warm' if warm else ''}-seed{seed}"
            if key not in cells:
                spec = common.eval_spec(
                    args, seed, decoder="dfm", steps=steps, schedule=schedule, warm_start=warm
                )
                cells[key] = Cell(
                    key=key,
                    labels={"steps": f"{steps[0]}+{steps[1]}", "schedule": sched, "seed": seed},
                    eval=spec,
                    policy_dir=str(policy.resolve()),
                )
            entries.append((ablation, label, key, seed))
    return list(cells.values()), entries


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.check_protocol(args)
    cells, entries = plan(args)
    out = common.out_dir(args, f"runs/study/decoding-{Path(args.policy).resolve().name}")
    if args.dry_run:
        rows = [{"cell": c.key, **c.labels, "status": cell_status(c, out)} for c in cells]
        return {"study": "dry-run", "out": str(out), "rows": rows}
    results, left_out = common.cell_results(cells, out, args)
    by_key = {r["key"]: r for r in results}
    labelled = [
        {**by_key[key], "labels": {"ablation": ablation, "setting": label, "seed": seed}}
        for ablation, label, key, seed in entries
        if key in by_key
    ]
    # One policy, nothing trained per cell: the training columns would be empty.
    rows = [
        {k: v for k, v in r.items() if k not in ("train_steps", "val_loss")}
        for r in aggregate(labelled, GROUP_BY)
    ]
    title = f"decoding ablations, {args.env}: {Path(args.policy).resolve().name}"
    notes = [
        f"policy {Path(args.policy).resolve()}, env {args.env}, episodes per task: "
        f"{args.episodes_per_task or 'full protocol'}, tasks: {args.tasks or 'all'}, "
        f"evaluation seeds: {args.seeds}",
        "every plan decodes cold (--warm-start off)"
        if args.warm_start == "off"
        else "plans after an episode's first refine from the previous plan (--warm-start on, the "
        "checkpoint's warm-start fields); the steps below apply to each episode's first plan",
        "split: T_fine + T_val = 16; steps: total model calls per chunk, T_val = max(1, total // 8); "
        f"schedule: c and alpha of beta_t at decoding time, {args.base_steps[0]}+{args.base_steps[1]} steps",
        "ms_per_chunk: median over episodes of the median planning time (prefix + all refinement steps)",
        *left_out,
    ]
    plot = out / f"{NAME}.png"
    plot_bars(rows, "setting", plot, title, group_key="ablation", panels=("success", "ms"))
    return write_study(
        out,
        NAME,
        title,
        rows,
        notes,
        plot,
        list(by_key.values()),
        env=args.env,
        policy=str(Path(args.policy).resolve()),
    )
