"""The training progress bar: rich on a terminal, plain log lines otherwise."""

from __future__ import annotations

import time


class ProgressBar:
    """A rich progress bar (loss, lr, tokens/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self._last_print = 0.0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.interactive = self.console.is_terminal
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"
                ),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=start, loss=float("nan"), lr=0.0, tps=0.0
            )
            self.progress.start()
        self.total = total

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, lr=lr, tps=tokens_per_s)
        elif time.monotonic() - self._last_print > 30 or step == self.total:
            self._last_print = time.monotonic()
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:.0f} tok/s",
                flush=True,
            )

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
