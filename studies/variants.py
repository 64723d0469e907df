"""``study variants``: DFM+Embed (the metric path's velocity) against DFM+Head (a learned rate head).

The paper reports that the embedding-guided variant converges faster and performs better. Both
variants train on the same demos (``--fraction``), with the same seeds and optimizer-step budget,
and decode with the same DFM steps. Cells are named like the data-scale study's, so running both
studies in one ``--out`` folder reuses the DFM cells instead of training them again.
"""

from __future__ import annotations

import argparse
from typing import Any

from dfm_vla.studies import common
from dfm_vla.studies.cells import Cell
from dfm_vla.studies.data_scale import dry_run, training_cell
from dfm_vla.studies.report import aggregate, per_seed_points, plot_bars, write_study

NAME = "variants"
VARIANTS = {"dfm": "DFM+Embed", "dfm_head": "DFM+Head"}
GROUP_BY = ("variant",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="share of the training demos (default: 1.0)"
    )
    common.add_training_arguments(parser)
    common.add_protocol_arguments(parser)
    common.add_output_arguments(parser, "runs/study/<env>")


def build_cells(args: argparse.Namespace) -> list[Cell]:
    if not 0 < args.fraction <= 1:
        raise ValueError(f"--fraction: expected a number in (0, 1], got {args.fraction}")
    return [
        training_cell(args, objective, args.fraction, seed, {"variant": name, "fraction": args.fraction})
        for seed in args.seeds
        for objective, name in VARIANTS.items()
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.check_protocol(args)
    common.check_training_inputs(args)
    out = common.out_dir(args, f"runs/study/{args.env}")
    cells = build_cells(args)
    if args.dry_run:
        return dry_run(cells, out)
    results, left_out = common.cell_results(cells, out, args)
    rows = aggregate(results, GROUP_BY)
    title = f"DFM variants, {args.env}: embedding-guided velocity vs rate head"
    notes = [
        f"env {args.env}, share of demos {args.fraction:g}, episodes per task: "
        f"{args.episodes_per_task or 'full protocol'}, tasks: {args.tasks or 'all'}, seeds: {args.seeds}",
        "same data, model size, seeds and optimizer-step budget; both decode with the DFM sampler",
        "val_loss is each objective's own validation loss: the two are not on the same scale",
        *left_out,
    ]
    plot = out / f"{NAME}.png"
    plot_bars(
        rows,
        "variant",
        plot,
        title,
        seeds=per_seed_points(results, GROUP_BY),
        seed_key=GROUP_BY,
        panels=("success",),
    )
    return write_study(out, NAME, title, rows, notes, plot, results, env=args.env)
