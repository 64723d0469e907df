"""Action tokenizers: continuous action chunks (H, D) <-> a fixed number L of discrete token slots.

Two tokenizers share one interface (:class:`ActionTokenizer`), so the model never cares which is in use:

- :class:`~dfm_vla.policy.fast_tokenizer.FastActionTokenizer` (FAST, Pertsch et al. 2025): normalise,
  DCT-II per dimension over time, scale, round, flatten low frequencies first, byte-pair encode.
- :class:`~dfm_vla.policy.bin_tokenizer.BinActionTokenizer`: uniform bins per dimension on the normalised
  range, one token per dimension per step.

Both are re-exported here: ``from dfm_vla.policy.action_tokenizer import FastActionTokenizer``.

Token ids (V = ``vocab_size``)::

    0 .. num_action_tokens-1      regular tokens (FAST: BPE tokens; bins: bin index, shared by all dims)
    num_action_tokens + 0         pad    (FAST: fills the slots after eoa)
    num_action_tokens + 1         boa    (begin of actions; never inside the slots: the model puts it
                                          in front of them; decode ignores one leading boa)
    num_action_tokens + 2         eoa    (FAST: ends the BPE tokens inside the slots)
    num_action_tokens + 3         mask   (the absorbing state of masked discrete diffusion)

Slot layout (L = ``num_slots``, fixed when fitting):

- FAST: ``[t_1 .. t_n, eoa, pad, ..., pad]`` with n <= L - 1 BPE tokens. A chunk that needs more is
  truncated to its first L - 1 tokens (only its highest frequencies are lost); ``fit_stats`` reports
  the share of training chunks that were.
- Bins: ``[b(step 0, dim 0), b(0, 1), ..., b(H-1, D-1)]``, time-major, L = H x D, no specials.

``token_values()`` gives each id's natural value-space meaning as a (V, k) float array, for tests and
for the metric probability path: bins, k = 1, the bin centre in normalised units; FAST, k = the longest
token's coefficient count, the token's DCT coefficients divided by the scale (normalised units), NaN
after the token's last coefficient. Rows of the special ids are NaN in every column (a regular row always
has a finite first column). ``value_distances()`` turns that into a (V, V) distance matrix with NaN
wherever a special id is involved; a metric path must choose what specials mean (e.g. a large constant).

Normalisation (:class:`ActionNormalizer`, fitted with the tokenizer and saved with it): per dimension,
the 1st/99th percentiles map to -1/+1 and values are clipped to [-1, 1]. Gripper dimensions named in
``gripper_dims`` are kept binary: values above the midpoint of their two levels (data min and max) map
to +1, the rest to -1, and un-normalising thresholds at 0 and returns one of the two levels.

Saved folder: ``action_tokenizer.json`` (kind, config, normaliser, fit statistics) and, for FAST,
``bpe_tokenizer.json`` (the `tokenizers` library's own format). No pickles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.policy.file_checks import REDO, action_tokenizer_fields, field, read_json

TOKENIZER_FILE = "action_tokenizer.json"
NUM_SPECIAL_TOKENS = 4  # pad, boa, eoa, mask


@dataclass
class DecodedChunks:
    """Result of :meth:`ActionTokenizer.decode`.

    actions: (N, H, D) float32 in original units (best effort where a sequence was malformed).
    valid: (N,) bool, False where the token sequence was malformed.
    """

    actions: np.ndarray
    valid: np.ndarray

    @property
    def num_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def invalid_rate(self) -> float:
        return float((~self.valid).mean()) if self.valid.size else 0.0


@dataclass
class ActionNormalizer:
    """Per-dimension affine map of actions (original units) onto [-1, 1], clipped.

    low, high: (D,) the 1st/99th percentiles (for gripper dims, the data min and max: the two levels).
    gripper_dims: dims kept binary (-1 or +1 after normalising; one of low/high after un-normalising).
    """

    low: np.ndarray
    high: np.ndarray
    gripper_dims: tuple[int, ...] = ()

    @classmethod
    def fit(
        cls, actions: np.ndarray, gripper_dims: tuple[int, ...] = (), quantiles: tuple[float, float] = (1, 99)
    ) -> ActionNormalizer:
        """Fit on actions (..., D) in original units."""
        flat = np.asarray(actions, dtype=np.float64).reshape(-1, actions.shape[-1])
        low, high = np.percentile(flat, quantiles, axis=0)
        for d in gripper_dims:
            low[d], high[d] = flat[:, d].min(), flat[:, d].max()
        return cls(low=low, high=high, gripper_dims=tuple(int(d) for d in gripper_dims))

    @property
    def _span(self) -> np.ndarray:
        span = self.high - self.low
        return np.where(span > 1e-12, span, 1.0)  # a constant dim normalises to -1 and maps back to low

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Actions (..., D) in original units -> (..., D) float64 in [-1, 1]."""
        x = np.asarray(actions, dtype=np.float64)
        z = np.clip(2.0 * (x - self.low) / self._span - 1.0, -1.0, 1.0)
        for d in self.gripper_dims:
            z[..., d] = np.where(x[..., d] > 0.5 * (self.low[d] + self.high[d]), 1.0, -1.0)
        return z

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised (..., D) -> (..., D) float64 in original units (values clipped to [-1, 1] first)."""
        z = np.clip(np.asarray(normalized, dtype=np.float64), -1.0, 1.0)
        x = (z + 1.0) * 0.5 * (self.high - self.low) + self.low
        for d in self.gripper_dims:
            x[..., d] = np.where(z[..., d] > 0.0, self.high[d], self.low[d])
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "gripper_dims": list(self.gripper_dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionNormalizer:
        return cls(
            low=np.asarray(data["low"], dtype=np.float64),
            high=np.asarray(data["high"], dtype=np.float64),
            gripper_dims=tuple(int(d) for d in data.get("gripper_dims", ())),
        )


class ActionTokenizer:
    """Base class: fit on chunks (N, H, D), encode to (N, L) int64 ids, decode back. See module docstring.

    Subclasses set ``kind``, implement ``_fit``, ``_encode_normalized``, ``_decode_normalized``,
    ``token_values`` and the (de)serialisation hooks; the base does validation, normalisation, specials.
    """

    kind: str = ""
    config_class: type  # the subclass's config dataclass, rebuilt from JSON on load

    def __init__(self) -> None:
        self.normalizer: ActionNormalizer | None = None
        self._horizon: int | None = None
        self._action_dim: int | None = None
        self._num_slots: int | None = None
        self._num_action_tokens: int | None = None
        self.fit_stats: dict[str, Any] = {}

    # ---- sizes and special ids ------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.normalizer is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"{type(self).__name__}: not fitted; call fit(chunks) with chunks (N, H, D) "
                "or load_action_tokenizer(directory) first"
            )

    @property
    def horizon(self) -> int:
        self._require_fitted()
        return int(self._horizon)

    @property
    def action_dim(self) -> int:
        self._require_fitted()
        return int(self._action_dim)

    @property
    def num_slots(self) -> int:
        self._require_fitted()
        return int(self._num_slots)

    @property
    def max_regular_tokens(self) -> int:
        """Most regular tokens the slots hold (FAST keeps one slot for eoa); more means truncation."""
        return self.num_slots

    @property
    def num_action_tokens(self) -> int:
        self._require_fitted()
        return int(self._num_action_tokens)

    @property
    def vocab_size(self) -> int:
        return self.num_action_tokens + NUM_SPECIAL_TOKENS

    @property
    def pad_id(self) -> int:
        return self.num_action_tokens

    @property
    def boa_id(self) -> int:
        return self.num_action_tokens + 1

    @property
    def eoa_id(self) -> int:
        return self.num_action_tokens + 2

    @property
    def mask_id(self) -> int:
        return self.num_action_tokens + 3

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.boa_id, self.eoa_id, self.mask_id)

    # ---- normalisation ----------------------------------------------------------------------------
    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Actions (..., D) in original units -> [-1, 1] (float64)."""
        self._require_fitted()
        return self.normalizer.normalize(actions)

    def unnormalize(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., D) -> original units (float64)."""
        self._require_fitted()
        return self.normalizer.unnormalize(actions)

    # ---- public interface -------------------------------------------------------------------------
    def fit(self, chunks: np.ndarray) -> ActionTokenizer:
        """Fit normaliser and tokenizer on chunks (N, H, D) float in original units; returns self."""
        chunks = _check_chunks(chunks, None, None, name="chunks")
        if chunks.ndim != 3:
            raise ValueError(f"chunks: expected shape (N, H, D) to fit, got {chunks.shape}")
        gripper_dims = tuple(getattr(self.config, "gripper_dims", ()))
        for d in gripper_dims:
            if not 0 <= d < chunks.shape[2]:
                raise ValueError(f"gripper_dims: expected indices in [0, {chunks.shape[2]}), got {d}")
        self._horizon, self._action_dim = int(chunks.shape[1]), int(chunks.shape[2])
        clip = float(getattr(self.config, "clip_percentile", 1.0))
        self.normalizer = ActionNormalizer.fit(
            chunks, gripper_dims=gripper_dims, quantiles=(clip, 100.0 - clip)
        )
        self._fit(self.normalizer.normalize(chunks))
        return self

    def encode(self, chunks: np.ndarray) -> np.ndarray:
        """Chunks (N, H, D) or (H, D) in original units -> int64 ids (N, L) or (L,)."""
        self._require_fitted()
        chunks = _check_chunks(chunks, self.horizon, self.action_dim, name="chunks")
        single = chunks.ndim == 2
        tokens = self._encode_normalized(self.normalize(chunks.reshape(-1, self.horizon, self.action_dim)))
        return tokens[0] if single else tokens

    def decode(self, tokens: np.ndarray) -> DecodedChunks:
        """Ids (N, L') or (L',) -> :class:`DecodedChunks` (actions (N, H, D), valid (N,)).

        Never raises on malformed content (unknown ids, specials in the wrong place, a missing eoa, a
        length other than L): those rows decode best effort and are flagged invalid. Raises ValueError
        only for a non-integer array or a rank other than 1 or 2.
        """
        self._require_fitted()
        tokens = np.asarray(tokens)
        if tokens.ndim not in (1, 2):
            raise ValueError(f"tokens: expected shape (N, L) or (L,), got {tokens.shape}")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens: expected an integer array, got dtype {tokens.dtype}")
        batch = tokens.reshape(1, -1) if tokens.ndim == 1 else tokens
        normalized, valid = self._decode_normalized(batch.astype(np.int64, copy=False))
        actions = self.unnormalize(normalized).astype(np.float32)
        if tokens.ndim == 1:
            actions, valid = actions[0], valid[0]
        return DecodedChunks(actions=actions, valid=np.asarray(valid, dtype=bool))

    def token_counts(self, chunks: np.ndarray) -> np.ndarray:
        """(N,) number of regular tokens each chunk needs before any truncation (bins: always H x D)."""
        self._require_fitted()
        chunks = _check_chunks(chunks, self.horizon, self.action_dim, name="chunks")
        return self._token_counts(self.normalize(chunks.reshape(-1, self.horizon, self.action_dim)))

    def token_values(self) -> np.ndarray:
        """(V, k) float: the natural value meaning of each id; special rows all NaN (module docstring)."""
        raise NotImplementedError

    def value_distances(self) -> np.ndarray:
        """(V, V) Euclidean distance between ``token_values()`` rows, missing FAST coefficients taken as 0.

        NaN in every row and column of a special id.
        """
        values = self.token_values()
        special = np.isnan(values).all(axis=1)
        filled = np.nan_to_num(values, nan=0.0)
        sq = (filled**2).sum(axis=1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * filled @ filled.T, 0.0))
        np.fill_diagonal(dist, 0.0)
        dist[special, :] = np.nan
        dist[:, special] = np.nan
        return dist

    def save(self, directory: str | os.PathLike) -> None:
        """Write the fitted tokenizer to ``directory`` (created): action_tokenizer.json (+ BPE file)."""
        from dfm_vla.utils.io import atomic_write_json

        self._require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_extra(directory)
        atomic_write_json(
            directory / TOKENIZER_FILE,
            {
                "kind": self.kind,
                "config": self._config_dict(),
                "horizon": self.horizon,
                "action_dim": self.action_dim,
                "num_slots": self.num_slots,
                "num_action_tokens": self.num_action_tokens,
                "normalizer": self.normalizer.to_dict(),
                "fit_stats": self.fit_stats,
                "state": self._state_dict(),
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ActionTokenizer:
        """Load a tokenizer saved by :meth:`save` (must be of this class's kind)."""
        tok = load_action_tokenizer(directory)
        if not isinstance(tok, cls):
            raise ValueError(f"{directory}: expected a saved '{cls.kind}' tokenizer, found '{tok.kind}'")
        return tok

    def __repr__(self) -> str:
        if not self.is_fitted:
            return f"{type(self).__name__}(unfitted, {self.config})"
        return (
            f"{type(self).__name__}(H={self.horizon}, D={self.action_dim}, num_slots={self.num_slots}, "
            f"vocab_size={self.vocab_size})"
        )

    # ---- subclass hooks -----------------------------------------------------------------------------
    config: Any

    def _fit(self, normalized: np.ndarray) -> None:
        raise NotImplementedError

    def _encode_normalized(self, normalized: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode_normalized(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _token_counts(self, normalized: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _config_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.config)

    def _state_dict(self) -> dict[str, Any]:
        return {}

    def _save_extra(self, directory: Path) -> None:
        pass

    def _load_state(self, state: dict[str, Any], directory: Path) -> None:
        pass


def _check_chunks(chunks: Any, horizon: int | None, action_dim: int | None, name: str) -> np.ndarray:
    """Validate an (N, H, D) or (H, D) finite float array; H and D checked when given."""
    expected = f"(N, {horizon or 'H'}, {action_dim or 'D'}) or ({horizon or 'H'}, {action_dim or 'D'})"
    arr = np.asarray(chunks)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
    if (horizon is not None and arr.shape[-2] != horizon) or (
        action_dim is not None and arr.shape[-1] != action_dim
    ):
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one chunk with H, D > 0, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        raise ValueError(f"{name}: expected finite values, found {arr[tuple(bad)]} at index {bad}")
    return arr


def load_action_tokenizer(directory: str | os.PathLike) -> ActionTokenizer:
    """Load a tokenizer saved by ``save`` from ``directory``, dispatching on the saved kind."""
    from dfm_vla.policy.bin_tokenizer import BinActionTokenizer
    from dfm_vla.policy.fast_tokenizer import FastActionTokenizer

    kinds: dict[str, type[ActionTokenizer]] = {"fast": FastActionTokenizer, "bins": BinActionTokenizer}
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: expected a tokenizer folder holding {TOKENIZER_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the file written by ActionTokenizer.save, not found")
    data = read_json(path)
    kind, sizes, norm = action_tokenizer_fields(path, data, sorted(kinds))
    cls = kinds[kind]
    try:
        tok = cls(cls.config_class(**field(path, data, "config", "dict")))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: 'config' does not describe a {kind!r} tokenizer ({err})") from None
    tok._horizon, tok._action_dim = sizes["horizon"], sizes["action_dim"]
    tok._num_slots, tok._num_action_tokens = sizes["num_slots"], sizes["num_action_tokens"]
    tok.normalizer = ActionNormalizer.from_dict(norm)
    tok.fit_stats = dict(field(path, data, "fit_stats", "dict", optional=True) or {})
    try:
        tok._load_state(field(path, data, "state", "dict", optional=True) or {}, directory)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: 'state' is corrupt ({type(err).__name__}: {err}); {REDO}") from None
    return tok


def __getattr__(name: str) -> Any:
    # Lazy re-exports (PEP 562): the subclasses import this module, so they cannot be imported at the top.
    if name == "FastActionTokenizer" or name == "FastTokenizerConfig":
        from dfm_vla.policy import fast_tokenizer

        return getattr(fast_tokenizer, name)
    if name == "BinActionTokenizer" or name == "BinTokenizerConfig":
        from dfm_vla.policy import bin_tokenizer

        return getattr(bin_tokenizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
