"""CALVIN's long-horizon protocol from `rollout`/`eval --env calvin_*`: chains of 5 subtasks.

The protocol itself (chains, 360 steps per subtask, stop at the first failure, agent reset before each
subtask) lives in :mod:`dfm_vla.envs.calvin.protocol`; this module gives it the same results file,
resume and dashboard as every other env. ``results.json`` holds one record per chain and CALVIN's
summary (average length, SR_1..SR_5, per-task counts).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dfm_vla.evaluation.results import ResultsFile, plot_success_by_task, wilson_interval
from dfm_vla.evaluation.runner import RunConfig, setup


class ChainResultsFile(ResultsFile):
    """``ResultsFile`` whose records are chains (``key`` = ``chain<i>``) and whose summary is CALVIN's."""

    def summary(self) -> dict[str, Any]:
        from dfm_vla.envs.calvin.protocol import summarize

        out = summarize([c["length"] for c in self.episodes])
        counts: dict[str, Counter] = {}
        for c in self.episodes:
            for k, task in enumerate(c["tasks"][: c["length"] + 1]):
                counts.setdefault(task, Counter())["success" if k < c["length"] else "fail"] += 1
        out["task_counts"] = {t: dict(v) for t, v in sorted(counts.items())}
        return out


class ChainDashboard:
    """Current chain, subtask and step, the running average length and SR_1..5; plain lines off-terminal."""

    def __init__(self, title: str, total: int, *, live: bool | None = None, console: Console | None = None):
        self.console = console or Console()
        self.live_mode = self.console.is_terminal if live is None else live
        self.title, self.total = title, total
        self.summary: dict[str, Any] = {}
        self.current: dict[str, Any] = {}
        self.done = 0
        self._live: Live | None = None

    def __enter__(self) -> ChainDashboard:
        if self.live_mode:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        else:
            self.console.print(f"{self.title}: {self.total} chains", highlight=False, soft_wrap=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)

    def on_step(self, event: dict[str, Any]) -> None:
        self.current = event
        if self._live is not None and event["step"] % 10 == 0:
            self._live.update(self.render())

    def on_chain(self, record: dict[str, Any], summary: dict[str, Any]) -> None:
        self.done += 1
        self.summary = summary
        if self._live is not None:
            self._live.update(self.render())
        else:
            tasks = " > ".join(
                t + (" ok" if k < record["length"] else " FAIL")
                for k, t in enumerate(record["tasks"][: record["length"] + 1])
            )
            self.console.print(
                f"[{self.done}/{self.total}] chain {record['index']}: length {record['length']} | {tasks} | "
                f"avg len {summary['avg_len']:.2f} over {summary['num_chains']}",
                highlight=False,
                soft_wrap=True,
            )

    def render(self) -> Table:
        table = Table(title=f"{self.title}: {self.done}/{self.total} chains")
        table.add_column("now")
        table.add_column("avg len", justify="right")
        for i in range(1, 6):
            table.add_column(f"SR{i}", justify="right")
        c = self.current
        now = (
            f"chain {c['chain']} subtask {c['subtask'] + 1}/5 {c['task']} step {c['step'] + 1}/360"
            if c
            else "-"
        )
        s = self.summary
        table.add_row(
            now, f"{s.get('avg_len', 0):.2f}", *(f"{100 * s.get(f'sr_{i}', 0):.0f}%" for i in range(1, 6))
        )
        return table


def run_chains(args: Any, cfg: RunConfig, meta: dict[str, Any], num_chains: int, interactive: bool) -> int:
    """Run (or resume) the first ``num_chains`` evaluation chains; results in ``<out>/results.json``."""
    from dfm_vla.envs.calvin.protocol import evaluate

    if cfg.video != "none":
        raise ValueError("--video: not supported for the CALVIN chain protocol yet; use --video none")
    results = ChainResultsFile(cfg.out_dir, meta, resume=args.resume)
    done = {c["index"]: c["length"] for c in results.episodes}
    env, policy, _ = setup(cfg)
    dashboard = ChainDashboard(
        f"{args.env} ({meta['policy']})", num_chains, live=None if interactive else False
    )
    dashboard.done = len([i for i in done if i < num_chains])

    def on_chain(result, summary):
        record = {
            "key": f"chain{result.index}",
            "index": result.index,
            "tasks": list(result.tasks),
            "length": result.length,
            "steps": result.steps,
            "failure_reason": result.failure_reason,
            "finished": time.time(),
        }
        results.add(record)
        dashboard.on_chain(record, summary)

    try:
        with dashboard:
            evaluate(env, policy, num_chains, done=done, on_chain=on_chain, on_step=dashboard.on_step)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(results.episodes)} chains saved in {results.path}; "
            f"continue with --out {cfg.out_dir} --resume"
        )
        return 130
    finally:
        env.close()
    s = results.summary()
    line = f"average length {s['avg_len']:.3f} over {s['num_chains']} chains; " + " ".join(
        f"SR{i} {100 * s[f'sr_{i}']:.1f}%" for i in range(1, 6)
    )
    print(line)
    plot_success_by_task(task_summary(s), results.path.parent / "success_by_task.png", f"{args.env}: {line}")
    print(f"results: {results.path}")
    return 0


def task_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """CALVIN's per-task counts as the per-task summary the LIBERO plots read (``per_task``, ``overall``):
    a task's rate is over the chains that reached it, so late tasks have few attempts."""
    per_task = {}
    for task, counts in summary["task_counts"].items():
        ok, n = counts.get("success", 0), counts.get("success", 0) + counts.get("fail", 0)
        per_task[task] = {
            "instruction": f"{ok}/{n}",
            "success_rate": ok / n,
            "wilson95": list(wilson_interval(ok, n)),
        }
    rates = [v["success_rate"] for v in per_task.values()]
    return {"per_task": per_task, "overall": {"mean_task_success_rate": sum(rates) / max(len(rates), 1)}}
