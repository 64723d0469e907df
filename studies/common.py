"""Arguments and helpers the three studies share (protocol, training budget, seeds, output)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dfm_vla.studies.cells import Cell, EvalSpec, RunOptions, load_finished, run_cells
from dfm_vla.train.config import add_overrides_argument

DEFAULT_CONFIG = "configs/tiny_libero_goal.yaml"
DEFAULT_DATA = "data/libero_goal_demos"
# Training objective -> the decoder that evaluates it.
DECODER_OF_OBJECTIVE = {"dfm": "dfm", "dfm_head": "dfm", "dd": "dd", "ar": "ar"}


def float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return values


def seed_list(text: str) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``0,5`` -> seeds 0 and 5."""
    if "," in text:
        return int_list(text)
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a list (0,1,2), got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 seed, got {n}")
    return list(range(n))


def add_output_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument(
        "--out", metavar="DIR", help=f"study folder: cells, tables, plots (default: {default_out})"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the study's results to this JSON file")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the cells and which are finished; train and evaluate nothing",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and plot from the cells finished so far; train and evaluate nothing "
        "(a study cut short: the cells left out are named in the notes)",
    )


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="libero_goal", help="env name (default: libero_goal)")
    parser.add_argument(
        "--episodes-per-task",
        type=int,
        help="episodes per task (default: the env's full protocol, LIBERO 50)",
    )
    parser.add_argument("--tasks", type=int_list, help="comma-separated task ids (default: all)")
    parser.add_argument(
        "--max-episode-steps",
        type=int,
        help="cap each episode at N env steps (default: the benchmark's limit; lower only for smoke tests)",
    )
    parser.add_argument("--num-envs", type=int, default=1, help="parallel env processes per evaluation")
    parser.add_argument("--threads", type=int, help="torch threads for training and evaluation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of episode bars")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="YAML",
        help=f"TrainConfig file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--data", nargs="+", default=[DEFAULT_DATA], metavar="PATH", help=f"demos (default: {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--max-steps", type=int, help="optimizer steps for every cell (default: the config's max_steps)"
    )
    add_overrides_argument(parser)
    parser.add_argument(
        "--seeds", type=seed_list, default=[0], help="a count (3: seeds 0,1,2) or a list (0,4)"
    )


def check_protocol(args: argparse.Namespace) -> None:
    for name in ("episodes_per_task", "max_episode_steps", "num_envs", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")


def eval_spec(args: argparse.Namespace, seed: int, **changes: Any) -> EvalSpec:
    env_kwargs = {"max_episode_steps": args.max_episode_steps} if args.max_episode_steps else {}
    return EvalSpec(
        env=args.env,
        episodes_per_task=args.episodes_per_task,
        tasks=args.tasks,
        seed=seed,
        env_kwargs=env_kwargs,
        device=args.device,
        **changes,
    )


def train_overrides(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """TrainConfig overrides for one cell: --set, then --data/--max-steps, then the cell's own fields."""
    from dfm_vla.train.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    overrides["data"] = [str(Path(p).resolve()) for p in args.data]
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    overrides.update(fields)
    return overrides


def check_training_inputs(args: argparse.Namespace) -> None:
    if args.config and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    for p in args.data:
        if not Path(p).exists():
            raise FileNotFoundError(
                f"--data {p}: no such file or folder (collect demos first: python cli.py collect --env ...)"
            )
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps: expected a positive integer, got {args.max_steps}")


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(num_envs=args.num_envs, torch_threads=args.threads, progress=not args.no_progress)


def out_dir(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out or default)


def cell_results(cells: list[Cell], out: Path, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Run ``cells`` (finished ones are reused) and return their results; with ``--report-only`` read the
    finished ones only. Also returns notes naming the cells left out (none when every cell ran)."""
    if not args.report_only:
        return run_cells(cells, out, run_options(args)), []
    done = [(cell, load_finished(cell, out)) for cell in cells]
    results = [result for _, result in done if result is not None]
    missing = [cell.key for cell, result in done if result is None]
    if not results:
        raise ValueError(f"--report-only: no finished cells in {out} (run the study first, or check --out)")
    return results, [f"not run (the study was cut short): {', '.join(missing)}"] if missing else []
