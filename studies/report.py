"""Study results as tables (rows of flat dicts, JSON, Markdown) and PNG plots.

Cells are grouped by some of their labels (data scale: fraction and decoder); each group pools its
seeds. Success is reported two ways, because they answer different questions:

- pooled: all episodes of all seeds together, with a 95% Wilson interval (how sure we are about
  this policy recipe's success rate given the episodes we ran);
- per seed: mean, standard deviation, min and max of each seed's success rate (how much the result
  moves when the same recipe is trained again with another seed).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dfm_vla.evaluation.results import wilson_interval
from dfm_vla.utils.io import atomic_path, atomic_write_json, atomic_write_text

COLORS = {"dfm": "#4c72b0", "dd": "#dd8452", "ar": "#55a868", "dfm_head": "#c44e52", "dfm_embed": "#4c72b0"}


def aggregate(cells: Sequence[dict[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per distinct value of ``group_by`` labels (first-seen order), pooling seeds.

    Each row: the group labels, ``seeds`` (how many cells), ``episodes``, ``successes``,
    ``success_%`` (pooled), ``wilson_lo_%`` / ``wilson_hi_%``, ``seed_mean_%``, ``seed_sd_%`` (0 with
    one seed), ``seed_min_%``, ``seed_max_%``, ``ms_per_chunk`` (median over cells; None if not
    reported), ``train_steps`` and ``val_loss`` (mean over cells that trained).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for cell in cells:
        missing = [k for k in group_by if k not in cell["labels"]]
        if missing:
            raise ValueError(f"cell {cell['key']}: labels lack {missing} (have {sorted(cell['labels'])})")
        groups.setdefault(tuple(cell["labels"][k] for k in group_by), []).append(cell)
    rows = []
    for values, members in groups.items():
        wins = sum(c["eval"]["successes"] for c in members)
        n = sum(c["eval"]["episodes"] for c in members)
        rates = [100 * c["eval"]["success_rate"] for c in members]
        lo, hi = wilson_interval(wins, n)
        ms = [c["eval"]["ms_per_chunk"] for c in members if c["eval"].get("ms_per_chunk") is not None]
        trained = [c["train"] for c in members if not c["train"].get("reused")]
        row = dict(zip(group_by, values, strict=True))
        row.update(
            {
                "seeds": len(members),
                "episodes": n,
                "successes": wins,
                "success_%": round(100 * wins / n, 2) if n else 0.0,
                "wilson_lo_%": round(100 * lo, 2),
                "wilson_hi_%": round(100 * hi, 2),
                "seed_mean_%": round(statistics.fmean(rates), 2),
                "seed_sd_%": round(statistics.stdev(rates), 2) if len(rates) > 1 else 0.0,
                "seed_min_%": round(min(rates), 2),
                "seed_max_%": round(max(rates), 2),
                "ms_per_chunk": round(statistics.median(ms), 2) if ms else None,
                "train_steps": round(statistics.fmean(t["steps"] for t in trained)) if trained else None,
                "val_loss": round(statistics.fmean(t["val_loss"] for t in trained), 4) if trained else None,
            }
        )
        rows.append(row)
    return rows


def per_seed_points(cells: Sequence[dict[str, Any]], group_by: Sequence[str]) -> dict[tuple, list[float]]:
    """{group values: [success % of each cell]} for plotting the spread over seeds."""
    points: dict[tuple, list[float]] = {}
    for cell in cells:
        key = tuple(cell["labels"][k] for k in group_by)
        points.setdefault(key, []).append(100 * cell["eval"]["success_rate"])
    return points


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub Markdown table of ``rows`` (columns in first-seen order; None shows as a dash)."""
    if not rows:
        return "(no rows)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell_text(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_markdown(
    path: str | Path, title: str, rows: Sequence[dict[str, Any]], notes: Sequence[str] = ()
) -> None:
    """``# title``, the notes as a list, then the table; written atomically."""
    text = f"# {title}\n\n"
    if notes:
        text += "".join(f"- {n}\n" for n in notes) + "\n"
    atomic_write_text(path, text + markdown_table(rows))


def write_study(
    out: Path,
    name: str,
    title: str,
    rows: list[dict[str, Any]],
    notes: list[str],
    plot: Path,
    cells: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """Write a study's Markdown table and its JSON result into ``out``; returns the result dict.

    fields: extra top-level entries (``env``, ``policy``, ...) placed before the rows.
    """
    write_markdown(out / f"{name}.md", title, rows, notes)
    result = {
        "study": name,
        **fields,
        "out": str(out),
        "rows": rows,
        "notes": notes,
        "plots": [str(plot)],
        "markdown": str(out / f"{name}.md"),
        "cells": cells,
    }
    atomic_write_json(out / f"{name}.json", result)
    return result


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_data_scale(
    rows: Sequence[dict[str, Any]], seeds: dict[tuple, list[float]], path: str | Path, title: str
):
    """Success (%) against data fraction, one line per decoder: pooled rate with its Wilson 95%
    interval as error bars, and each seed's rate as a small dot (the spread over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    fractions = sorted({float(r["fraction"]) for r in rows})
    for i, dec in enumerate(decoders):
        mine = sorted((r for r in rows if r["decoder"] == dec), key=lambda r: float(r["fraction"]))
        # Nudge decoders sideways (multiplicatively: the x axis is logarithmic) so bars do not overlap.
        shift = 1 + 0.03 * (i - (len(decoders) - 1) / 2)
        xs = [float(r["fraction"]) * shift for r in mine]
        ys = [r["success_%"] for r in mine]
        err = [
            [y - r["wilson_lo_%"] for y, r in zip(ys, mine, strict=True)],
            [r["wilson_hi_%"] - y for y, r in zip(ys, mine, strict=True)],
        ]
        color = COLORS.get(dec)
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=f"{dec} (pooled, Wilson 95%)")
        for x, r in zip(xs, mine, strict=True):
            pts = seeds.get((r["fraction"], dec), [])
            ax.scatter([x * 1.025] * len(pts), pts, s=12, alpha=0.5, color=color, zorder=3)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set_ylim(-2, 102)
    ax.set_xlabel("fraction of training demos")
    ax.set_ylabel("episode success (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="dots: single seeds", title_fontsize=8)
    _save(fig, path)


def plot_bars(
    rows: Sequence[dict[str, Any]],
    label_key: str,
    path: str | Path,
    title: str,
    seeds: dict[tuple, list[float]] | None = None,
    seed_key: Sequence[str] = (),
    panels: Sequence[str] = ("success", "ms"),
    group_key: str | None = None,
):
    """Bars of success (%) with Wilson intervals and, if asked, of ms per chunk.

    ``seeds``: {tuple of the row's ``seed_key`` fields: [success % per seed]}, drawn as dots.

    ``group_key``: draw one subplot column per distinct value of this row field (the decoding study:
    one column per ablation), each with its own x labels.
    """
    plt = _pyplot()
    groups = list(dict.fromkeys(r[group_key] for r in rows)) if group_key else [None]
    widths = [max(2.5, 0.55 * sum(1 for r in rows if group_key is None or r[group_key] == g)) for g in groups]
    fig, axes = plt.subplots(
        len(panels),
        len(groups),
        figsize=(sum(widths) + 1.2, 2.8 * len(panels)),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for col, g in enumerate(groups):
        mine = [r for r in rows if group_key is None or r[group_key] == g]
        labels = [str(r[label_key]) for r in mine]
        xs = list(range(len(mine)))
        for row_i, panel in enumerate(panels):
            ax = axes[row_i][col]
            if panel == "success":
                ys = [r["success_%"] for r in mine]
                err = [
                    [y - r["wilson_lo_%"] for y, r in zip(ys, mine, strict=True)],
                    [r["wilson_hi_%"] - y for y, r in zip(ys, mine, strict=True)],
                ]
                ax.bar(xs, ys, yerr=err, capsize=3, color="#4c72b0")
                if seeds:
                    for x, r in zip(xs, mine, strict=True):
                        pts = seeds.get(tuple(r[k] for k in seed_key), [])
                        ax.scatter([x + 0.15] * len(pts), pts, s=12, color="black", alpha=0.6, zorder=3)
                ax.set_ylim(0, 102)
                ax.set_ylabel("success (%), Wilson 95%" if col == 0 else "")
            else:
                ys = [r["ms_per_chunk"] if r["ms_per_chunk"] is not None else 0.0 for r in mine]
                ax.bar(xs, ys, color="#8172b3")
                if all(r["ms_per_chunk"] is None for r in mine):
                    ax.text(
                        0.5,
                        0.5,
                        "not reported by the policy",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        fontsize=8,
                        color="gray",
                    )
                    ax.set_yticks([])
                ax.set_ylabel("ms per chunk (median)" if col == 0 else "")
            ax.set_xticks(
                xs,
                labels,
                rotation=45 if max(map(len, labels), default=0) > 5 else 0,
                ha="right" if max(map(len, labels), default=0) > 5 else "center",
                fontsize=8,
            )
            ax.grid(axis="y", alpha=0.3)
            if row_i == 0 and g is not None:
                ax.set_title(str(g), fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
