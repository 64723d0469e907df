"""``study data-scale``: success against the share of training demos, for DFM, DD and AR decoders.

The paper's claim (CALVIN ABCD->D, 10% of the data): DFM 3.21 average length, DD 2.84, AR 1.71, the
gap closing at 100% (4.44 / 4.32 / 4.18). Here each cell trains the same tiny model with one
objective on ``--fractions`` of the demos (nested subsets, the same validation episodes) for the same
number of optimizer steps, then runs the env's evaluation protocol with the matching decoder.
"""

from __future__ import annotations

import argparse
from typing import Any

from dfm_vla.studies import common
from dfm_vla.studies.cells import Cell, TrainSpec, cell_status
from dfm_vla.studies.report import aggregate, per_seed_points, plot_data_scale, write_study

NAME = "data_scale"
GROUP_BY = ("fraction", "decoder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fractions", type=common.float_list, default=[0.1, 0.25, 1.0], help="shares of the training demos"
    )
    parser.add_argument(
        "--decoders",
        type=common.name_list,
        default=["dfm", "dd", "ar"],
        help="training objectives, each evaluated with its decoder: dfm, dd, ar, dfm_head",
    )
    common.add_training_arguments(parser)
    common.add_protocol_arguments(parser)
    common.add_output_arguments(parser, "runs/study/<env>")


def build_cells(args: argparse.Namespace) -> list[Cell]:
    """Seeds outermost, so a study cut short still has every fraction and decoder for its first seeds."""
    for f in args.fractions:
        if not 0 < f <= 1:
            raise ValueError(f"--fractions: expected numbers in (0, 1], got {f}")
    for d in args.decoders:
        if d not in common.DECODER_OF_OBJECTIVE:
            raise ValueError(
                f"--decoders: expected names from {sorted(common.DECODER_OF_OBJECTIVE)}, got {d!r}"
            )
    cells = []
    for seed in args.seeds:
        for fraction in args.fractions:
            for objective in args.decoders:
                cells.append(
                    training_cell(
                        args, objective, fraction, seed, {"fraction": fraction, "decoder": objective}
                    )
                )
    return cells


def training_cell(args: argparse.Namespace, objective: str, fraction: float, seed: int, labels: dict) -> Cell:
    """A cell that trains ``objective`` on ``fraction`` of the demos with ``seed`` (shared with variants)."""
    train = TrainSpec(
        args.config,
        common.train_overrides(args, objective=objective, data_fraction=fraction, seed=seed),
    )
    return Cell(
        key=f"frac{fraction:g}-{objective}-seed{seed}",
        labels={**labels, "seed": seed},
        eval=common.eval_spec(args, seed, decoder=common.DECODER_OF_OBJECTIVE[objective]),
        train=train,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.check_protocol(args)
    common.check_training_inputs(args)
    out = common.out_dir(args, f"runs/study/{args.env}")
    cells = build_cells(args)
    if args.dry_run:
        return dry_run(cells, out)
    results, left_out = common.cell_results(cells, out, args)
    return report(results, out, args, left_out)


def dry_run(cells: list[Cell], out) -> dict[str, Any]:
    rows = [{"cell": c.key, **c.labels, "status": cell_status(c, out)} for c in cells]
    return {"study": "dry-run", "out": str(out), "rows": rows}


def report(
    results: list[dict[str, Any]], out, args: argparse.Namespace, left_out: list[str] = ()
) -> dict[str, Any]:
    rows = aggregate(results, GROUP_BY)
    seeds = per_seed_points(results, GROUP_BY)
    title = f"data scale, {args.env}: success vs share of demos"
    notes = [
        f"env {args.env}, episodes per task: {args.episodes_per_task or 'full protocol'}, "
        f"tasks: {args.tasks or 'all'}, seeds: {args.seeds}",
        "every cell: the same model config and the same optimizer-step budget; decoder = training objective",
        "a seed sets the initialisation, batch order and which demos form each share (nested within a seed)",
        "success_% pools all episodes of all seeds (Wilson 95% interval); seed_* columns: spread over seeds",
        *left_out,
    ]
    plot = out / f"{NAME}.png"
    plot_data_scale(rows, seeds, plot, title)
    return write_study(out, NAME, title, rows, notes, plot, results, env=args.env)
