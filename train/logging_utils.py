"""Training bookkeeping on rank 0: metric history, TensorBoard scalars and the PNG of the curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class MetricLog:
    """Scalars by name as (step, value) lists; mirrored to TensorBoard when it is installed and wanted."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, history: dict | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.history: dict[str, list[tuple[int, float]]] = {
            k: [tuple(p) for p in v] for k, v in (history or {}).items()
        }
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                self.writer = None
            else:
                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            value = float(value)
            self.history.setdefault(name, []).append((int(step), value))
            if self.writer is not None and math.isfinite(value):
                self.writer.add_scalar(name, value, int(step))

    def last(self, name: str, default: float = float("nan")) -> float:
        series = self.history.get(name)
        return series[-1][1] if series else default

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    def state(self) -> dict[str, Any]:
        return {k: [list(p) for p in v] for k, v in self.history.items()}


def plot_curves(history: dict[str, list], path: str | Path, title: str = "") -> Path:
    """PNG with the training and validation loss (left) and validation token accuracy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dfm_vla.utils.io import atomic_path

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("train/loss", "-"), ("val/loss", "o-")):
        series = history.get(name) or []
        if series:
            steps, values = zip(*series, strict=True)
            ax_loss.plot(steps, values, style, label=name, markersize=3, alpha=0.9 if "val" in name else 0.6)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for name in sorted(k for k in history if k.startswith("val/") and "acc" in k):
        steps, values = zip(*history[name], strict=True)
        ax_acc.plot(steps, values, "o-", label=name, markersize=3)
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("token accuracy")
    ax_acc.set_ylim(0, 1)
    if ax_acc.get_legend_handles_labels()[0]:  # no validation split: nothing to label
        ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
