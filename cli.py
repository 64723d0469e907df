"""The one entry point: ``python cli.py COMMAND ...`` (installed as ``dfm-vla``).

Each command lives in the module that owns its work and exposes two functions:
``add_arguments(parser)`` and ``main(args) -> int | None``. Each benchmark target
(``python cli.py bench TARGET``) exposes ``add_arguments(parser)`` and
``run(args) -> dict``; the dict's ``rows`` are printed as a table and the whole
dict is written to ``--json PATH``. Modules are imported only when their command
runs, so ``--help`` stays fast and a simulator command never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). A command is listed here once it works.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("dfm_vla.envs.collect", "Record scripted-expert demos (HDF5), resumable, success per task"),
    "rollout": ("dfm_vla.evaluation.command", "Roll a policy out on an env's protocol, live dashboard"),
    "eval": ("dfm_vla.evaluation.eval_command", "The rollout protocol with plain log lines, for scripts"),
    "compare": ("dfm_vla.evaluation.compare", "Evaluation runs side by side: success per task, table, plot"),
    "doctor": ("dfm_vla.serve.doctor", "Check packages, rendering, LIBERO, torch, disk; print fixes"),
    "serve": ("dfm_vla.serve.command", "Serve a policy over WebSocket to remote simulators and robots"),
    "study": ("dfm_vla.studies.command", "Paper comparisons in miniature: data-scale, decoding, variants"),
    "calvin-play": ("dfm_vla.envs.calvin.play", "Record CALVIN play: chained random tasks, language windows"),
    "train": ("dfm_vla.train.command", "Fine-tune a policy on demos (HDF5, LeRobot): DFM, DFM+Head, DD, AR"),
}

# bench target -> (module, one-line help).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "tokenizers": ("dfm_vla.policy.bench_tokenizers", "Action tokenizers (FAST, bins): size, error, speed"),
    "decode": ("dfm_vla.policy.bench_decode", "Decoding ms per chunk: AR vs DD vs DFM, KV cache on/off"),
    "serve": ("dfm_vla.serve.bench_serve", "Policy server on loopback: requests/s, p50/p99, batching on/off"),
    "env": ("dfm_vla.envs.bench_env", "Env speed: creation, steps/s with/without cameras, on demand"),
    "train": ("dfm_vla.train.bench_train", "Training throughput: samples/s and tokens/s per model config"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfm-vla",
        description="Discrete flow matching policies for robots: roll out, collect, train, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)

    bench = sub.add_parser("bench", help="Speed and quality benchmarks; prints a table, writes --json.")
    targets = bench.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = targets.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_bench_module=module, _bench_title=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            from dfm_vla.utils.report import report

            result = importlib.import_module(args._bench_module).run(args)
            report(args._bench_title, result, args.json)
            return 0
        return int(importlib.import_module(args._module).main(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # Bad input: one clear line. DFM_VLA_DEBUG=1 shows the traceback.
        if os.environ.get("DFM_VLA_DEBUG"):
            raise
        print(f"dfm-vla {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    try:
        import dfm_vla  # noqa: F401
    except ImportError:
        sys.exit("dfm_vla is not installed: run `pip install -e .` in the repository root first.")
    sys.exit(main())
