"""``python cli.py train``: fine-tune a policy on demos into a folder DFMPolicy.from_pretrained loads.

Examples::

    python cli.py train --config configs/tiny_libero_goal.yaml --data data/libero_goal_demos \\
        --out runs/tiny_libero_goal_dfm
    python cli.py train --config configs/tiny_libero_goal.yaml --resume --out runs/tiny_libero_goal_dfm
    torchrun --nproc_per_node 8 cli.py train --config configs/univla_8b_libero.yaml --data ...

Any field of :class:`dfm_vla.train.config.TrainConfig` can be overridden with ``--set key=value``.
"""

from __future__ import annotations

import argparse

from dfm_vla.train.config import add_overrides_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="a TrainConfig YAML file (configs/*.yaml)")
    parser.add_argument("--data", nargs="+", metavar="PATH", help="demo files or folders (HDF5, LeRobot)")
    parser.add_argument("--out", metavar="DIR", help="output folder (checkpoints, policy, curves)")
    parser.add_argument("--objective", choices=["dfm", "dfm_head", "dd", "ar"], help="training objective")
    parser.add_argument("--model", help="model preset (tiny, small, base, univla-8b)")
    parser.add_argument("--data-fraction", type=float, help="share of training episodes kept (e.g. 0.1)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps")
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget; saves and stops when spent")
    parser.add_argument("--seed", type=int, help="seed for the split, sampling and initialisation")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_overrides_argument(parser)


def config_from_args(args: argparse.Namespace):
    """The resolved TrainConfig: file, then the named flags, then ``--set`` overrides."""
    from dfm_vla.train.config import load_config, parse_overrides

    named = {
        "data": args.data,
        "out_dir": args.out,
        "objective": args.objective,
        "model": args.model,
        "data_fraction": args.data_fraction,
        "max_steps": args.max_steps,
        "max_minutes": args.max_minutes,
        "seed": args.seed,
    }
    overrides = {k: v for k, v in named.items() if v is not None}
    overrides.update(parse_overrides(args.overrides))
    return load_config(args.config, overrides)


def main(args: argparse.Namespace) -> int:
    from dfm_vla.train.loop import train

    config = config_from_args(args)
    if not config.data:
        raise SystemExit("train: no demos given; pass --data PATH (or set `data:` in the config file)")
    result = train(config, resume=args.resume)
    if result.is_main:
        print(
            f"done: {result.steps} steps in {result.wall_minutes:.1f} min; "
            f"val loss {result.val_loss:.4f}, val token accuracy {result.val_token_accuracy:.3f}; "
            f"policy in {result.out_dir}"
        )
    return 0
