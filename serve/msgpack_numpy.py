"""msgpack framing of numpy arrays: the wire format between the policy server and its clients.

An array travels as a msgpack map ``{"__ndarray__": True, "dtype": "<f4", "shape": [7], "data": b"..."}``
(raw little- or big-endian bytes as the dtype string says); a numpy scalar as ``{"__npgeneric__": ...}``.
Only numeric and boolean dtypes cross the wire: no object arrays, no pickle, so a frame from an untrusted
peer can at worst be rejected with a ``ValueError`` that says what was wrong.

Depends on numpy and msgpack only (the client must not pull in torch).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ALLOWED_KINDS = "biuf"  # bool, signed and unsigned int, float
MAX_ARRAY_BYTES = 256 * 2**20


class FrameError(ValueError):
    """A frame that could not be decoded (not msgpack, a malformed array, a forbidden dtype)."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}: only bool, int and float arrays")
        return {
            "__ndarray__": True,
            "dtype": obj.dtype.str,
            "shape": list(obj.shape),
            "data": np.ascontiguousarray(obj).tobytes(),
        }
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send a numpy scalar of dtype {obj.dtype}")
        return {"__npgeneric__": True, "dtype": obj.dtype.str, "data": obj.tobytes()}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _dtype(text: Any) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise FrameError(f"array dtype {text!r} is not a numpy dtype") from exc
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise FrameError(f"array dtype {text!r} is not allowed: only bool, int and float")
    return dtype


def _decode_hook(obj: dict) -> Any:
    if obj.get("__ndarray__") is True:
        dtype = _dtype(obj.get("dtype"))
        shape = obj.get("shape")
        data = obj.get("data")
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise FrameError(f"array shape must be a list of non-negative ints, got {shape!r}")
        if not isinstance(data, bytes):
            raise FrameError(f"array data must be bytes, got {type(data).__name__}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected > MAX_ARRAY_BYTES or len(data) != expected:
            raise FrameError(
                f"array of dtype {dtype.str} and shape {tuple(shape)} needs {expected} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if obj.get("__npgeneric__") is True:
        dtype = _dtype(obj.get("dtype"))
        data = obj.get("data")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise FrameError(f"numpy scalar of dtype {dtype.str} needs {dtype.itemsize} bytes")
        return np.frombuffer(data, dtype=dtype)[0]
    return obj


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts, lists, str, numbers, numpy arrays and scalars) as one msgpack frame."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode one frame; arrays come back read-only (views of the frame). Raises :class:`FrameError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"expected a binary frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=False)
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises ExtraData, FormatError, StackError, ValueError, ...
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise FrameError(f"not a msgpack frame ({reason})"[:200]) from exc
