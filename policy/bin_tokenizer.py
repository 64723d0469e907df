"""Uniform-bin action tokenizer: one token per dimension per step, L = H x D (layout: action_tokenizer.py).

Bin i of ``num_bins`` covers [-1 + i w, -1 + (i + 1) w) of the normalised range, w = 2 / num_bins, and
decodes to its centre, so the round-trip error is at most w / 2 in normalised units. Binary gripper dims
use the first and last bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfm_vla.policy.action_tokenizer import ActionTokenizer


@dataclass
class BinTokenizerConfig:
    num_bins: int = 256
    gripper_dims: tuple[int, ...] = ()  # dims kept binary by the normaliser
    clip_percentile: float = 1.0  # the normaliser maps percentiles p and 100 - p of each dim to -1 and 1

    def __post_init__(self) -> None:
        self.gripper_dims = tuple(int(d) for d in self.gripper_dims)
        if not 0.0 <= float(self.clip_percentile) < 50.0:
            raise ValueError(f"clip_percentile: expected a percentile in [0, 50), got {self.clip_percentile}")
        self.clip_percentile = float(self.clip_percentile)
        if int(self.num_bins) < 2:
            raise ValueError(f"num_bins: expected an integer >= 2, got {self.num_bins}")
        self.num_bins = int(self.num_bins)


class BinActionTokenizer(ActionTokenizer):
    """Uniform bins per dimension on the normalised range [-1, 1]; token id = bin index."""

    kind = "bins"
    config_class = BinTokenizerConfig

    def __init__(self, config: BinTokenizerConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("BinActionTokenizer: pass either a config or keyword arguments, not both")
        self.config = config if config is not None else BinTokenizerConfig(**kwargs)

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalised units (the range [-1, 1] has width 2)."""
        return 2.0 / self.config.num_bins

    def bin_centers(self) -> np.ndarray:
        """(num_bins,) bin centres in normalised units."""
        return -1.0 + (np.arange(self.config.num_bins) + 0.5) * self.bin_width

    def _fit(self, normalized: np.ndarray) -> None:
        _, horizon, action_dim = normalized.shape
        self._num_slots = horizon * action_dim
        self._num_action_tokens = self.config.num_bins
        self.fit_stats = {
            "num_chunks": int(normalized.shape[0]),
            "mean_tokens_per_chunk": float(self._num_slots),
            "truncation_rate": 0.0,
        }

    def _load_state(self, state: dict, directory) -> None:
        """The saved sizes must be the ones ``_fit`` derives (bins from num_bins, one slot per value)."""
        slots, tokens = self.horizon * self.action_dim, self.config.num_bins
        if self._num_slots != slots or self._num_action_tokens != tokens:
            raise ValueError(
                f"{directory}/action_tokenizer.json: 'num_slots' {self._num_slots} and 'num_action_tokens' "
                f"{self._num_action_tokens} do not fit a bin tokenizer of horizon x action_dim = {slots} "
                f"slots and {tokens} bins"
            )

    def _encode_normalized(self, normalized: np.ndarray) -> np.ndarray:
        bins = np.floor((normalized + 1.0) / self.bin_width).astype(np.int64)
        return np.clip(bins, 0, self.config.num_bins - 1).reshape(normalized.shape[0], -1)

    def _token_counts(self, normalized: np.ndarray) -> np.ndarray:
        return np.full(normalized.shape[0], self.num_slots, dtype=np.int64)

    def _decode_normalized(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, length = tokens.shape
        slots = self.num_slots
        valid = np.full(n, length == slots)
        if length < slots:  # too short: missing slots decode to the middle of the range
            tokens = np.concatenate([tokens, np.full((n, slots - length), -1, np.int64)], axis=1)
        tokens = tokens[:, :slots]
        regular = (tokens >= 0) & (tokens < self.config.num_bins)
        valid &= regular.all(axis=1)
        values = np.where(regular, self.bin_centers()[np.clip(tokens, 0, self.config.num_bins - 1)], 0.0)
        return values.reshape(n, self.horizon, self.action_dim), valid

    def token_values(self) -> np.ndarray:
        """(V, 1): bin centre in normalised units for regular ids, NaN for specials."""
        values = np.full((self.vocab_size, 1), np.nan)
        values[: self.config.num_bins, 0] = self.bin_centers()
        return values
