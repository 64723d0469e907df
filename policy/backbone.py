"""The transformer trunk: Hugging Face transformers' Emu3 decoder layers (the Llama block UniVLA uses).

RMSNorm, rotary position embeddings (theta 1e6), grouped-query attention and a SwiGLU MLP all come from
``transformers.models.emu3.modeling_emu3``; this module only drives the layers with our own attention
masks and KV cache. Parameter names match the UniVLA / Emu3 checkpoint under ``model.`` (``layers.N...``,
``norm.weight``), which keeps :mod:`dfm_vla.policy.univla_loader` a plain renaming.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dfm_vla.policy.config import ModelConfig


def hf_text_config(config: ModelConfig, num_layers: int | None = None) -> Any:
    """The ``Emu3TextConfig`` for our blocks (vocabulary unused here: embeddings live in the model)."""
    from transformers.models.emu3.configuration_emu3 import Emu3TextConfig

    hf = Emu3TextConfig(
        vocab_size=config.full_vocab_size or 184622,  # unused: the embeddings live in DFMVLA
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=num_layers if num_layers is not None else config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        attention_dropout=config.dropout,
        pad_token_id=0,  # unused here (token ids are handled by DFMVLA); keeps HF's range check quiet
        bos_token_id=0,
        eos_token_id=0,
    )
    hf._attn_implementation = _attn_implementation(config.attn_implementation)
    return hf


def _attn_implementation(requested: str) -> str:
    """sdpa or eager. Our block masks (prefix-LM, causal over slots) are not expressible in flash-attn's
    padding-only interface, so "flash_attention_2" runs as sdpa, which picks its own fused CUDA kernels."""
    if requested == "flash_attention_2":
        return "sdpa"
    if requested not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation: expected sdpa, eager or flash_attention_2, got {requested!r}")
    return requested


class DecoderStack(nn.Module):
    """A stack of Emu3 decoder layers with a final RMSNorm and rotary embeddings.

    ``forward(hidden (B, S, H), position_ids (B, S), mask (B, 1, S, K) bool, cache=None) -> (B, S, H)``.
    ``cache`` is any object with ``update(k, v, layer_idx, kwargs=None) -> (k_all, v_all)``
    (:class:`dfm_vla.policy.kv_cache.PrefixKVCache`); K = the length of the keys it returns.
    """

    def __init__(self, config: ModelConfig, num_layers: int, final_norm: bool = True):
        super().__init__()
        from transformers.models.emu3.modeling_emu3 import Emu3DecoderLayer, Emu3RMSNorm, Emu3RotaryEmbedding

        self.hf_config = hf_text_config(config, num_layers)
        self.layers = nn.ModuleList([Emu3DecoderLayer(self.hf_config, i) for i in range(num_layers)])
        self.norm = Emu3RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if final_norm else nn.Identity()
        self.rotary_emb = Emu3RotaryEmbedding(config=self.hf_config)
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer in the backward pass (activation checkpointing) to save memory."""
        import functools

        from torch.utils.checkpoint import checkpoint

        for layer in self.layers:
            layer.gradient_checkpointing = enabled
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        self.gradient_checkpointing = enabled

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any = None,
    ) -> torch.Tensor:
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        mask = _sdpa_mask(mask, hidden.dtype, self.hf_config._attn_implementation)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                position_embeddings=position_embeddings,
            )
        return self.norm(hidden)


def _sdpa_mask(mask: torch.Tensor | None, dtype: torch.dtype, implementation: str) -> torch.Tensor | None:
    """sdpa takes the bool mask as is; the eager path wants an additive float mask."""
    if mask is None or implementation != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
