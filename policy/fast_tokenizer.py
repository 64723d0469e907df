"""FAST action tokenizer (Pertsch et al. 2025): DCT per dimension, scale, round, byte-pair encoding.

Encoding one chunk (H, D) in original units:

1. normalise to [-1, 1] (1st/99th percentiles; gripper dims optionally binary);
2. DCT-II over time per dimension (``scipy.fft.dct``, orthonormal), multiply by ``scale``, round;
3. flatten the (H, D) integer coefficients low frequencies first: (f0, d0), (f0, d1), ..., (f1, d0), ...;
4. map each integer c to one character ``chr(CHAR_OFFSET + c - min_coeff)``, where [min_coeff, max_coeff]
   is the coefficient range seen when fitting (saved; coefficients outside it are clipped on encode);
5. byte-pair encode the string with a BPE model trained by the `tokenizers` library (``bpe_vocab_size``
   ids, the coefficient alphabet included);
6. fill the L slots: the BPE ids, then eoa, then pad (truncated to L - 1 ids if longer).

Decoding inverts each step. Malformed sequences (eoa missing, non-pad ids after eoa, specials or unknown
ids among the tokens, a coefficient count other than H x D) decode best effort (unknown ids skipped,
missing coefficients taken as 0, extra ones dropped) and are flagged invalid. A chunk truncated on
encode has fewer than H x D coefficients, so it decodes (without its highest frequencies) flagged invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.policy.action_tokenizer import ActionTokenizer

BPE_FILE = "bpe_tokenizer.json"
CHAR_OFFSET = 0x100  # first character of the coefficient alphabet (skips ASCII control and whitespace)


@dataclass
class FastTokenizerConfig:
    scale: float = 10.0  # DCT coefficients are multiplied by this before rounding (UniVLA: 50 on CALVIN)
    bpe_vocab_size: int = 1024  # regular ids, coefficient alphabet included
    slot_quantile: float = 0.99  # num_slots - 1 = this quantile of BPE token counts on the fit set
    num_slots: int | None = None  # fixed L (eoa included) instead of the quantile rule
    gripper_dims: tuple[int, ...] = ()  # dims kept binary by the normaliser
    max_fit_chunks: int | None = None  # train BPE on a random subset of this size (drawn with seed)
    seed: int = 0

    def __post_init__(self) -> None:
        self.gripper_dims = tuple(int(d) for d in self.gripper_dims)
        if not self.scale > 0:
            raise ValueError(f"scale: expected a positive number, got {self.scale}")
        if int(self.bpe_vocab_size) < 2:
            raise ValueError(f"bpe_vocab_size: expected an integer >= 2, got {self.bpe_vocab_size}")
        if not 0.0 < self.slot_quantile <= 1.0:
            raise ValueError(f"slot_quantile: expected a value in (0, 1], got {self.slot_quantile}")
        if self.num_slots is not None and int(self.num_slots) < 2:
            raise ValueError(f"num_slots: expected None or an integer >= 2, got {self.num_slots}")
        if self.max_fit_chunks is not None and int(self.max_fit_chunks) < 1:
            raise ValueError(f"max_fit_chunks: expected None or an integer >= 1, got {self.max_fit_chunks}")


class FastActionTokenizer(ActionTokenizer):
    """FAST: DCT + BPE action tokens in a fixed number of slots ``[tokens, eoa, pad...]``."""

    kind = "fast"
    config_class = FastTokenizerConfig

    def __init__(self, config: FastTokenizerConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise ValueError("FastActionTokenizer: pass either a config or keyword arguments, not both")
        self.config = config if config is not None else FastTokenizerConfig(**kwargs)
        self.bpe = None  # tokenizers.Tokenizer once fitted
        self.min_coeff = 0
        self.max_coeff = 0
        self._token_coeffs: list[np.ndarray] = []  # id -> its integer coefficients

    @property
    def max_regular_tokens(self) -> int:
        return self.num_slots - 1

    # ---- coefficients <-> strings ------------------------------------------------------------------
    def coefficients(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised chunks (N, H, D) -> (N, H*D) int64 scaled DCT coefficients, low frequencies first."""
        from scipy.fft import dct

        coeffs = np.rint(dct(normalized, type=2, axis=1, norm="ortho") * self.config.scale)
        return coeffs.astype(np.int64).reshape(normalized.shape[0], -1)

    def _from_coefficients(self, coeffs: np.ndarray) -> np.ndarray:
        """(N, H*D) coefficients (int or float) -> (N, H, D) normalised chunks."""
        from scipy.fft import idct

        grid = coeffs.reshape(-1, self.horizon, self.action_dim) / self.config.scale
        return idct(grid, type=2, axis=1, norm="ortho")

    def _strings(self, coeffs: np.ndarray) -> list[str]:
        alphabet = np.array([chr(CHAR_OFFSET + i) for i in range(self.max_coeff - self.min_coeff + 1)])
        index = np.clip(coeffs, self.min_coeff, self.max_coeff) - self.min_coeff
        return ["".join(row) for row in alphabet[index]]

    def _build_tables(self) -> None:
        vocab = self.bpe.get_vocab()
        coeffs: list[np.ndarray] = [np.zeros(0, np.int64)] * len(vocab)
        for text, idx in vocab.items():
            coeffs[idx] = np.array([ord(ch) - CHAR_OFFSET + self.min_coeff for ch in text], dtype=np.int64)
        self._token_coeffs = coeffs
        self._num_action_tokens = len(vocab)

    # ---- hooks ------------------------------------------------------------------------------------
    def _fit(self, normalized: np.ndarray) -> None:
        from tokenizers import Tokenizer, models, trainers

        cfg = self.config
        coeffs = self.coefficients(normalized)
        train = coeffs
        if cfg.max_fit_chunks is not None and len(coeffs) > cfg.max_fit_chunks:
            rng = np.random.default_rng(cfg.seed)
            train = coeffs[np.sort(rng.choice(len(coeffs), size=int(cfg.max_fit_chunks), replace=False))]
        self.min_coeff, self.max_coeff = int(train.min()), int(train.max())
        alphabet_size = self.max_coeff - self.min_coeff + 1
        if alphabet_size > cfg.bpe_vocab_size:
            raise ValueError(
                f"bpe_vocab_size: expected at least the coefficient alphabet size {alphabet_size} "
                f"(coefficients in [{self.min_coeff}, {self.max_coeff}] at scale {cfg.scale}), "
                f"got {cfg.bpe_vocab_size}; raise it or lower the scale"
            )
        bpe = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=int(cfg.bpe_vocab_size),
            initial_alphabet=[chr(CHAR_OFFSET + i) for i in range(alphabet_size)],
            show_progress=False,
        )
        bpe.train_from_iterator(self._strings(train), trainer=trainer)
        self.bpe = bpe
        self._build_tables()

        counts = self._token_counts(normalized)
        if cfg.num_slots is not None:
            self._num_slots = int(cfg.num_slots)
        else:
            self._num_slots = int(np.ceil(np.quantile(counts, cfg.slot_quantile))) + 1
        self.fit_stats = {
            "num_chunks": int(len(coeffs)),
            "num_bpe_training_chunks": int(len(train)),
            "coefficient_range": [self.min_coeff, self.max_coeff],
            "mean_tokens_per_chunk": float(counts.mean()),
            "max_tokens_per_chunk": int(counts.max()),
            "truncation_rate": float((counts > self._num_slots - 1).mean()),
        }

    def _bpe_ids(self, normalized: np.ndarray) -> list[list[int]]:
        return [enc.ids for enc in self.bpe.encode_batch(self._strings(self.coefficients(normalized)))]

    def _token_counts(self, normalized: np.ndarray) -> np.ndarray:
        return np.array([len(ids) for ids in self._bpe_ids(normalized)], dtype=np.int64)

    def _encode_normalized(self, normalized: np.ndarray) -> np.ndarray:
        slots = self.num_slots
        out = np.full((normalized.shape[0], slots), self.pad_id, dtype=np.int64)
        for row, ids in zip(out, self._bpe_ids(normalized), strict=True):
            ids = ids[: slots - 1]
            row[: len(ids)] = ids
            row[len(ids)] = self.eoa_id
        return out

    def _decode_normalized(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = tokens.shape[0]
        size = self.horizon * self.action_dim
        coeffs = np.zeros((n, size), dtype=np.float64)
        valid = np.ones(n, dtype=bool)
        regular_count = self.num_action_tokens
        for i, row in enumerate(tokens):
            if row.size and row[0] == self.boa_id:
                row = row[1:]
            eoa = np.flatnonzero(row == self.eoa_id)
            if eoa.size == 0:
                valid[i] = False
                body = row
            else:
                body, tail = row[: eoa[0]], row[eoa[0] + 1 :]
                if not (tail == self.pad_id).all():
                    valid[i] = False
            regular = (body >= 0) & (body < regular_count)
            if not regular.all():
                valid[i] = False
                body = body[regular]
            if body.size == 0:
                valid[i] = False
                continue
            values = np.concatenate([self._token_coeffs[t] for t in body])
            if values.size != size:
                valid[i] = False
                values = values[:size]
            coeffs[i, : values.size] = values
        return self._from_coefficients(coeffs), valid

    def token_values(self) -> np.ndarray:
        """(V, k): each regular id's coefficients / scale (normalised DCT units), NaN-padded; specials NaN."""
        k = max(len(c) for c in self._token_coeffs)
        values = np.full((self.vocab_size, k), np.nan)
        for idx, c in enumerate(self._token_coeffs):
            values[idx, : len(c)] = c / self.config.scale
        return values

    def token_lengths(self) -> np.ndarray:
        """(num_action_tokens,) number of DCT coefficients each regular id stands for."""
        return np.array([len(c) for c in self._token_coeffs], dtype=np.int64)

    def _state_dict(self) -> dict[str, Any]:
        return {"min_coeff": self.min_coeff, "max_coeff": self.max_coeff, "char_offset": CHAR_OFFSET}

    def _save_extra(self, directory: Path) -> None:
        from dfm_vla.utils.io import atomic_write_text

        atomic_write_text(directory / BPE_FILE, self.bpe.to_str())

    def _load_state(self, state: dict[str, Any], directory: Path) -> None:
        from tokenizers import Tokenizer

        if state.get("char_offset", CHAR_OFFSET) != CHAR_OFFSET:
            raise ValueError(f"{directory}: char_offset expected {CHAR_OFFSET}, got {state['char_offset']}")
        self.min_coeff, self.max_coeff = int(state["min_coeff"]), int(state["max_coeff"])
        path = directory / BPE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: expected the BPE file written by FastActionTokenizer.save")
        try:
            self.bpe = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: corrupt BPE tokenizer file ({err})") from err
        expected = self._num_action_tokens
        self._build_tables()
        if self._num_action_tokens != expected:
            raise ValueError(
                f"{path}: expected a BPE vocabulary of {expected} ids, found {self._num_action_tokens}"
            )
