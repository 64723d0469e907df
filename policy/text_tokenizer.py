"""Text tokenizer: tiktoken byte-pair encoding with a vocabulary file that ships with the checkpoint.

This is how Emu3 / UniVLA tokenise language (a tiktoken ``.tiktoken`` rank file and a list of special
tokens); nothing is downloaded. A tokenizer folder holds

- ``text_tokenizer.json``: ``{"vocab_file", "pat_str", "special_tokens": {name: id}, "pad_token",
  "bos_token", "eos_token"}``,
- the rank file named by ``vocab_file`` (one ``base64(token) rank`` per line, tiktoken's format).

The ``tiny`` model ships its own small vocabulary (``policy/assets/tiny_text.tiktoken``, 640 ranks),
trained by :func:`train_tiny_vocabulary` on ``policy/assets/tiny_text_corpus.txt`` (the LIBERO, CALVIN
and AgileX instructions). Regenerate with ``python -m dfm_vla.policy.text_tokenizer``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

CONFIG_FILE = "text_tokenizer.json"
ASSETS = Path(__file__).resolve().parent / "assets"
TINY_VOCAB_FILE = ASSETS / "tiny_text.tiktoken"
TINY_CORPUS_FILE = ASSETS / "tiny_text_corpus.txt"
TINY_VOCAB_SIZE = 640
# GPT-4 / Qwen style pre-tokenisation pattern (what Emu3's tokenizer uses).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
TINY_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")


class TextTokenizer:
    """Instruction string -> token ids (tiktoken). ``vocab_size`` counts ranks and special tokens."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pat_str: str = PAT_STR,
        pad_token: str = "<|pad|>",
        bos_token: str | None = None,
        eos_token: str | None = None,
        name: str = "dfm_vla_text",
        vocab_file: str = "text.tiktoken",
    ):
        import tiktoken

        for role, tok in (("pad_token", pad_token), ("bos_token", bos_token), ("eos_token", eos_token)):
            if tok is not None and tok not in special_tokens:
                raise ValueError(f"text tokenizer: {role} {tok!r} is not among the special tokens")
        self.ranks = ranks
        self.special_tokens = dict(special_tokens)
        self.pat_str = pat_str
        self.pad_token, self.bos_token, self.eos_token = pad_token, bos_token, eos_token
        self.vocab_file = vocab_file
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )

    @property
    def vocab_size(self) -> int:
        return max(max(self.ranks.values()), max(self.special_tokens.values(), default=0)) + 1

    @property
    def pad_id(self) -> int:
        return self.special_tokens[self.pad_token]

    def encode(self, text: str) -> list[int]:
        """Plain text (special-token strings are encoded as ordinary text, never as specials)."""
        if not isinstance(text, str):
            raise TypeError(f"language: expected a str, got {type(text).__name__}")
        ids = self.encoding.encode_ordinary(text)
        if self.bos_token is not None:
            ids = [self.special_tokens[self.bos_token], *ids]
        if self.eos_token is not None:
            ids = [*ids, self.special_tokens[self.eos_token]]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode([i for i in ids if i != self.pad_id])

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``text_tokenizer.json`` and the rank file into ``directory``."""
        from dfm_vla.utils.io import atomic_path, atomic_write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / self.vocab_file) as tmp:
            tmp.write_text(_ranks_to_text(self.ranks), encoding="utf-8")
        atomic_write_json(
            directory / CONFIG_FILE,
            {
                "vocab_file": self.vocab_file,
                "pat_str": self.pat_str,
                "special_tokens": self.special_tokens,
                "pad_token": self.pad_token,
                "bos_token": self.bos_token,
                "eos_token": self.eos_token,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        """Load a folder written by :meth:`save`; ValueError naming the file and field when it is bad."""
        from dfm_vla.policy.file_checks import REDO, check_type, field, read_json

        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: expected a text tokenizer config ({CONFIG_FILE}), not found")
        data = read_json(path)
        vocab_file = field(path, data, "vocab_file", "str")
        specials = field(path, data, "special_tokens", "dict")
        for name, value in specials.items():
            if check_type(path, f"special_tokens.{name}", value, "int") < 0:
                raise ValueError(f"{path}: 'special_tokens.{name}' is {value}, expected an id >= 0")
        for key in ("pat_str", "pad_token", "bos_token", "eos_token"):
            if data.get(key) is not None:
                check_type(path, key, data[key], "str")
        if not vocab_file or Path(vocab_file).name != vocab_file:
            raise ValueError(f"{path}: 'vocab_file' is {vocab_file!r}, expected a file name in {directory}")
        vocab = directory / vocab_file
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab}: the vocabulary file named in {path} is missing")
        ranks = load_ranks(vocab)
        clash = sorted(set(specials.values()) & set(ranks.values()))
        if clash:
            raise ValueError(f"{path}: 'special_tokens' reuse id {clash[0]}, a token of {vocab}; {REDO}")
        try:
            return cls(
                ranks=ranks,
                special_tokens=specials,
                pat_str=data.get("pat_str") or PAT_STR,
                pad_token=data.get("pad_token") or "<|pad|>",
                bos_token=data.get("bos_token"),
                eos_token=data.get("eos_token"),
                vocab_file=vocab_file,
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken rank file (``base64(token) rank`` per line)."""
    ranks: dict[bytes, int] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: corrupt vocabulary file, not UTF-8 text ({err})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token), int(rank)
        except ValueError as err:
            raise ValueError(f"{path}:{n}: expected 'base64token rank', got {line[:60]!r}") from err
        if token in ranks or rank < 0:
            raise ValueError(f"{path}:{n}: token repeated or rank negative ({line[:60]!r}); corrupt file")
        ranks[token] = rank
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: a rank appears twice; corrupt vocabulary file")
    if not ranks:
        raise ValueError(f"{path}: empty vocabulary file")
    return ranks


def _ranks_to_text(ranks: dict[bytes, int]) -> str:
    return "".join(
        f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=_rank)
    )


def _rank(item: tuple[bytes, int]) -> int:
    return item[1]


def tiny_text_tokenizer() -> TextTokenizer:
    """The small tokenizer that ships with the package (640 ranks + pad/bos/eos)."""
    ranks = load_ranks(TINY_VOCAB_FILE)
    specials = {tok: len(ranks) + i for i, tok in enumerate(TINY_SPECIALS)}
    return TextTokenizer(ranks, specials, pad_token="<|pad|>", vocab_file="text.tiktoken")


def emu3_text_tokenizer(vocab_file: str | os.PathLike, pad_id: int = 151643) -> TextTokenizer:
    """Emu3 / UniVLA text tokenizer from its shipped rank file (Qwen layout: 151,643 ranks, then
    ``<|endoftext|>`` = 151643 as pad, ``<|im_start|>``, ``<|im_end|>`` and ``<|extra_i|>`` tokens)."""
    ranks = load_ranks(vocab_file)
    base = len(ranks)
    specials = {"<|endoftext|>": base, "<|im_start|>": base + 1, "<|im_end|>": base + 2}
    specials.update({f"<|extra_{i}|>": base + 3 + i for i in range(205)})
    if specials["<|endoftext|>"] != pad_id:
        raise ValueError(f"{vocab_file}: expected {pad_id} ranks before the special tokens, got {base}")
    return TextTokenizer(ranks, specials, pad_token="<|endoftext|>", vocab_file=Path(vocab_file).name)


def train_tiny_vocabulary(corpus: str, vocab_size: int = TINY_VOCAB_SIZE) -> dict[bytes, int]:
    """Byte-level BPE ranks (256 bytes + merges) trained on ``corpus`` with tiktoken's reference trainer."""
    from tiktoken._educational import bpe_train

    return bpe_train(corpus, vocab_size, PAT_STR, visualise=None)


def pad_batch(token_lists: list[list[int]], pad_id: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the batch's longest list: (ids (B, T) int64, valid (B, T) bool)."""
    length = max(1, max((len(t) for t in token_lists), default=1))
    if length > max_len:
        raise ValueError(f"language: expected at most {max_len} tokens, got {length}")
    ids = np.full((len(token_lists), length), pad_id, dtype=np.int64)
    valid = np.zeros((len(token_lists), length), dtype=bool)
    for i, toks in enumerate(token_lists):
        ids[i, : len(toks)] = toks
        valid[i, : len(toks)] = True
    return ids, valid


def _main() -> None:
    corpus = TINY_CORPUS_FILE.read_text(encoding="utf-8")
    ranks = train_tiny_vocabulary(corpus)
    TINY_VOCAB_FILE.write_text(_ranks_to_text(ranks), encoding="utf-8")
    print(f"wrote {TINY_VOCAB_FILE} ({len(ranks)} ranks)")


if __name__ == "__main__":
    _main()


__all__ = ["TextTokenizer", "tiny_text_tokenizer", "emu3_text_tokenizer", "pad_batch"]
