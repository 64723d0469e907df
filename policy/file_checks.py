"""Readable errors for the files a checkpoint holds (JSON, safetensors), shared by the loaders.

Every error is a ``ValueError`` that names the file and the first bad field or tensor and says what was
expected; a file that does not parse is called corrupt or truncated, with its size. Field names are
dotted paths into the JSON object (``state.mean[3]``, ``model.hidden_size``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDO = "re-save or re-download the checkpoint"
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "dict": (dict,),
}


def file_size(path: str | os.PathLike) -> str:
    """``"1,234 bytes"`` (or ``"unreadable size"``), for corrupt-file messages."""
    try:
        return f"{Path(path).stat().st_size:,} bytes"
    except OSError:
        return "unreadable size"


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object stored in ``path``; ValueError naming the file if it does not parse or is no object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt or truncated ({file_size(path)}): {_why(err)}; {REDO}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got a {type(data).__name__}")
    return data


def _why(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON at line {err.lineno} column {err.colno} ({err.msg})"
    return f"not UTF-8 text ({err})"


def check_type(path: Path, name: str, value: Any, kind: str) -> Any:
    """``value`` if it is of ``kind`` (see ``_TYPES``; ints are not bools, numbers are finite)."""
    ok = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
    if ok and kind == "number" and not math.isfinite(value):
        raise ValueError(f"{path}: {name!r} is {value!r}, expected a finite number; {REDO}")
    if not ok:
        raise ValueError(f"{path}: {name!r} expected {kind}, got {type(value).__name__} {_short(value)}")
    return value


def field(path: Path, data: Mapping[str, Any], key: str, kind: str, prefix: str = "", optional=False) -> Any:
    """``data[key]`` checked to be of ``kind``; a missing key raises unless ``optional`` (then None)."""
    if key not in data:
        if optional:
            return None
        raise ValueError(f"{path}: missing field {prefix + key!r} (expected {kind})")
    return check_type(path, prefix + key, data[key], kind)


def finite_numbers(path: Path, name: str, value: Any, length: int | None = None) -> list[float]:
    """A list of finite numbers (of ``length`` when given), else ValueError naming the first bad entry."""
    check_type(path, name, value, "list")
    if length is not None and len(value) != length:
        raise ValueError(f"{path}: {name!r} expected {length} numbers, got {len(value)}")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise ValueError(f"{path}: '{name}[{i}]' is {_short(x)}, expected a finite number; {REDO}")
    return value


def int_list(path: Path, name: str, value: Any, below: int) -> list[int]:
    """A list of ints in ``[0, below)``."""
    check_type(path, name, value, "list")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < below:
            raise ValueError(f"{path}: '{name}[{i}]' is {_short(x)}, expected an int in [0, {below})")
    return value


def action_tokenizer_fields(path: Path, data: Mapping[str, Any], kinds: list[str]) -> tuple:
    """(kind, sizes, normalizer dict) of an ``action_tokenizer.json``, every field checked."""
    kind = field(path, data, "kind", "str")
    if kind not in kinds:
        raise ValueError(f"{path}: 'kind' expected one of {kinds}, got {kind!r}")
    sizes = {
        k: field(path, data, k, "int") for k in ("horizon", "action_dim", "num_slots", "num_action_tokens")
    }
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"{path}: {name!r} is {size}, expected a positive int")
    norm = field(path, data, "normalizer", "dict")
    for key in ("low", "high"):
        values = field(path, norm, key, "list", "normalizer.")
        finite_numbers(path, f"normalizer.{key}", values, sizes["action_dim"])
    int_list(path, "normalizer.gripper_dims", norm.get("gripper_dims", []), sizes["action_dim"])
    return kind, sizes, norm


def load_safetensors(path: Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a safetensors file; ValueError naming the file (and its size) if it does not parse."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise ValueError(
            f"{path}: corrupt or truncated safetensors file ({file_size(path)}): {err}; {REDO}"
        ) from None


def check_tensors(path: Path, found: Mapping[str, Any], expected: Mapping[str, Any], against: str) -> None:
    """Same tensor names and shapes in ``found`` (read from ``path``) as in ``expected`` (``against``)."""
    missing = [k for k in expected if k not in found]
    if missing:
        shape = _shape(expected[missing[0]])
        raise ValueError(
            f"{path}: tensor {missing[0]!r} (shape {shape}) is missing ({len(missing)} of {len(expected)} "
            f"tensors that {against} expects are missing); {REDO}"
        )
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        raise ValueError(
            f"{path}: tensor {unexpected[0]!r} is not part of {against} ({len(unexpected)} unexpected "
            "tensors); the weights belong to another model"
        )
    for name, tensor in found.items():
        want, got = _shape(expected[name]), _shape(tensor)
        if want is not None and got != want:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {got}, {against} expects {want}; "
                "the weights belong to another model"
            )


def check_finite(path: Path, tensors: Mapping[str, Any]) -> None:
    """Every floating-point tensor in ``tensors`` (read from ``path``) is free of NaN and inf: a run that
    diverged, or bytes damaged in a way the file's format cannot see, fails here and not in a rollout."""
    import torch

    for name, tensor in tensors.items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad} NaN or inf value(s) of {tensor.numel()}; the weights "
                f"are unusable (a diverged run, or a damaged file): {REDO}"
            )


def _shape(tensor: Any) -> tuple[int, ...] | None:
    shape = getattr(tensor, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
