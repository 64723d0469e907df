"""Initialise a :class:`~dfm_vla.policy.model.DFMVLA` from a local UniVLA / Emu3 checkpoint (HF layout).

The folder holds ``config.json`` and ``model.safetensors`` or shards ``model-0000i-of-0000n.safetensors``
with ``model.safetensors.index.json`` (``{"weight_map": {key: shard}}``). Nothing is downloaded.

Key mapping (UniVLA's ``Emu3MoE`` and transformers' ``Emu3ForCausalLM`` share the names)::

    model.embed_tokens.weight          -> embed_tokens.weight (the shared 184,622-token table)
                                          + rows of our action tokens -> action_embed.weight
    model.layers.{i}.<...>             -> backbone.layers.{i}.<...>
    model.norm.weight                  -> backbone.norm.weight
    lm_head.weight                     -> rows of our action tokens -> action_head.weight
    action_layers.{i}.<...>            -> action_layers.layers.{i}.<...>  (UniVLA's 2-layer action module)

Keys of the checkpoint that we do not use (UniVLA's continuous-action ``action_projector`` and
``action_decoder``, ``lm_head`` rows of non-action tokens) are reported as unexpected; our parameters that the
checkpoint does not have (time embedding, state encoder, patch encoder, rate head, the action sub-module's
final norm) keep their fresh initialisation and are reported as missing. Both lists are by name.

How action tokens map into the 184,622-token vocabulary (UniVLA's convention, :class:`UniVLAActionMapping`):
UniVLA writes FAST/BPE action token k as vocabulary id ``last_vocab_idx - k`` with
``last_vocab_idx = pad_token_id - 1 = 151642``, i.e. the top of Qwen's 151,643 text ranks, counting down
(ids 150619..151642 for a 1,024-token FAST vocabulary); begin/end of action are the Emu3 special tokens
``boa_token_id = 151844`` and ``eoa_token_id = 151845``; pad is ``<|endoftext|>`` = 151643. Our action ids
(``policy/action_tokenizer.py``: regular 0..K-1, then pad, boa, eoa, mask) therefore take their embedding and
output rows from those vocabulary ids; ``mask`` (masked diffusion only) has no counterpart and starts as the
mean of the regular rows. VQ image codes c are ids ``151854 + c`` (32,768 codes up to 184,621).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfm_vla.policy.action_tokenizer import NUM_SPECIAL_TOKENS
from dfm_vla.policy.config import ModelConfig, get_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass
class UniVLAActionMapping:
    """Vocabulary ids of the action tokens in the UniVLA / Emu3 vocabulary (module docstring)."""

    last_vocab_idx: int = 151642
    pad_token_id: int = 151643
    boa_token_id: int = 151844
    eoa_token_id: int = 151845

    def vocab_ids(
        self, action_tokenizer: Any = None, action_vocab_size: int | None = None
    ) -> list[int | None]:
        """For each of our action ids, the vocabulary id it takes its rows from (None: no counterpart).

        Our layout (``policy/action_tokenizer.py``): K regular ids, then pad, boa, eoa, mask; K comes from
        ``action_tokenizer`` or from ``action_vocab_size`` (= K + 4).
        """
        if action_tokenizer is not None:
            k, vocab = action_tokenizer.num_action_tokens, action_tokenizer.vocab_size
        elif action_vocab_size is not None:
            k, vocab = action_vocab_size - NUM_SPECIAL_TOKENS, action_vocab_size
        else:
            raise ValueError("vocab_ids: pass the action tokenizer or the action vocabulary size")
        if k > self.last_vocab_idx + 1:
            raise ValueError(
                f"action tokenizer: {k} regular tokens do not fit below id {self.last_vocab_idx}"
            )
        if vocab != k + NUM_SPECIAL_TOKENS:
            raise ValueError(
                f"action vocabulary: expected {k} regular ids + {NUM_SPECIAL_TOKENS} specials, got {vocab}"
            )
        ids: list[int | None] = [self.last_vocab_idx - i for i in range(k)]
        return ids + [self.pad_token_id, self.boa_token_id, self.eoa_token_id, None]  # pad, boa, eoa, mask


@dataclass
class LoadReport:
    """What :func:`load_univla_weights` did, by parameter name."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ours, not in the checkpoint (fresh init kept)
    unexpected: list[str] = field(default_factory=list)  # the checkpoint's, not used
    action_rows: int = 0

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors ({self.action_rows} action-token rows mapped); "
            f"missing {len(self.missing)}: {_short(self.missing)}; unexpected {len(self.unexpected)}: "
            f"{_short(self.unexpected)}"
        )

    def __str__(self) -> str:
        return self.summary()


def _short(names: list[str], n: int = 6) -> str:
    return (
        ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "") if names else "none"
    )


def read_hf_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: not a folder; expected a UniVLA/Emu3 checkpoint in Hugging Face layout"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Hugging Face checkpoint folder has config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data.get("text_config", data) if data.get("model_type") == "emu3" else data


def weight_map(directory: str | os.PathLike) -> dict[str, Path]:
    """{tensor name: shard file} from the index (sharded) or the single safetensors file."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        if "weight_map" not in data:
            raise ValueError(f"{index}: expected a 'weight_map' {{tensor: shard file}}")
        mapping = {k: directory / v for k, v in data["weight_map"].items()}
        absent = sorted({str(p.name) for p in mapping.values() if not p.is_file()})
        if absent:
            raise FileNotFoundError(f"{index}: shard files named in the index are missing: {absent}")
        return mapping
    single = directory / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single for k in f.keys()}
    raise FileNotFoundError(f"{directory}: expected {INDEX_FILE} with shards, or {SINGLE_FILE}")


def univla_model_config(directory: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """Our ``univla-8b`` config with the sizes read from the checkpoint's config.json."""
    hf = read_hf_config(directory)
    rope = hf.get("rope_parameters") or {}
    sizes = dict(
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1e6))),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
        max_position_embeddings=hf.get("max_position_embeddings", 9216),
        full_vocab_size=hf["vocab_size"],
        text_vocab_size=hf["vocab_size"],
    )
    action_cfg = hf.get("action_config") if hf.get("action_experts") else None
    sizes["num_action_layers"] = int(action_cfg.get("num_hidden_layers", 2)) if action_cfg else 0
    return get_config("univla-8b", **{**sizes, **overrides})


def check_compatible(hf: dict[str, Any], config: ModelConfig) -> None:
    """Raise ValueError listing every size that differs between the checkpoint and our config."""
    pairs = {
        "hidden_size": (hf.get("hidden_size"), config.hidden_size),
        "num_hidden_layers": (hf.get("num_hidden_layers"), config.num_layers),
        "num_attention_heads": (hf.get("num_attention_heads"), config.num_heads),
        "num_key_value_heads": (
            hf.get("num_key_value_heads") or hf.get("num_attention_heads"),
            config.num_kv_heads,
        ),
        "intermediate_size": (hf.get("intermediate_size"), config.intermediate_size),
        "vocab_size": (hf.get("vocab_size"), config.full_vocab_size),
    }
    bad = [
        f"{name}: checkpoint {theirs}, model {ours}"
        for name, (theirs, ours) in pairs.items()
        if theirs != ours
    ]
    if bad:
        raise ValueError("UniVLA checkpoint does not match the model config: " + "; ".join(bad))


_RENAMES = [
    (re.compile(r"^model\.(?:text_model\.)?layers\.(\d+)\.(.+)$"), r"backbone.layers.\1.\2"),
    (re.compile(r"^model\.(?:text_model\.)?norm\.weight$"), "backbone.norm.weight"),
    (re.compile(r"^model\.(?:text_model\.)?embed_tokens\.weight$"), "embed_tokens.weight"),
    (re.compile(r"^action_layers\.(\d+)\.(.+)$"), r"action_layers.layers.\1.\2"),
]


def our_name(key: str) -> str | None:
    """Our parameter name for a checkpoint key (None: the key has no direct counterpart)."""
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


@torch.no_grad()
def load_univla_weights(
    model: Any,
    directory: str | os.PathLike,
    action_tokenizer: Any = None,
    mapping: UniVLAActionMapping | None = None,
) -> LoadReport:
    """Copy a UniVLA/Emu3 checkpoint's weights into ``model`` (module docstring) -> :class:`LoadReport`.

    Shards are read one at a time with safetensors (memory stays at one shard plus the model).
    """
    from safetensors import safe_open

    mapping = mapping or UniVLAActionMapping()
    directory = Path(directory)
    hf = read_hf_config(directory)
    check_compatible(hf, model.config)
    if action_tokenizer is not None and action_tokenizer.vocab_size != model.config.action_vocab_size:
        raise ValueError(
            f"action_tokenizer: vocab {action_tokenizer.vocab_size} does not match the model's "
            f"{model.config.action_vocab_size}"
        )
    files = weight_map(directory)
    params = dict(model.named_parameters())
    vocab_rows = mapping.vocab_ids(action_tokenizer, model.config.action_vocab_size)
    rows_known = torch.tensor([i for i, v in enumerate(vocab_rows) if v is not None], dtype=torch.long)
    rows_src = torch.tensor([v for v in vocab_rows if v is not None], dtype=torch.long)
    report = LoadReport()
    by_shard: dict[Path, list[str]] = {}
    for key, shard in files.items():
        by_shard.setdefault(shard, []).append(key)
    filled: set[str] = set()
    for shard, keys in sorted(by_shard.items()):
        with safe_open(str(shard), framework="pt") as f:
            for key in sorted(keys):
                name = our_name(key)
                if key in (
                    "model.embed_tokens.weight",
                    "model.text_model.embed_tokens.weight",
                    "lm_head.weight",
                ):
                    table = f.get_tensor(key)
                    target = "action_embed.weight" if key != "lm_head.weight" else "action_head.weight"
                    _copy_rows(params[target], table, rows_known, rows_src)
                    report.action_rows += len(rows_known)
                    report.loaded.append(f"{key} -> {target} (rows)")
                    filled.add(target)
                    if key == "lm_head.weight":
                        continue
                if name is None or name not in params:
                    report.unexpected.append(key)
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ValueError(
                        f"{shard.name}: {key} has shape {tuple(tensor.shape)}, our {name} expects "
                        f"{tuple(params[name].shape)}"
                    )
                params[name].copy_(tensor.to(params[name].dtype))
                report.loaded.append(f"{key} -> {name}")
                filled.add(name)
    unmatched = [i for i, v in enumerate(vocab_rows) if v is None]
    if unmatched and "action_embed.weight" in filled:
        regular = params["action_embed.weight"][: model.config.action_vocab_size - NUM_SPECIAL_TOKENS].mean(0)
        params["action_embed.weight"][unmatched] = regular
    report.missing = sorted(set(params) - filled)
    return report


def _copy_rows(param: torch.Tensor, table: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    if table.shape[1] != param.shape[1]:
        raise ValueError(
            f"vocabulary table width {table.shape[1]} does not match hidden size {param.shape[1]}"
        )
    if int(theirs.max()) >= table.shape[0]:
        raise ValueError(
            f"action token ids up to {int(theirs.max())} do not fit the {table.shape[0]}-row table"
        )
    param[ours] = table[theirs].to(param.dtype)
