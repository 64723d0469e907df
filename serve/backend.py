"""What the policy server needs from a policy (:class:`PolicyBackend`), and the checks it runs on every
request before the model sees it (observations against the served spec, a plan's frozen prefix).

A request that fails a check raises :class:`BadRequest`; the server answers it with an error message
naming the field and keeps the connection open.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np


class BadRequest(ValueError):
    """A request the server refuses (the client's fault); the message goes back to the client."""


def checkpoint_id(policy_dir: str | Path) -> str:
    """A short id of a checkpoint folder: its name and a hash of its config and its weight files' sizes
    and first MiB (cheap at any scale, changes when the weights do)."""
    root = Path(policy_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors")):
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as f:
            digest.update(f.read(2**20))
    return f"{root.resolve().name}-{digest.hexdigest()[:12]}"


def validate_frozen(frozen: Any, action_dim: int, chunk_length: int) -> np.ndarray:
    """A plan request's ``frozen`` prefix as (d, action_dim) float32, 1 <= d < chunk_length, all finite."""
    arr = np.asarray(frozen) if isinstance(frozen, (np.ndarray, list, tuple)) else None
    if arr is None or arr.dtype.kind not in "biuf":
        raise BadRequest(
            f"frozen: expected a numeric array (d, {action_dim}), got "
            f"{type(frozen).__name__ if arr is None else f'dtype {arr.dtype}'}"
        )
    if arr.ndim != 2 or arr.shape[1] != action_dim:
        raise BadRequest(f"frozen: expected shape (d, {action_dim}), got {tuple(arr.shape)}")
    if not 1 <= arr.shape[0] < chunk_length:
        raise BadRequest(
            f"frozen: expected 1 <= d < {chunk_length} (the chunk length) frozen steps, got {arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise BadRequest("frozen: contains NaN or inf")
    return np.array(arr, dtype=np.float32)


def validate_obs(obs: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Check ``obs`` against the served observation spec; return it (arrays made writable copies)."""
    if not isinstance(obs, dict):
        raise BadRequest(f"obs: expected a map of observation keys, got {type(obs).__name__}")
    out = dict(obs)
    for key, want in spec.items():
        if key not in obs:
            if want.get("optional"):
                continue
            raise BadRequest(f"obs[{key!r}]: missing (expected keys: {sorted(spec)})")
        value = obs[key]
        if want["dtype"] == "str":
            if not isinstance(value, str):
                raise BadRequest(f"obs[{key!r}]: expected a string, got {type(value).__name__}")
            continue
        if want["dtype"] == "dict":
            if not isinstance(value, dict):
                raise BadRequest(f"obs[{key!r}]: expected a map of views, got {type(value).__name__}")
            out[key] = validate_obs(value, want["keys"])
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise BadRequest(f"obs[{key!r}]: expected a numeric array, got dtype {arr.dtype}")
        shape = tuple(want["shape"])
        if arr.ndim != len(shape) or any(
            n is not None and n != m for n, m in zip(shape, arr.shape, strict=True)
        ):
            expected = str(tuple("any" if n is None else n for n in shape)).replace("'", "")
            raise BadRequest(f"obs[{key!r}]: expected shape {expected}, got {tuple(arr.shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadRequest(f"obs[{key!r}]: contains NaN or inf")
        if want["dtype"] == "uint8" and arr.dtype != np.uint8:
            raise BadRequest(f"obs[{key!r}]: expected dtype uint8, got {arr.dtype}")
        out[key] = np.array(arr)  # a writable copy in the sender's dtype, as an in-process caller passes it
    return out


class PolicyBackend:
    """What the server needs from a ``DFMPolicy``: its observation spec, checks, batched plans, seeds.

    Every call but :meth:`serving_spec` and :meth:`check` runs in the server's single model thread.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def serving_spec(self) -> dict[str, Any]:
        policy, cfg = self.policy, self.policy.config
        obs: dict[str, Any] = {}
        if cfg.use_text:
            obs["language"] = {
                "dtype": "str",
                "max_tokens": cfg.max_text_tokens,
                "example": "pick up the bowl",
            }
        if cfg.image_views:
            view = {"dtype": "uint8", "shape": [None, None, 3], "size_hint": cfg.image_size}
            obs["images"] = {"dtype": "dict", "keys": {v: dict(view) for v in cfg.image_views}}
        if cfg.state_dim:
            keys = list(cfg.state_keys)
            for key in keys:  # one key: its length is known; several: only their total is
                obs[key] = {"dtype": "float", "shape": [cfg.state_dim] if len(keys) == 1 else [None]}
        return {
            "action_dim": policy.action_dim,
            "chunk_length": policy.action_tokenizer.horizon,
            "execute_horizon": policy.execute_horizon,
            "decoder": policy.decoder,
            "observation": obs,
            "seed": policy.seed,
            "frozen_prefix": self.supports_frozen(),
        }

    def supports_frozen(self) -> bool:
        """Whether the policy's ``plan`` takes ``frozen_actions`` (keeps a chunk's first steps fixed):
        its signature says so and its action tokenizer is one it can freeze (uniform bins)."""
        try:
            takes_it = "frozen_actions" in inspect.signature(self.policy.plan).parameters
        except (TypeError, ValueError):
            return False
        tokenizer = getattr(self.policy, "action_tokenizer", None)
        return takes_it and getattr(tokenizer, "kind", "bins") == "bins"  # DFMPolicy: bins only

    def check(self, obs: dict[str, Any]) -> None:
        """Raise ValueError naming the first bad key (the in-process policy's own message)."""
        self.policy.processor.check(obs)

    def seed_env(self, env_index: int, seed: int) -> None:
        self.policy.seed_env(env_index, seed)

    def plan(
        self,
        obs_list: list[dict[str, Any]],
        env_indices: list[int],
        frozen_actions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[dict]]:
        """(B, chunk_length, action_dim) float32 chunks and, per row, the plan's report. ``frozen_actions``
        (B, d, action_dim): each chunk's first d steps, kept fixed while the policy plans the rest."""
        if frozen_actions is None:
            chunks = self.policy.plan(obs_list, env_indices)
        else:
            chunks = self.policy.plan(obs_list, env_indices, frozen_actions=frozen_actions)
        info = self.policy.last_plan
        shared = {
            "decoder": info.decoder,
            "prefix_ms": float(info.prefix_ms),
            "refine_ms": float(info.refine_ms),
            "decode_ms": float(info.decode_ms),
            "model_calls": int(info.model_calls),
            "prefix_calls": int(info.prefix_calls),
        }
        rows = [
            {**shared, "valid": bool(info.valid[i]), "changed_per_step": np.asarray(info.changed_per_step[i])}
            for i in range(len(obs_list))
        ]
        return np.asarray(chunks, dtype=np.float32), rows
