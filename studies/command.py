"""``python cli.py study data-scale|decoding|variants``: the paper's comparisons in miniature.

Examples::

    python cli.py study data-scale --env libero_goal --fractions 0.1,0.25,1.0 --decoders dfm,dd,ar --seeds 3
    python cli.py study decoding --policy runs/study/libero_goal/train/dfm-frac1-seed0-1a2b3c4d
    python cli.py study variants --seeds 3
    python cli.py study data-scale ... --dry-run     # which cells exist, which are finished

Each study prints its table, writes ``<study>.json``, ``<study>.md`` and PNG plots in ``--out``, and
``--json PATH`` if given. Cells are resumable: run the same command again to continue; finished
cells are reused, never recomputed.
"""

from __future__ import annotations

import argparse
import importlib

# sub-study -> (module, one-line help)
STUDIES: dict[str, tuple[str, str]] = {
    "data-scale": (
        "dfm_vla.studies.data_scale",
        "Success vs share of demos for DFM, DD and AR (seeds, Wilson)",
    ),
    "decoding": (
        "dfm_vla.studies.decoding",
        "One DFM policy: T_fine/T_val split, total steps, schedule c x alpha",
    ),
    "variants": ("dfm_vla.studies.variants", "DFM+Embed against DFM+Head on the same data"),
    "offline-decoding": (
        "dfm_vla.studies.offline_decoding",
        "One policy, several decoders, on held-out demo chunks: token accuracy, action error, spread",
    ),
    "tokenizer-ceiling": (
        "dfm_vla.studies.tokenizer_ceiling",
        "Experts closed loop through each action tokenizer: the most a policy with it can reach",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study", metavar="STUDY", required=True)
    for name, (module, help_text) in STUDIES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_study_module=module, _study_title=help_text)


def main(args: argparse.Namespace) -> int:
    from dfm_vla.utils.report import print_table

    result = importlib.import_module(args._study_module).run(args)
    title = f"study {args.study}" + (" (dry run)" if result.get("study") == "dry-run" else "")
    print_table(title, result["rows"])
    if args.json:
        from dfm_vla.utils.io import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if result.get("markdown"):
        print(f"table: {result['markdown']}; plots: {', '.join(result['plots'])}")
    return 0
