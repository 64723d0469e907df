"""`python cli.py compare RUN [RUN ...]`: several evaluation runs of one env side by side.

Each RUN is a ``results.json`` written by ``rollout``/``eval`` (or its folder), optionally labelled as
``LABEL=PATH``. By default the comparison keeps only the episodes that every run has (the same tasks
and official initial states), so a run on 20 initial states per task and one on all 50 are compared on
the same 20; ``--all-episodes`` keeps each run's own. Writes ``comparison.md`` (success per task, one
column per run, the overall rate with its 95% Wilson interval), ``comparison.json`` and
``comparison.png`` (grouped bars per task with Wilson intervals) into ``--out``. Runs whose episodes name
their failure phases (LIBERO, ``envs/libero/failure_phases.py``) also get a table of failures per task and
phase, with what the failed episodes disturbed, and ``failure_phases.png`` (stacked bars per task).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dfm_vla.evaluation.results import summarize
from dfm_vla.utils.io import atomic_path, atomic_write_json, atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="[LABEL=]RESULTS", help="results.json files or run folders"
    )
    parser.add_argument("--out", required=True, help="folder for comparison.md, .json and .png")
    parser.add_argument("--title", help="title of the table and the plot")
    parser.add_argument(
        "--all-episodes", action="store_true", help="keep every run's episodes, not only the shared ones"
    )


def load_run(item: str) -> tuple[str, dict[str, Any]]:
    """``LABEL=PATH`` or ``PATH`` -> (label, results dict); the label defaults to the run's folder name."""
    label, _, path_text = item.rpartition("=") if "=" in item else ("", "", item)
    path = Path(path_text)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (expected a file written by `rollout` or `eval`)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("meta", "episodes"):
        if key not in results:
            raise ValueError(f"{path}: missing {key!r}; not a results file of `rollout`/`eval`")
    if not results["episodes"] or "spec" not in results["episodes"][0]:
        raise ValueError(f"{path}: no LIBERO-style episodes to compare (CALVIN chain runs are not supported)")
    return label or path.parent.name, results


def compare(runs: list[tuple[str, dict[str, Any]]], shared_only: bool = True) -> dict[str, Any]:
    """Summaries of each run, restricted to the episodes all runs share when ``shared_only``."""
    envs = {r["meta"]["env"] for _, r in runs}
    if len(envs) > 1:
        raise ValueError(f"runs: the runs are on different envs {sorted(envs)}; compare one env at a time")
    labels = [label for label, _ in runs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"runs: labels must differ, got {labels}; name them with LABEL=PATH")
    shared = set.intersection(*({e["key"] for e in r["episodes"]} for _, r in runs))
    if shared_only and not shared:
        raise ValueError(
            "runs: no episode is shared by every run; pass --all-episodes to compare them anyway"
        )
    out = {"env": envs.pop(), "shared_only": shared_only, "runs": {}}
    for label, results in runs:
        episodes = [e for e in results["episodes"] if not shared_only or e["key"] in shared]
        out["runs"][label] = {"meta": results["meta"], "summary": summarize(episodes)}
    return out


def task_instructions(comparison: dict[str, Any]) -> dict[str, str]:
    """Task id -> instruction over all runs, in task order."""
    found = {
        t: v["instruction"] for r in comparison["runs"].values() for t, v in r["summary"]["per_task"].items()
    }
    return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def markdown(comparison: dict[str, Any], title: str) -> str:
    runs = comparison["runs"]
    labels = list(runs)
    lines = [f"### {title}", "", "| task | instruction | " + " | ".join(labels) + " |"]
    lines.append("|---|---|" + "---|" * len(labels))
    for t, instruction in task_instructions(comparison).items():
        cells = []
        for label in labels:
            row = runs[label]["summary"]["per_task"].get(t)
            cells.append(f"{row['successes']}/{row['episodes']}" if row else "-")
        lines.append(f"| {t} | {instruction} | " + " | ".join(cells) + " |")
    overall = []
    for label in labels:
        o = runs[label]["summary"]["overall"]
        lo, hi = (100 * x for x in o["wilson95"])
        rate = f"**{100 * o['success_rate']:.1f}%**"
        overall.append(f"{rate} ({o['successes']}/{o['episodes']}; {lo:.0f}-{hi:.0f})")
    lines.append("| all | success (Wilson 95%) | " + " | ".join(overall) + " |")
    scope = "episodes shared by every run" if comparison["shared_only"] else "each run's own episodes"
    lines += ["", f"Env `{comparison['env']}`, {scope}. Policies:"]
    for label in labels:
        meta = runs[label]["meta"]
        lines.append(f"- {label}: `{meta['policy']}`, decoder {meta.get('decoder') or 'its own'}")
    for label in labels:
        lines += failure_phase_table(runs[label]["summary"], label)
    return "\n".join(lines) + "\n"


def phase_names(summary: dict[str, Any]) -> list[str]:
    """The failure phases a run's summary counts, most frequent first."""
    totals: dict[str, int] = {}
    for row in summary["per_task"].values():
        for phase, n in (row.get("failure_phases") or {}).items():
            totals[phase] = totals.get(phase, 0) + n
    return sorted(totals, key=lambda k: (-totals[k], k))


def failure_phase_table(summary: dict[str, Any], label: str) -> list[str]:
    """Markdown lines: failures per task and phase, and what the failures disturbed (empty if untold)."""
    phases = phase_names(summary)
    if not phases:
        return []
    header = "| task | failures | " + " | ".join(phases) + " | disturbed |"
    lines = ["", f"Failure phases, {label}:", "", header]
    lines.append("|---|---|" + "---|" * (len(phases) + 1))
    for t, row in sorted(summary["per_task"].items(), key=lambda kv: int(kv[0])):
        counts = row.get("failure_phases") or {}
        disturbed = row.get("failures_disturbed") or {}
        moved = ", ".join(f"{k} {v}" for k, v in sorted(disturbed.items(), key=lambda kv: -kv[1])[:3])
        failures = row["episodes"] - row["successes"]
        cells = [str(counts.get(p, 0) or "") for p in phases]
        lines.append(f"| {t} | {failures} | " + " | ".join(cells) + f" | {moved} |")
    return lines


def plot(comparison: dict[str, Any], path: str | Path, title: str) -> None:
    """Grouped horizontal bars: success per task for each run, with Wilson intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = comparison["runs"]
    labels = list(runs)
    names = task_instructions(comparison)
    tasks = list(names)
    rows = [*tasks, "all"]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) * (len(labels) + 1) + 1.5))
    for j, label in enumerate(labels):
        summary = runs[label]["summary"]
        stats = [summary["per_task"].get(t) for t in tasks] + [summary["overall"]]
        rates = np.array([100 * s["success_rate"] if s else np.nan for s in stats])
        lo = np.array([100 * s["wilson95"][0] if s else np.nan for s in stats])
        hi = np.array([100 * s["wilson95"][1] if s else np.nan for s in stats])
        y = np.arange(len(rows)) + (j - (len(labels) - 1) / 2) * width
        ax.barh(y, rates, height=width, xerr=[rates - lo, hi - rates], capsize=2, label=label)
    ax.set_yticks(range(len(rows)), [f"{t}: {names[t][:48]}" for t in tasks] + ["all tasks"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%), 95% Wilson interval")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_failure_phases(comparison: dict[str, Any], path: str | Path, title: str) -> bool:
    """Stacked bars of failures per task and phase, one panel per run that tells phases; False if none."""
    runs = {k: v for k, v in comparison["runs"].items() if phase_names(v["summary"])}
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = task_instructions(comparison)
    phases = sorted({p for r in runs.values() for p in phase_names(r["summary"])})
    colours = dict(zip(phases, plt.get_cmap("tab10").colors, strict=False))
    size = (4.5 * len(runs) + 2, 0.35 * len(names) + 2)
    fig, axes = plt.subplots(1, len(runs), figsize=size, squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items(), strict=True):
        left = [0] * len(names)
        for phase in phases:
            per_task = run["summary"]["per_task"]
            counts = [(per_task.get(t, {}).get("failure_phases") or {}).get(phase, 0) for t in names]
            ax.barh(range(len(names)), counts, left=left, color=colours[phase], label=phase)
            left = [a + b for a, b in zip(left, counts, strict=True)]
        ax.set_yticks(range(len(names)), [f"{t}: {names[t][:40]}" for t in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("failed episodes")
        ax.set_title(label, fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(phases)), fontsize=7)
    fig.suptitle(f"{title}: where failures stop", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def main(args: argparse.Namespace) -> int:
    runs = [load_run(item) for item in args.runs]
    comparison = compare(runs, shared_only=not args.all_episodes)
    title = args.title or f"{comparison['env']}: " + " vs ".join(comparison["runs"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(comparison, title)
    atomic_write_text(out / "comparison.md", text)
    atomic_write_json(out / "comparison.json", comparison)
    plot(comparison, out / "comparison.png", title)
    phases = plot_failure_phases(comparison, out / "failure_phases.png", title)
    print(text)
    extra = ", failure_phases.png" if phases else ""
    print(f"wrote {out / 'comparison.md'}, comparison.json, comparison.png{extra}")
    return 0
