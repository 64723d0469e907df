"""Training checkpoints: everything needed to continue a killed run exactly.

``<out_dir>/checkpoints/step_<N>.pt`` holds the model and optimizer state (full, unsharded: gathered
from DDP or FSDP with ``torch.distributed.checkpoint.state_dict``), the scheduler, every rank's RNG
states (python, numpy, torch, CUDA), the sampler position and the metric history. Files are written
atomically (temporary file, then rename) by rank 0, then ``latest.json`` is pointed at them; older
files beyond ``keep`` are removed. Resuming reads ``latest.json``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and, when present, CUDA)."""
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by :func:`capture_rng`."""
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng(world_size: int) -> list[dict[str, Any]]:
    import torch.distributed as dist

    local = capture_rng()
    if world_size <= 1 or not dist.is_initialized():
        return [local]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, local)
    return gathered


def full_state_dicts(model, optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimizer state dicts of a plain, DDP or FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler,
    sampler_state: dict[str, int],
    extra: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    keep: int = 2,
) -> Path | None:
    """Write ``checkpoints/step_<step>.pt`` and point ``latest.json`` at it (collective: call on every rank).

    Returns the path on rank 0, ``None`` elsewhere.
    """
    import torch

    from dfm_vla.utils.io import atomic_path, atomic_write_json

    model_state, optim_state = full_state_dicts(model, optimizer)
    rng_states = _gather_rng(world_size)
    if rank != 0:
        return None
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT_DIR / f"step_{step:08d}.pt"
    payload = {
        "step": int(step),
        "model": model_state,
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_states,
        "sampler": dict(sampler_state),
        "world_size": int(world_size),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    atomic_write_json(out_dir / CHECKPOINT_DIR / LATEST_FILE, {"step": int(step), "file": path.name})
    _prune(out_dir / CHECKPOINT_DIR, keep)
    return path


def _prune(directory: Path, keep: int) -> None:
    files = sorted(directory.glob("step_*.pt"), key=_step_of)
    for old in files[: max(0, len(files) - max(1, keep))]:
        old.unlink(missing_ok=True)


def _step_of(path: Path) -> int:
    match = re.search(r"step_(\d+)\.pt$", path.name)
    return int(match.group(1)) if match else -1


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The file ``latest.json`` points at, or the highest ``step_*.pt``; ``None`` if there is none."""
    from dfm_vla.policy.file_checks import field, read_json

    directory = Path(out_dir) / CHECKPOINT_DIR
    pointer = directory / LATEST_FILE
    if pointer.exists():
        try:
            name = field(pointer, read_json(pointer), "file", "str")
        except ValueError as err:
            raise ValueError(f"{err} (or delete it: --resume then takes the newest step_*.pt)") from None
        if Path(name).name != name:
            raise ValueError(f"{pointer}: 'file' is {name!r}, expected a file name in {directory}")
        path = directory / name
        if path.exists():
            return path
    files = sorted(directory.glob("step_*.pt"), key=_step_of)
    return files[-1] if files else None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a ``step_<N>.pt``; ValueError naming the file when it is corrupt or incomplete."""
    import pickle

    import torch

    from dfm_vla.policy.file_checks import check_type, field, file_size

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path}: corrupt or truncated training checkpoint ({file_size(path)}): {str(err)[:200]}; "
            "delete it to resume from the newest step_*.pt left"
        ) from None
    check_type(path, "payload", payload, "dict")
    for key, kind in (
        ("step", "int"),
        ("model", "dict"),
        ("optimizer", "dict"),
        ("rng", "list"),
        ("sampler", "dict"),
    ):
        field(path, payload, key, kind)
    return payload


def load_checkpoint(
    path: str | Path, model, optimizer, scheduler, rank: int = 0, world_size: int = 1
) -> dict:
    """Load ``path`` into ``model``/``optimizer``/``scheduler`` and restore this rank's RNG.

    Returns the payload's ``step``, ``sampler`` and ``extra``. The world size must match the one
    that wrote the checkpoint (data position and RNG are per rank). A corrupt file, or one whose
    tensors do not fit ``model``, raises ``ValueError`` naming the file (and the tensor).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_state_dict,
    )

    from dfm_vla.policy.file_checks import check_finite, check_tensors

    path = Path(path)
    payload = read_checkpoint(path)
    saved_world = int(payload.get("world_size", 1))
    if saved_world != world_size:
        raise ValueError(
            f"checkpoint {path}: world_size: written by {saved_world} processes, resumed with {world_size}; "
            "resume with the same number of processes"
        )
    if len(payload["rng"]) != saved_world:
        raise ValueError(
            f"{path}: 'rng' holds {len(payload['rng'])} states, expected {saved_world} (one per rank)"
        )
    own = get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))
    check_tensors(path, payload["model"], own, "this run's model")
    check_finite(path, payload["model"])
    try:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=payload["model"],
            optim_state_dict=payload["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: 'optimizer' state does not fit this run's optimizer ({err})") from None
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"][rank])
    return {"step": int(payload["step"]), "sampler": payload["sampler"], "extra": payload.get("extra", {})}
