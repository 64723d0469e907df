"""Evaluation results: one JSON file written after every episode, so an interrupted run resumes.

Layout of ``results.json``::

    {"meta": {env, policy, decoder, steps, seed, episodes_per_task, tasks, code_version, ...},
     "episodes": [{key, spec, instruction, success, length, failure_reason, seconds, video, ...}],
     "summary": {"overall": {...}, "per_task": {"0": {instruction, successes, episodes, success_rate,
                 mean_length, failure_reasons, failure_phases}}}}
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from dfm_vla.utils.io import atomic_path, atomic_write_json

# Meta fields that must match for --resume to continue a run (anything else may differ).
RESUME_FIELDS = (
    "env",
    "policy",
    "decoder",
    "steps",
    "schedule",
    "warm_start",
    "execute_horizon",
    "seed",
    "max_steps",
)


def run_meta(env: str, policy: Any, *, seed: int, episodes_per_task: int | None, tasks: Any, **extra: Any):
    """The ``meta`` block of a results file for ``policy`` (a ``PolicySpec``) on ``env``."""
    return {
        "env": env,
        "policy": policy.describe(),
        "decoder": policy.decoder,
        "steps": list(policy.steps) if policy.steps else None,
        "schedule": list(policy.schedule) if policy.schedule else None,
        "warm_start": getattr(policy, "warm_start", None),
        "execute_horizon": getattr(policy, "execute_horizon", None),
        "latency_steps": getattr(policy, "latency_steps", 0),
        "execution": getattr(policy, "execution", "sync"),
        "seed": seed,
        "episodes_per_task": episodes_per_task or "full",
        "tasks": tasks,
        **extra,
        "code_version": code_version(),
    }


def code_version() -> str:
    """The package version plus ``git describe`` of the checkout it runs from, when there is one."""
    import subprocess

    import dfm_vla

    root = Path(dfm_vla.__file__).parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if rev.returncode == 0:
            return f"{dfm_vla.__version__}+{rev.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return dfm_vla.__version__


class ResultsFile:
    """Per-episode results of one evaluation run, kept in ``<out>/results.json``."""

    def __init__(self, out_dir: str | Path, meta: dict[str, Any], *, resume: bool = False):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.json"
        self.meta = dict(meta)
        self.episodes: list[dict[str, Any]] = []
        if self.path.exists():
            if not resume:
                raise FileExistsError(
                    f"{self.path} exists: pass --resume to continue that run, or choose another --out"
                )
            try:
                old = json.loads(self.path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path} is not valid JSON ({e}); move it away to start afresh") from e
            for name in RESUME_FIELDS:
                if old.get("meta", {}).get(name) != self.meta.get(name):
                    raise ValueError(
                        f"--resume: results.json has meta[{name!r}]={old['meta'].get(name)!r}, "
                        f"this run has {self.meta.get(name)!r}; use a new --out for a different run"
                    )
            self.episodes = list(old.get("episodes", []))
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def done_keys(self) -> set[str]:
        return {e["key"] for e in self.episodes}

    def add(self, episode: dict[str, Any]) -> None:
        """Record one finished episode and rewrite the file atomically."""
        self.episodes = [e for e in self.episodes if e["key"] != episode["key"]] + [episode]
        self.save()

    def save(self) -> None:
        atomic_write_json(
            self.path, {"meta": self.meta, "episodes": self.episodes, "summary": self.summary()}
        )

    def summary(self) -> dict[str, Any]:
        return summarize(self.episodes)


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall success with Wilson 95% intervals, lengths and failure reasons."""
    per_task: dict[str, dict[str, Any]] = {}
    for task in sorted({e["spec"]["task_id"] for e in episodes}):
        eps = [e for e in episodes if e["spec"]["task_id"] == task]
        wins = sum(e["success"] for e in eps)
        per_task[str(task)] = {
            "instruction": eps[0]["instruction"],
            "successes": wins,
            "episodes": len(eps),
            "success_rate": wins / len(eps),
            "wilson95": wilson_interval(wins, len(eps)),
            "mean_length": sum(e["length"] for e in eps) / len(eps),
            "failure_reasons": dict(Counter(e["failure_reason"] for e in eps if not e["success"])),
            # envs that tell how far a failure got (LIBERO: envs/libero/failure_phases.py)
            "failure_phases": dict(Counter(e["failure_phase"] for e in eps if e.get("failure_phase"))),
            # what failed episodes moved that their goal does not mention (LIBERO: another task's object?)
            "failures_disturbed": dict(
                Counter(n for e in eps if not e["success"] for n in (e.get("disturbed") or []))
            ),
        }
    wins = sum(e["success"] for e in episodes)
    overall = {
        "successes": wins,
        "episodes": len(episodes),
        "success_rate": wins / len(episodes) if episodes else 0.0,
        "wilson95": wilson_interval(wins, len(episodes)),
        # The mean over tasks is what LIBERO papers report; equal to the pooled rate when counts match.
        "mean_task_success_rate": (
            sum(t["success_rate"] for t in per_task.values()) / len(per_task) if per_task else 0.0
        ),
        **{f"mean_{k}": _mean_of(episodes, k) for k in ("seam_jump", "step_jump", "model_calls_per_plan")},
    }
    return {"overall": overall, "per_task": per_task}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def plot_success_by_task(summary: dict[str, Any], path: str | Path, title: str) -> None:
    """PNG bar chart of success per task with Wilson intervals and the overall rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["per_task"]
    labels = [f"{k}: {_short(v['instruction'])}" for k, v in tasks.items()]
    rates = [100 * v["success_rate"] for v in tasks.values()]
    # max(0, ...): at 0/n or n/n the interval's end and the rate may differ by a rounding error
    lo = [max(0.0, r - 100 * v["wilson95"][0]) for r, v in zip(rates, tasks.values(), strict=True)]
    hi = [max(0.0, 100 * v["wilson95"][1] - r) for r, v in zip(rates, tasks.values(), strict=True)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
    ax.barh(range(len(labels)), rates, xerr=[lo, hi], color="#4c72b0", capsize=3)
    overall = 100 * summary["overall"]["mean_task_success_rate"]
    ax.axvline(overall, color="#c44e52", linestyle="--", label=f"mean {overall:.1f}%")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%), 95% Wilson interval")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _short(text: str, n: int = 42) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _mean_of(episodes: list[dict[str, Any]], key: str) -> float | None:
    """Mean of an episode field over the episodes that report it (older results files lack it)."""
    values = [e[key] for e in episodes if e.get(key) is not None]
    return sum(values) / len(values) if values else None
