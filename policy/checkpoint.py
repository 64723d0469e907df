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

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dfm_vla.policy.config import ModelConfig
from dfm_vla.policy.file_checks import (
    REDO,
    check_finite,
    check_tensors,
    check_type,
    field,
    finite_numbers,
    load_safetensors,
    read_json,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"
ACTION_TOKENIZER_DIR = "action_tokenizer"
TEXT_TOKENIZER_DIR = "text_tokenizer"
IMAGE_TOKENIZER_DIR = "image_tokenizer"
FORMAT = "dfm_vla.policy"
VERSION = 1


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
    if config.state_dim and "state" not in (norm_stats or {}):
        raise ValueError(
            f"norm_stats: the model reads a {config.state_dim}-d state, so the state's mean and std it was "
            "trained with must be saved with it ({'state': {'mean': [...], 'std': [...]}})"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        atomic_write_json(
            tmp / CONFIG_FILE,
            {"format": FORMAT, "version": VERSION, "model": config.to_dict(), "extra": extra or {}},
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
    """(ModelConfig, extra) of a checkpoint folder; ValueError naming the file and field when it is bad."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: not a checkpoint folder (expected {CONFIG_FILE}, {WEIGHTS_FILE}, ...)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a dfm_vla policy checkpoint")
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: 'format' is {data.get('format')!r}, expected {FORMAT!r} "
            "(a UniVLA/Emu3 checkpoint in Hugging "
            "Face layout loads with dfm_vla.policy.univla_loader instead)"
        )
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ValueError(
            f"{path}: 'version' is {version!r}, expected {VERSION} (this dfm-vla reads version {VERSION} "
            "checkpoints; a newer one needs a newer dfm-vla)"
        )
    model = field(path, data, "model", "dict")
    extra = field(path, data, "extra", "dict", optional=True) or {}
    _check_model_fields(path, model)
    try:
        return ModelConfig.from_dict(model), dict(extra)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{path}: 'model': {err}") from None


def _check_model_fields(path: Path, model: dict[str, Any]) -> None:
    """Each known field of ``model`` has the JSON type of its ModelConfig annotation (None where allowed)."""
    kinds = {"bool": "bool", "int": "int", "float": "number", "str": "str", "tuple": "list", "dict": "dict"}
    for f in dataclasses.fields(ModelConfig):
        types = [t.strip().split("[")[0] for t in str(f.type).split("|")]
        value = model.get(f.name)
        if f.name not in model or (value is None and "None" in types) or types[0] not in kinds:
            continue
        check_type(path, f"model.{f.name}", value, kinds[types[0]])
        if types[0] == "tuple":
            for i, item in enumerate(value):
                check_type(path, f"model.{f.name}[{i}]", item, "str")


def read_norm_stats(path: Path, config: ModelConfig) -> dict[str, Any]:
    """``normalization.json`` checked against ``config``. A model that reads no state may lack the file
    ({}); one that does must have it with its ``state`` statistics, else it would see unscaled states."""
    if not path.is_file():
        if config.state_dim:
            raise FileNotFoundError(
                f"{path}: missing; the model reads a {config.state_dim}-d state and needs the mean and std "
                f"it was trained with ({REDO})"
            )
        return {}
    data = read_json(path)
    state = field(path, data, "state", "dict", optional=not config.state_dim)
    if state is not None:
        length = config.state_dim or None
        for key in ("mean", "std", "q01", "q99"):
            if key in ("mean", "std") or key in state:
                finite_numbers(path, f"state.{key}", field(path, state, key, "list", "state."), length)
        negative = [i for i, s in enumerate(state["std"]) if s < 0]
        if negative:
            raise ValueError(f"{path}: 'state.std[{negative[0]}]' is negative, expected >= 0; {REDO}")
    keys = field(path, data, "state_keys", "list", optional=True)
    if keys is not None and config.state_dim and list(keys) != list(config.state_keys):
        raise ValueError(
            f"{path}: 'state_keys' is {keys}, but {CONFIG_FILE} reads state keys {list(config.state_keys)}"
        )
    action = field(path, data, "action", "dict", optional=True)
    if action is not None:
        low = finite_numbers(path, "action.low", field(path, action, "low", "list", "action."))
        finite_numbers(path, "action.high", field(path, action, "high", "list", "action."), len(low))
    return data


def _check_tokenizers(
    directory: Path, config: ModelConfig, action_tokenizer: Any, text_tokenizer: Any
) -> None:
    """The tokenizers fit the model config (sizes written by save_pretrained)."""
    from dfm_vla.policy.action_tokenizer import TOKENIZER_FILE

    sizes = {
        "action_vocab_size": action_tokenizer.vocab_size,
        "num_action_slots": action_tokenizer.num_slots,
        "action_horizon": action_tokenizer.horizon,
        "action_dim": action_tokenizer.action_dim,
    }
    for name, size in sizes.items():
        if getattr(config, name) and getattr(config, name) != size:
            raise ValueError(
                f"{directory / ACTION_TOKENIZER_DIR / TOKENIZER_FILE}: gives {name} {size}, but "
                f"{directory / CONFIG_FILE} says 'model.{name}' {getattr(config, name)}; the folder mixes "
                "files of two checkpoints"
            )
    if text_tokenizer is not None and text_tokenizer.vocab_size > config.text_vocab_size:
        raise ValueError(
            f"{directory / TEXT_TOKENIZER_DIR}: vocabulary of {text_tokenizer.vocab_size} tokens, but "
            f"{directory / CONFIG_FILE} says 'model.text_vocab_size' {config.text_vocab_size}; the folder "
            "mixes files of two checkpoints"
        )


def load_pretrained(
    directory: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> PolicyBundle:
    """Load a folder written by :func:`save_pretrained` into a :class:`PolicyBundle` (model in eval mode).

    Every file is checked first: a corrupt, truncated or mismatched one raises ``ValueError`` naming it.
    """
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
    _check_tokenizers(directory, config, action_tokenizer, text_tokenizer)
    norm_stats = read_norm_stats(directory / NORMALIZATION_FILE, config)
    with torch.device(device):
        model = DFMVLA(config)
    state = load_safetensors(weights, device=str(device))
    check_tensors(weights, state, model.state_dict(), f"the model of {CONFIG_FILE}")
    check_finite(weights, state)
    model.load_state_dict(state)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    image_tokenizer = None
    if config.image_views and config.image_encoder == "vq":
        from dfm_vla.policy.image_encoder import VQImageTokenizer

        image_tokenizer = VQImageTokenizer.from_pretrained(str(directory / IMAGE_TOKENIZER_DIR), config)
    processor = PolicyProcessor(config, text_tokenizer, norm_stats, image_tokenizer)
    return PolicyBundle(model, action_tokenizer, text_tokenizer, norm_stats, processor, extra)
