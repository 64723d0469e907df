"""Live terminal dashboard for rollouts (rich), falling back to plain log lines without a terminal.

Shows per-task success so far, the episodes running and their step, env steps/s, policy ms per
chunk, the mean action jump at chunk seams against inside chunks (the title names a simulated inference
delay, ``--latency-steps``), and for DFM the tokens revised at each refinement step of the last plan as
a bar row (the method's signature: many changes early, few late, none in the greedy validation steps).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dfm_vla.evaluation.episode import EpisodeResult, StepEvent

BARS = " ▁▂▃▄▅▆▇█"


def revision_bars(changed: list[int] | None) -> str:
    """Bar row of tokens changed per refinement step, scaled to the largest step: ``█▆▄▂▁▁  ``."""
    if not changed:
        return ""
    top = max(max(changed), 1)
    return "".join(BARS[min(len(BARS) - 1, round(c / top * (len(BARS) - 1)))] for c in changed)


class Dashboard:
    """Collects progress events; renders a rich Live view on a terminal, plain lines otherwise."""

    def __init__(self, title: str, total_episodes: int, *, live: bool | None = None, console=None):
        self.console = console or Console()
        self.live_mode = self.console.is_terminal if live is None else live
        self.title = title
        self.total = total_episodes
        self.results: list[EpisodeResult] = []
        self.prior: dict[int, list[bool]] = {}  # results loaded from a resumed run, per task
        self.running: dict[str, StepEvent] = {}
        self.last_plan_ms: float | None = None
        self.last_changed: list[int] | None = None
        self.steps_per_s: float | None = None
        self.started = time.perf_counter()
        self._live: Live | None = None

    def __enter__(self) -> Dashboard:
        if self.live_mode:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def set_total(self, total: int) -> None:
        """Episodes in the run (finished ones from a resumed run included), once the protocol is known."""
        self.total = total
        if not self.live_mode:
            self.console.print(f"{self.title}: {total} episodes", highlight=False, soft_wrap=True)
        self._refresh()

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)

    def add_prior(self, task_id: int, success: bool) -> None:
        self.prior.setdefault(task_id, []).append(success)

    def on_step(self, event: StepEvent) -> None:
        self.running[event.spec.key] = event
        self.steps_per_s = event.steps_per_s
        if event.policy_ms_per_plan is not None:
            self.last_plan_ms = event.policy_ms_per_plan
        if event.changed_per_step:
            self.last_changed = event.changed_per_step
        self._refresh()

    def on_episode(self, result: EpisodeResult) -> None:
        self.running.pop(result.spec.key, None)
        self.results.append(result)
        if not self.live_mode:
            done = self._done()
            why = ", ".join(r for r in (result.failure_reason, result.failure_phase) if r)
            outcome = "success" if result.success else f"failure ({why})"
            self.console.print(
                f"[{done}/{self.total}] task {result.spec.task_id} init {result.spec.init_state_id}: "
                f"{outcome} in {result.length} steps, {result.seconds:.1f} s | {result.instruction}",
                highlight=False,
                soft_wrap=True,
            )
        self._refresh()

    def _done(self) -> int:
        return len(self.results) + sum(len(v) for v in self.prior.values())

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def per_task(self) -> dict[int, tuple[int, int, str]]:
        out: dict[int, list] = {t: [sum(v), len(v), ""] for t, v in self.prior.items()}
        for r in self.results:
            row = out.setdefault(r.spec.task_id, [0, 0, ""])
            row[0] += int(r.success)
            row[1] += 1
            row[2] = r.instruction
        return {t: tuple(v) for t, v in sorted(out.items())}

    def render(self) -> Group:
        header = Text(f"{self.title}: {self._done()}/{self.total} episodes", style="bold")
        tasks = Table(expand=False)
        tasks.add_column("task", justify="right")
        tasks.add_column("instruction")
        tasks.add_column("success", justify="right")
        tasks.add_column("rate", justify="right")
        wins = n = 0
        for task, (s, k, instruction) in self.per_task().items():
            tasks.add_row(str(task), instruction, f"{s}/{k}", f"{100 * s / k:.0f}%")
            wins, n = wins + s, n + k
        if n:
            tasks.add_row("", "[b]all[/b]", f"{wins}/{n}", f"{100 * wins / n:.1f}%")
        running = Table(expand=False)
        running.add_column("running episode")
        running.add_column("step", justify="right")
        for key, ev in self.running.items():
            running.add_row(key, f"{ev.step}/{ev.max_steps}")
        elapsed = time.perf_counter() - self.started
        stats = Table.grid(padding=(0, 2))
        stats.add_row(
            f"elapsed {elapsed:.0f} s",
            f"env steps/s {self.steps_per_s:.1f}" if self.steps_per_s else "env steps/s -",
            f"policy ms/chunk {self.last_plan_ms:.1f}" if self.last_plan_ms else "policy ms/chunk -",
        )
        seams = [r.seam_jump for r in self.results if r.seam_jump is not None]
        if seams:  # chunk seams: where a new chunk's first action follows the action before it
            inside = [r.step_jump for r in self.results if r.step_jump is not None]
            stats.add_row(
                f"seam jump {sum(seams) / len(seams):.3f}",
                f"inside chunks {sum(inside) / len(inside):.3f}" if inside else "inside chunks -",
                "(mean |a_t - a_t-1|, finished episodes)",
            )
        if self.last_changed:
            stats.add_row(
                "tokens revised per refinement step (last plan)",
                f"[cyan]{revision_bars(self.last_changed)}[/cyan]",
                " ".join(str(c) for c in self.last_changed),
            )
        return Group(header, tasks, running, stats)
