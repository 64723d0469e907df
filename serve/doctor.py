"""``python cli.py doctor``: check this machine's set-up and say how to fix what is broken.

Checks, each one row of a table with a fix for every failure:

- Python and every package version against the project's requirements (``pyproject.toml`` in a
  checkout, else the installed package metadata);
- MuJoCo rendering back-ends (EGL, OSMesa), by rendering one frame in a fresh process for each;
- LIBERO: the asset tree, and the BDDL file and initial states of every task of the four suites;
- torch: version, CUDA devices, bf16 and scaled-dot-product attention, flash-attn;
- a checkpoint's files and normalisation statistics, when ``--policy DIR`` is given;
- free disk for videos and checkpoints.

A *required* check that fails makes the command exit with status 1. Optional parts (CUDA, flash-attn,
OSMesa when EGL works, LIBERO when it is not installed) give warnings only.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from dfm_vla.serve.doctor_checkpoint import NORM_STATS_NAMES, check_checkpoint
from dfm_vla.serve.doctor_machine import (
    PACKAGE_FIXES,
    REPO_ROOT,
    check_disk,
    check_packages,
    check_python,
    check_requirement,
    check_torch,
    installed_requirements,
    project_requirements,
)
from dfm_vla.serve.doctor_report import FAIL, OK, SKIP, STATUS_STYLE, WARN, Check, print_checks
from dfm_vla.serve.doctor_sim import (
    LIBERO_ASSET_DIRS,
    LIBERO_SUITES,
    RENDER_BACKENDS,
    RENDER_FIXES,
    check_libero,
    check_rendering,
    render_one_frame,
    rendering_rows,
)

# The checks live in doctor_machine, doctor_sim and doctor_checkpoint; they stay importable from here.
__all__ = [
    "FAIL", "LIBERO_ASSET_DIRS", "LIBERO_SUITES", "NORM_STATS_NAMES", "OK", "PACKAGE_FIXES",
    "RENDER_BACKENDS", "RENDER_FIXES", "REPO_ROOT", "SKIP", "STATUS_STYLE", "WARN", "Check",
    "add_arguments", "check_checkpoint", "check_disk", "check_libero", "check_packages", "check_python",
    "check_rendering", "check_requirement", "check_torch", "installed_requirements", "main", "print_checks",
    "project_requirements", "render_one_frame", "rendering_rows", "run_checks",
]  # fmt: skip


def run_checks(
    policy: str | None = None,
    out: str = ".",
    render: bool = True,
    libero: bool = True,
    min_free_gb: float = 2.0,
) -> list[Check]:
    rows = check_packages()
    if render:
        rows += check_rendering()
    if libero:
        rows += check_libero()
    rows += check_torch()
    if policy is not None:
        rows += check_checkpoint(policy)
    rows.append(check_disk(out, min_free_gb=min_free_gb))
    return rows


def add_arguments(parser) -> None:
    parser.add_argument(
        "--policy",
        metavar="DIR",
        help="also check this checkpoint folder (files, statistics, loading, one plan)",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=".", help="where videos and checkpoints go (free disk)"
    )
    parser.add_argument("--min-free-gb", type=float, default=2.0, help="fail under this much free disk")
    parser.add_argument("--no-render", action="store_true", help="skip the MuJoCo rendering checks")
    parser.add_argument("--no-libero", action="store_true", help="skip the LIBERO asset checks")
    parser.add_argument("--json", metavar="PATH", help="also write the checks as JSON")
    parser.add_argument("--verbose", action="store_true", help="one row per package, even when all pass")


def main(args) -> int:
    from dfm_vla.utils.io import atomic_write_json

    start = time.perf_counter()
    rows = run_checks(
        args.policy,
        args.out,
        render=not args.no_render,
        libero=not args.no_libero,
        min_free_gb=args.min_free_gb,
    )
    print_checks(rows, time.perf_counter() - start, args.verbose)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "checks": [asdict(r) | {"failed": r.failed} for r in rows],
                "ok": not any(r.failed for r in rows),
            },
        )
    return 1 if any(r.failed for r in rows) else 0
