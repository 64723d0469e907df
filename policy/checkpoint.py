"""Policy checkpoints: one folder with everything a policy needs to act.

::

    <dir>/config.json          {"format": "dfm_vla.policy", "version": 1, "model": {...}, "extra": {...}}
    <dir>/model.safetensors    the weights (safetensors; no pickles)
    <dir>/action_tokenizer/    ActionTokenizer.save (carries the action normalisation)
    <dir>/text_tokenizer/      TextTokenizer.save (tiktoken rank file + specials), when the model reads text
    <dir>/normalization.json   {"state": {"mean", "std", ...}, "state_keys": [...], "action": {...}}

The folder is written next to the target and renamed onto it at the end, so an interrupted save never
leaves a half-written checkpoint (an existing one is replaced only once the new one is complete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfm_vla.policy.config import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"
ACTION_TOKENIZER_DIR = "action_tokenizer"
TEXT_TOKENIZER_DIR = "text_tokenizer"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
FORMAT = "dfm_vla.policy"


@dataclass
class PolicyBundle:
    """A loaded checkpoint: the model (eval mode) and what turns observations into its inputs and back."""

    model: Any
    action_tokenizer: Any
    text_tokenizer: Any
    norm_stats: dict[str, Any]
    processor: Any
    extra: dict[str, Any]

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def save_pretrained(
    directory: str | os.PathLike,
    model: Any,
    action_tokenizer: Any,
    text_tokenizer: Any = None,
    norm_stats: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder (module docstring) for ``model`` and its tokenizers; returns the path."""
    from safetensors.torch import save_file

    from dfm_vla.utils.io import atomic_write_json

    directory = Path(directory)
    config: ModelConfig = model.config
    if config.use_text and text_tokenizer is None:
        raise ValueError("text_tokenizer: the model reads text, so its tokenizer must be saved with it")
    if (
        action_tokenizer.vocab_size != config.action_vocab_size
        or action_tokenizer.num_slots != config.num_action_slots
    ):
        raise ValueError(
            f"action_tokenizer: vocab {action_tokenizer.vocab_size} / slots {action_tokenizer.num_slots} "
            f"do not match the model's {config.action_vocab_size} / {config.num_action_slots}"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_json(
            tmp / CONFIG_FILE,
            {"format": FORMAT, "version": 1, "model": config.to_dict(), "extra": extra or {}},
        )
        action_tokenizer.save(tmp / ACTION_TOKENIZER_DIR)
        if text_tokenizer is not None:
            text_tokenizer.save(tmp / TEXT_TOKENIZER_DIR)
        norm = dict(norm_stats or {})
        norm.setdefault("state_keys", list(config.state_keys))
        if getattr(action_tokenizer, "normalizer", None) is not None:
            norm.setdefault("action", action_tokenizer.normalizer.to_dict())
        atomic_write_json(tmp / NORMALIZATION_FILE, norm)
        replace_path(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def replace_path(new: Path, target: Path) -> None:
    """Move ``new`` (a file or folder) onto ``target``; an existing folder is swapped out, then deleted."""
    if target.is_dir():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, extra) of a checkpoint folder, with readable errors for a wrong folder."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: not a checkpoint folder (expected {CONFIG_FILE}, {WEIGHTS_FILE}, ...)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a dfm_vla policy checkpoint")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: 'format' is {data.get('format')!r}, expected {FORMAT!r} "
            "(a UniVLA/Emu3 checkpoint in Hugging "
            "Face layout loads with dfm_vla.policy.univla_loader instead)"
        )
    return ModelConfig.from_dict(data["model"]), dict(data.get("extra", {}))


def load_pretrained(
    directory: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> PolicyBundle:
    """Load a folder written by :func:`save_pretrained` into a :class:`PolicyBundle` (model in eval mode)."""
    from safetensors.torch import load_file

    from dfm_vla.policy.action_tokenizer import load_action_tokenizer
    from dfm_vla.policy.model import DFMVLA
    from dfm_vla.policy.processor import PolicyProcessor
    from dfm_vla.policy.text_tokenizer import TextTokenizer

    directory = Path(directory)
    config, extra = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; the checkpoint has no weights")
    action_tokenizer = load_action_tokenizer(directory / ACTION_TOKENIZER_DIR)
    text_tokenizer = TextTokenizer.load(directory / TEXT_TOKENIZER_DIR) if config.use_text else None
    norm_path = directory / NORMALIZATION_FILE
    norm_stats = json.loads(norm_path.read_text(encoding="utf-8")) if norm_path.is_file() else {}
    with torch.device(device):
        model = DFMVLA(config)
    state = load_file(str(weights), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not match the config: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    image_tokenizer = None
    if config.image_views and config.image_encoder == "vq":
        from dfm_vla.policy.image_encoder import VQImageTokenizer

        image_tokenizer = VQImageTokenizer.from_pretrained(str(directory / IMAGE_TOKENIZER_DIR), config)
    processor = PolicyProcessor(config, text_tokenizer, norm_stats, image_tokenizer)
    return PolicyBundle(model, action_tokenizer, text_tokenizer, norm_stats, processor, extra)
