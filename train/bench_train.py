"""``python cli.py bench train``: training throughput (samples/s, tokens/s) of the real training step.

For each model config it generates a LIBERO-shaped demo file (66 state numbers, 7-d actions, a language
instruction per task), builds the :class:`~dfm_vla.train.loop.Trainer` exactly as ``train`` does, runs
``--warmup`` optimizer steps, then times ``--steps`` more. Tokens per sample = the padded prefix (text,
state tokens, boa) + the L action slots. On a CUDA machine ``--gpu`` adds a bf16 run of a larger config
with its peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CPU_CONFIGS = ("tiny", "small")
LANGUAGES = ("open the middle drawer of the cabinet", "put the bowl on the stove", "turn on the stove")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", default=list(CPU_CONFIGS), help="model presets to time on the CPU"
    )
    parser.add_argument("--objective", default="dfm", choices=["dfm", "dfm_head", "dd", "ar"])
    parser.add_argument("--batch-size", type=int, default=64, help="chunks per optimizer step")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--gpu-model", default="base", help="config for the bf16 CUDA run (when CUDA exists)")
    parser.add_argument("--gpu-batch-size", type=int, default=32)


def write_bench_demos(path: Path, episodes: int = 24, length: int = 120, seed: int = 0) -> Path:
    """A LIBERO-shaped HDF5 file: obs/state (8), obs/object_state (58), actions (7) in [-1, 1]."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i in range(episodes):
            demo = data.create_group(f"demo_{i}")
            task = i % len(LANGUAGES)
            demo.attrs.update(language=LANGUAGES[task], task_index=task, num_samples=length)
            t = np.linspace(0, 1, length)[:, None]
            demo["obs/state"] = np.sin(t * rng.uniform(1, 4, 8) + rng.uniform(0, 3, 8)).astype(np.float32)
            demo["obs/object_state"] = rng.normal(size=(length, 58)).astype(np.float32)
            actions = np.tanh(np.cos(t * rng.uniform(1, 5, 7)) + 0.1 * rng.normal(size=(length, 7)))
            actions[:, 6] = np.where(t[:, 0] < 0.5, -1.0, 1.0)
            demo["actions"] = actions.astype(np.float32)
    return path


def time_config(
    model: str,
    data: Path,
    out_dir: Path,
    batch_size: int,
    steps: int,
    warmup: int,
    objective: str,
    **extra: Any,
) -> dict[str, Any]:
    """Time ``steps`` optimizer steps of ``model`` after ``warmup``; returns one result row."""
    import torch

    from dfm_vla.train.config import load_config
    from dfm_vla.train.loop import Trainer, prefix_length

    cfg = load_config(
        None,
        {
            "model": model,
            "data": [str(data)],
            "out_dir": str(out_dir / model),
            "objective": objective,
            "state_keys": ["state", "object_state"],
            "horizon": 8,
            "tokenizer": "bins",
            "num_bins": 64,
            "batch_size": batch_size,
            "grad_accum": 1,
            "effective_batch_size": 0,
            "max_steps": warmup + steps + 1,
            "tensorboard": False,
            "activation_checkpointing": False,
            "val_fraction": 0.1,
            **extra,
        },
    )
    trainer = Trainer(cfg, progress=False)
    try:
        device = trainer.info.device
        for _ in range(warmup):
            trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        samples0, tokens0 = trainer.samples_seen, trainer.tokens_seen
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        batch = trainer.data.train.batch(np.arange(min(batch_size, len(trainer.data.train))))
        seq = prefix_length(trainer.prefix_builder(batch), trainer.model.config) + trainer.tokenizer.num_slots
        row = {
            "model": model,
            "device": device,
            "precision": "bf16" if cfg.precision == "bf16" or device.startswith("cuda") else "fp32",
            "parameters_M": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
            "batch": batch_size,
            "seq_tokens": seq,
            "s_per_step": seconds / steps,
            "samples_per_s": (trainer.samples_seen - samples0) / seconds,
            "tokens_per_s": (trainer.tokens_seen - tokens0) / seconds,
        }
        if device.startswith("cuda"):
            row["peak_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
        return row
    finally:
        trainer.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        data = write_bench_demos(tmp / "demos.hdf5")
        for model in args.models:
            rows.append(
                time_config(
                    model, data, tmp, args.batch_size, args.steps, args.warmup, args.objective, device="cpu"
                )
            )
        gpu_note = "not run: no CUDA device on this machine"
        if torch.cuda.is_available():
            rows.append(
                time_config(
                    args.gpu_model, data, tmp, args.gpu_batch_size, args.steps, args.warmup, args.objective,
                    device="cuda", precision="bf16", activation_checkpointing=True,
                )
            )  # fmt: skip
            gpu_note = f"bf16 run of {args.gpu_model} on {torch.cuda.get_device_name()}"
    return {
        "rows": rows,
        "objective": args.objective,
        "threads": args.threads,
        "torch": torch.__version__,
        "gpu": gpu_note,
    }
