"""Helpers for tests/test_train_*.py: generated demo files, a small config, and subprocess entry points.

Run as a script (by torchrun or a plain subprocess)::

    python tests/_train_workers.py ddp CONFIG_YAML           # train, then save this rank's weights
    python tests/_train_workers.py kill CONFIG_YAML STEP     # train, SIGKILL itself during step STEP + 1
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
from _models import SMALL

TASKS = ("push the block left", "lift the cup")


def write_demos(path: str | Path, n_per_task: int = 6, length: int = 24, seed: int = 0) -> Path:
    """A learnable HDF5 demo file in our layout: actions = a task offset + a function of the state."""
    import h5py

    rng = np.random.default_rng(seed)
    path = Path(path)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        i = 0
        for task, language in enumerate(TASKS):
            for e in range(n_per_task):
                demo = data.create_group(f"demo_{i}")
                i += 1
                demo.attrs.update(
                    language=language, task_index=task, num_samples=length, success=True, seed=e
                )
                start = rng.uniform(-1, 1, 4)
                t = np.arange(length)[:, None]
                state = (start[None] * np.cos(0.15 * t + task)).astype(np.float32)
                base = np.array([0.5, -0.5, 0.3]) * (1.0 if task == 0 else -1.0)
                gripper = np.where(t < length // 2, -1.0, 1.0)
                arm = base + 0.4 * np.tanh(state[:, :3])
                demo["actions"] = np.concatenate([arm, gripper], 1).astype(np.float32)
                demo["obs/state"] = state
    return path


def small_config(data: str | Path, out_dir: str | Path, **overrides):
    """A seconds-sized TrainConfig for tests: a 2-layer, width-64 model on 4-step chunks of 16 bins."""
    from dfm_vla.train.config import load_config

    values = {
        "model": "tiny",
        "data": [str(data)],
        "out_dir": str(out_dir),
        "horizon": 4,
        "num_bins": 16,
        "gripper_dims": [3],
        "batch_size": 16,
        "max_steps": 40,
        "warmup_steps": 5,
        "eval_every": 1000,
        "save_every": 1000,
        "eval_batches": 2,
        "val_fraction": 0.2,
        "torch_threads": 1,
        "tensorboard": False,
        "model_overrides": {
            **SMALL,
            "steps_fine": 6,
            "steps_val": 2,
        },
    }
    values.update(overrides)
    return load_config(None, values)


def model_state(out_dir: str | Path) -> dict:
    """The weights of the policy saved in ``out_dir`` (safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(Path(out_dir) / "model.safetensors"))


def _ddp(config_path: str) -> None:
    import torch

    from dfm_vla.train.config import load_config
    from dfm_vla.train.loop import Trainer

    cfg = load_config(config_path)
    trainer = Trainer(cfg, progress=False)
    rank = trainer.info.rank
    try:
        trainer.run()
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        torch.save(state, Path(cfg.out_dir) / f"rank{rank}_weights.pt")
    finally:
        trainer.close()


def _kill(config_path: str, kill_step: int) -> None:
    from dfm_vla.train.config import load_config
    from dfm_vla.train.loop import Trainer

    cfg = load_config(config_path)
    trainer = Trainer(cfg, progress=False)
    original = trainer.train_step

    def train_step():
        if trainer.step == kill_step:  # mid-run, after the checkpoint of step kill_step
            os.kill(os.getpid(), signal.SIGKILL)
        return original()

    trainer.train_step = train_step
    trainer.run()


if __name__ == "__main__":
    if sys.argv[1] == "ddp":
        _ddp(sys.argv[2])
    elif sys.argv[1] == "kill":
        _kill(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
