"""Observation dicts -> padded prefix tensors for the model (:class:`PrefixInputs`).

An observation is a dict::

    {"language": str,                                  # the instruction
     "images": {view: (H, W, 3) uint8},                # the views in ModelConfig.image_views (if any)
     "state": (S1,) float, "object_state": (S2,) ...}  # the keys in ModelConfig.state_keys (if state_dim)

The processor checks every key (missing keys, wrong shapes or dtypes, NaN or inf, state values beyond
``MAX_STATE_MAGNITUDE`` = 1e6, an empty instruction or one longer than ``max_text_tokens``) and raises
``ValueError`` naming the key and what was expected. Finite states inside that bound but outside the
training statistics are accepted: the policy then acts out of distribution, which is the caller's call.
State vectors are concatenated in ``state_keys`` order and normalised with the checkpoint's statistics
(``(x - mean) / std``, std floored at 1e-6). Images stay uint8 here; the model's patch encoder (or, at
full scale, the VQ image tokenizer run here) turns them into tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from dfm_vla.policy.config import ModelConfig
from dfm_vla.policy.text_tokenizer import TextTokenizer, pad_batch

MAX_STATE_MAGNITUDE = 1e6  # |state value| above this is an error (units or memory bug), not a robot state


@dataclass
class PrefixInputs:
    """The clean conditioning of a batch. Every field is optional (a config choice).

    text_ids: (B, T) long, right-padded; text_valid: (B, T) bool.
    images: (B, V, H, W, 3) uint8 (patch encoder). image_tokens: (B, V, N) long vocabulary ids (VQ).
    state: (B, S) float32, normalised.
    """

    text_ids: torch.Tensor | None = None
    text_valid: torch.Tensor | None = None
    images: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    state: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return int(value.shape[0])
        raise ValueError("PrefixInputs: empty (no text, images or state)")

    def to(self, device: torch.device | str) -> PrefixInputs:
        return PrefixInputs(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    def select(self, rows: Sequence[int] | slice) -> PrefixInputs:
        """The sub-batch of ``rows``."""
        return PrefixInputs(**{f.name: _rows(getattr(self, f.name), rows) for f in fields(self)})


def _to(value: torch.Tensor | None, device) -> torch.Tensor | None:
    return value.to(device) if value is not None else None


def _rows(value: torch.Tensor | None, rows) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(rows, slice):
        return value[rows]
    return value[torch.as_tensor(list(rows), dtype=torch.long)]


class PolicyProcessor:
    """Checks and batches observation dicts; see the module docstring.

    norm_stats: ``{"state": {"mean": [...], "std": [...]}}`` (the checkpoint's ``normalization.json``).
    image_tokenizer: a :class:`~dfm_vla.policy.image_encoder.VQImageTokenizer` when the config uses VQ.
    """

    def __init__(
        self,
        config: ModelConfig,
        text_tokenizer: TextTokenizer | None,
        norm_stats: Mapping[str, Any] | None = None,
        image_tokenizer: Any = None,
    ):
        self.config = config
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        if config.use_text and text_tokenizer is None:
            raise ValueError("text_tokenizer: the config uses text but no text tokenizer was given")
        self.state_mean = self.state_std = None
        if config.state_dim:
            stats = (norm_stats or {}).get("state")
            if stats is None:
                stats = {"mean": [0.0] * config.state_dim, "std": [1.0] * config.state_dim}
            self.state_mean = np.asarray(stats["mean"], dtype=np.float64)
            self.state_std = np.maximum(np.asarray(stats["std"], dtype=np.float64), 1e-6)
            if self.state_mean.shape != (config.state_dim,) or self.state_std.shape != (config.state_dim,):
                raise ValueError(
                    f"norm_stats['state']: expected mean and std of shape ({config.state_dim},), "
                    f"got {self.state_mean.shape} and {self.state_std.shape}"
                )

    # ---- single observation checks -----------------------------------------------------------------
    def check(self, obs: Mapping[str, Any], index: int | None = None) -> None:
        """Raise ValueError naming the first bad key of ``obs``."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"obs{_where(index)}: expected a dict, got {type(obs).__name__}")
        self._language_ids(obs, _where(index))
        self._images(obs, _where(index))
        self._state(obs, _where(index))

    def _language_ids(self, obs: Mapping[str, Any], where: str) -> list[int] | None:
        if not self.config.use_text:
            return None
        if not isinstance(obs, Mapping):
            raise ValueError(f"obs{where}: expected a dict, got {type(obs).__name__}")
        if "language" not in obs:
            raise ValueError(f"obs{where}['language']: missing; expected the instruction string")
        text = obs["language"]
        if not isinstance(text, str):
            raise ValueError(f"obs{where}['language']: expected a str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(
                f"obs{where}['language']: empty instruction; this policy is language-conditioned, "
                "expected the task's instruction (e.g. 'open the top drawer of the cabinet')"
            )
        ids = self.text_tokenizer.encode(text)
        if len(ids) > self.config.max_text_tokens:
            raise ValueError(
                f"obs{where}['language']: instruction is {len(ids)} tokens, the model accepts at most "
                f"{self.config.max_text_tokens} ({text[:60]!r}...)"
            )
        return ids

    def _images(self, obs: Mapping[str, Any], where: str) -> list[np.ndarray] | None:
        views = self.config.image_views
        if not views:
            return None
        images = obs.get("images")
        if not isinstance(images, Mapping):
            raise ValueError(
                f"obs{where}['images']: expected a dict {{view: (H, W, 3) uint8}} with views {views}"
            )
        out = []
        for view in views:
            if view not in images:
                raise ValueError(f"obs{where}['images'][{view!r}]: missing; the model needs views {views}")
            img = np.asarray(images[view])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(
                    f"obs{where}['images'][{view!r}]: expected (H, W, 3) uint8, got {img.dtype} {img.shape}"
                )
            out.append(img)
        shapes = {img.shape for img in out}
        if len(shapes) > 1:
            raise ValueError(f"obs{where}['images']: expected all views of one size, got {sorted(shapes)}")
        return out

    def _state(self, obs: Mapping[str, Any], where: str) -> np.ndarray | None:
        if not self.config.state_dim:
            return None
        parts = []
        for key in self.config.state_keys:
            if key not in obs:
                raise ValueError(
                    f"obs{where}[{key!r}]: missing; the model reads state keys {self.config.state_keys}"
                )
            value = np.asarray(obs[key])
            if value.ndim != 1 or not (
                np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
            ):
                raise ValueError(
                    f"obs{where}[{key!r}]: expected a 1-D float vector, got {value.dtype} {value.shape}"
                )
            if not np.isfinite(value).all():
                bad = int(np.flatnonzero(~np.isfinite(value))[0])
                raise ValueError(f"obs{where}[{key!r}]: contains NaN or inf ({value[bad]} at index {bad})")
            if (np.abs(value) > MAX_STATE_MAGNITUDE).any():
                bad = int(np.flatnonzero(np.abs(value) > MAX_STATE_MAGNITUDE)[0])
                raise ValueError(
                    f"obs{where}[{key!r}][{bad}]: {value[bad]:.3g} is no plausible state value "
                    f"(|x| > {MAX_STATE_MAGNITUDE:.0e}); expected the env's units (m, rad) the policy was "
                    "trained on: check the obs key and its units"
                )
            parts.append(value.astype(np.float64))
        state = np.concatenate(parts)
        if state.shape != (self.config.state_dim,):
            sizes = {k: int(np.asarray(obs[k]).shape[0]) for k in self.config.state_keys}
            raise ValueError(
                f"obs{where}[{'+'.join(self.config.state_keys)}]: expected {self.config.state_dim} numbers "
                f"in total, got {state.shape[0]} ({sizes})"
            )
        return state

    # ---- batching ------------------------------------------------------------------------------------
    def __call__(self, observations: Sequence[Mapping[str, Any]]) -> PrefixInputs:
        """A list of B observation dicts -> :class:`PrefixInputs` on the CPU."""
        if isinstance(observations, Mapping):
            raise ValueError("observations: expected a list of obs dicts; wrap a single obs in a list")
        if len(observations) == 0:
            raise ValueError("observations: expected at least one obs dict")
        out = PrefixInputs()
        token_lists, image_lists, states = [], [], []
        for i, obs in enumerate(observations):
            where = _where(i if len(observations) > 1 else None)
            if not isinstance(obs, Mapping):
                raise ValueError(f"obs{where}: expected a dict, got {type(obs).__name__}")
            token_lists.append(self._language_ids(obs, where))
            image_lists.append(self._images(obs, where))
            states.append(self._state(obs, where))
        if self.config.use_text:
            ids, valid = pad_batch(token_lists, self.text_tokenizer.pad_id, self.config.max_text_tokens)
            out.text_ids, out.text_valid = torch.from_numpy(ids), torch.from_numpy(valid)
        if self.config.image_views:
            shapes = {imgs[0].shape for imgs in image_lists}
            if len(shapes) > 1:
                raise ValueError(
                    f"obs['images']: expected one image size across the batch, got {sorted(shapes)}"
                )
            images = torch.from_numpy(np.stack([np.stack(imgs) for imgs in image_lists]))
            if self.config.image_encoder == "vq":
                if self.image_tokenizer is None:
                    raise ValueError("image_tokenizer: the config uses VQ image tokens but none was loaded")
                out.image_tokens = self.image_tokenizer(images)
            else:
                out.images = images
        if self.config.state_dim:
            normalised = (np.stack(states) - self.state_mean) / self.state_std
            out.state = torch.from_numpy(normalised.astype(np.float32))
        return out


def state_statistics(states: np.ndarray) -> dict[str, list[float]]:
    """Normalisation statistics of (N, S) state vectors: mean, std, 1st/99th percentiles."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2:
        raise ValueError(f"states: expected shape (N, S), got {states.shape}")
    return {
        "mean": states.mean(0).tolist(),
        "std": states.std(0).tolist(),
        "q01": np.percentile(states, 1, axis=0).tolist(),
        "q99": np.percentile(states, 99, axis=0).tolist(),
    }


def _where(index: int | None) -> str:
    return f"[{index}]" if index is not None else ""
