"""`python cli.py rollout` (live dashboard) and `python cli.py eval` (plain log lines, for scripts).

Both run the env's evaluation protocol: every task (or --tasks), the official initial states in order
(LIBERO: 50 per task), the suite's step limit, the benchmark's own success check. Results go to
``<out>/results.json`` after every episode; ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dfm_vla.evaluation.dashboard import Dashboard
from dfm_vla.evaluation.policies import EXECUTION_MODES, policy_spec_from_args
from dfm_vla.evaluation.results import ResultsFile, plot_success_by_task, run_meta
from dfm_vla.evaluation.runner import VIDEO_MODES, RunConfig, run_protocol

QUICK_EPISODES_PER_TASK = 5  # `rollout` default: a first look in minutes; --full runs the protocol
QUICK_CHAINS = 20  # the same for CALVIN's 1000 evaluation chains
MAX_DEFAULT_ENVS = 4


def add_arguments(parser: argparse.ArgumentParser, *, interactive: bool = True) -> None:
    parser.add_argument("--env", default="libero_goal", help="env name (default: libero_goal)")
    parser.add_argument(
        "--policy",
        help="checkpoint folder, or 'expert' for the scripted experts "
        "(default: the checkpoint that ships for --env)",
    )
    parser.add_argument("--remote", metavar="HOST:PORT", help="use a policy served by `cli.py serve`")
    parser.add_argument(
        "--round-trip",
        metavar="TOKENIZER_DIR",
        help="with --policy expert: send every action through this action tokenizer (encode, decode) first",
    )
    parser.add_argument("--decoder", choices=("dfm", "dd", "ar"), help="decoder (default: the checkpoint's)")
    parser.add_argument("--steps", type=_steps, metavar="T_FINE,T_VAL", help="DFM steps, e.g. 14,2")
    parser.add_argument(
        "--warm-start",
        choices=("on", "off"),
        help="DFM: refine each chunk from the previous plan (default: the checkpoint's warm_start)",
    )
    parser.add_argument(
        "--execute-horizon",
        type=int,
        metavar="N",
        help="actions of each chunk run before re-planning (default: the checkpoint's execute_horizon)",
    )
    parser.add_argument(
        "--latency-steps",
        type=int,
        default=0,
        metavar="K",
        help="simulate a policy that takes K control steps to plan: the env runs on meanwhile (default: 0)",
    )
    parser.add_argument(
        "--execution",
        choices=EXECUTION_MODES,
        default="sync",
        help="under --latency-steps: sync (the robot holds still while each chunk is planned), async (the "
        "next chunk is planned while the current one runs), async-frozen (async, and the steps that run "
        "meanwhile are frozen in the new chunk); default: sync",
    )
    parser.add_argument("--tasks", type=_int_list, help="comma-separated task ids (default: all)")
    parser.add_argument(
        "--episodes-per-task",
        type=int,
        help=f"episodes per task (default: {QUICK_EPISODES_PER_TASK} for rollout, full protocol for eval)",
    )
    parser.add_argument("--full", action="store_true", help="the full protocol (LIBERO: 50 per task)")
    parser.add_argument(
        "--chains",
        type=int,
        help="CALVIN envs: evaluation chains to run (default: 20 for rollout, 1000 for eval)",
    )
    parser.add_argument(
        "--max-steps", type=int, help="cut episodes at this many steps (quick checks; not the protocol)"
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        help=f"parallel env processes (default: this machine's cores, at most {MAX_DEFAULT_ENVS})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per env process (default: 1; a small policy's many small ops run fastest on "
        "one thread, and more threads than cores slow every process down)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", choices=VIDEO_MODES, default="none", help="save MP4s (renders every step)")
    parser.add_argument("--video-view", help="camera for videos (default: the env's first)")
    parser.add_argument("--out", help="output folder (default: runs/<command>/<env>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(_interactive=interactive)


def default_num_envs() -> int:
    """One env process per core, at most MAX_DEFAULT_ENVS (each holds a simulator and a policy copy)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_ENVS, cores))


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, interactive=False)


def main(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise SystemExit("--resume needs --out DIR: the folder of the run to continue")
    if args.num_envs is None:
        args.num_envs = default_num_envs()
    if args.num_envs < 1:
        raise SystemExit(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    spec = policy_spec_from_args(
        args.env,
        args.policy,
        args.remote,
        decoder=args.decoder,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        round_trip=args.round_trip,
        warm_start=None if args.warm_start is None else args.warm_start == "on",
        execute_horizon=args.execute_horizon,
        latency_steps=args.latency_steps,
        execution=args.execution,
    )
    command = "rollout" if args._interactive else "eval"
    out = Path(args.out or f"runs/{command}/{args.env}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.full:
        per_task = None
    elif args.episodes_per_task is not None:
        per_task = args.episodes_per_task
    else:
        per_task = QUICK_EPISODES_PER_TASK if args._interactive else None
    if args.max_steps is not None and args.max_steps < 1:
        raise SystemExit(f"--max-steps must be >= 1, got {args.max_steps}")
    env_kwargs = {"max_episode_steps": args.max_steps} if args.max_steps else {}
    cfg = RunConfig(
        env=args.env,
        policy=spec,
        out_dir=str(out),
        video=args.video,
        video_view=args.video_view,
        env_kwargs=env_kwargs,
        torch_threads=args.threads,
    )
    meta = run_meta(
        args.env, spec, seed=args.seed, episodes_per_task=per_task, tasks=args.tasks, max_steps=args.max_steps
    )
    if args.env.startswith("calvin_"):
        from dfm_vla.evaluation.chains import run_chains

        if args.latency_steps:
            raise SystemExit("--latency-steps: CALVIN's chain protocol does not simulate a delay yet")

        chains = 1000 if args.full else args.chains or (QUICK_CHAINS if args._interactive else 1000)
        meta["chains"] = chains
        return run_chains(args, cfg, meta, chains, args._interactive)
    results = ResultsFile(out, meta, resume=args.resume)
    dashboard = Dashboard(
        f"{command} {args.env} ({spec.describe()})", 0, live=None if args._interactive else False
    )
    for e in results.episodes:
        dashboard.add_prior(e["spec"]["task_id"], e["success"])
    stream = run_protocol(
        cfg,
        results,
        tasks=args.tasks,
        episodes_per_task=per_task,
        seed=args.seed,
        num_envs=args.num_envs,
        on_total=dashboard.set_total,
        on_step=dashboard.on_step,
    )
    try:
        with dashboard:
            for result in stream:
                dashboard.on_episode(result)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(results.episodes)} episodes saved in {results.path}; "
            f"continue with --out {out} --resume"
        )
        return 130
    finish(results, out, args.env)
    return 0


def finish(results: ResultsFile, out: Path, env: str) -> None:
    """Print the summary table and write the success chart next to results.json."""
    from dfm_vla.utils.report import print_table

    summary = results.summary()
    rows = [
        {
            "task": k,
            "instruction": v["instruction"],
            "success": f"{v['successes']}/{v['episodes']}",
            "rate %": round(100 * v["success_rate"], 1),
            "mean length": round(v["mean_length"], 1),
        }
        for k, v in summary["per_task"].items()
    ]
    o = summary["overall"]
    rows.append(
        {
            "task": "all",
            "instruction": "",
            "success": f"{o['successes']}/{o['episodes']}",
            "rate %": round(100 * o["mean_task_success_rate"], 1),
            "mean length": "",
        }
    )
    print_table(f"{env}: {results.meta['policy']}", rows)
    if summary["per_task"]:
        plot_success_by_task(summary, out / "success_by_task.png", f"{env}: {results.meta['policy']}")
    print(f"results: {results.path}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _steps(text: str) -> tuple[int, int]:
    parts = _int_list(text)
    if len(parts) != 2 or parts[0] < 0 or parts[1] < 0 or sum(parts) == 0:
        raise argparse.ArgumentTypeError(f"expected T_FINE,T_VAL (e.g. 14,2), got {text!r}")
    return parts[0], parts[1]
