"""The vision-language-action model: clean prefix + noisy action slots -> logits over the action vocabulary.

Sequence (one row of a batch)::

    [language tokens][image tokens per view][state tokens][boa][L action slots]
     \\____________________ prefix (clean, P tokens) ___________/ \\__ x_t (B, L) __/

Text and VQ image ids are embedded by the token table (``embed_tokens``; the shared 184,622-token table at
UniVLA scale); patch images by :class:`~dfm_vla.policy.image_encoder.PatchImageEncoder`; state by
:class:`~dfm_vla.policy.state_encoder.StateEncoder`; action tokens (and boa) by ``action_embed`` (the table
the
DFM metric path measures distances in), plus an embedding of the time t (except for the AR objective).
Positions (RoPE) count valid tokens only, so padding inside the prefix does not shift anything.

Outputs: ``model(prefix, x_t, t)`` -> logits (B, L, V_action); with the rate head (DFM+Head) a tuple
(logits, :class:`~dfm_vla.policy.rate_head.RateHeadOutput`), the form :mod:`dfm_vla.policy.losses` expects.

Decoding entry points: :meth:`DFMVLA.prefill` encodes the prefix once into a
:class:`~dfm_vla.policy.kv_cache.PrefixKVCache`; :meth:`DFMVLA.denoise_cached` runs only the action slots
against it (exact for the prefix-LM mask); :meth:`DFMVLA.make_denoiser` packages this as the
``(x_t, t) -> logits`` function the samplers take; :meth:`DFMVLA.ar_stepper` is the AR decoder's stepper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfm_vla.policy import attention_mask as masks
from dfm_vla.policy.backbone import DecoderStack
from dfm_vla.policy.config import ModelConfig
from dfm_vla.policy.kv_cache import AdaptiveCacheDenoiser, PrefixKVCache
from dfm_vla.policy.processor import PrefixInputs

# UniVLA (Emu3) places the FAST/BPE action tokens at the top of the text vocabulary: BPE token k has
# vocabulary id LAST_VOCAB_IDX - k (LAST_VOCAB_IDX = pad id - 1 = 151642); boa and eoa are Emu3 extra
# tokens. See dfm_vla.policy.univla_loader for the mapping onto our action table.


class TimeEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, hidden): sinusoidal features of 1000 t, then a SiLU MLP."""

    def __init__(self, hidden_size: int, num_features: int = 256):
        super().__init__()
        self.num_features = num_features
        self.mlp = nn.Sequential(
            nn.Linear(num_features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.num_features // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = 1000.0 * t.float()[:, None] * freqs[None]
        feats = torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


@dataclass
class PrefixState:
    """The encoded prefix of one batch, kept across the refinement calls of one chunk.

    hidden: (B, P, H) prefix input embeddings (re-used by full passes); valid: (B, P) bool;
    positions: (B, P) long; num_valid: (B,) long; cache / action_cache: KV buffers of the backbone and of
    the action sub-module (AR only). ``prefix_calls`` counts prefix encodings done so far.
    """

    hidden: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    num_valid: torch.Tensor
    cache: PrefixKVCache
    action_cache: PrefixKVCache | None
    num_slots: int
    prefix_calls: int = 0

    @property
    def prefix_len(self) -> int:
        return int(self.hidden.shape[1])


class DFMVLA(nn.Module):
    """See the module docstring. Build with ``DFMVLA(config)`` once the config's data sizes are filled."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_sizes(config)
        self.config = config
        hidden = config.hidden_size
        table = config.full_vocab_size or (config.text_vocab_size if config.use_text else 0)
        self.embed_tokens = nn.Embedding(table, hidden) if table else None
        self.image_encoder = None
        if config.image_views and config.image_encoder == "patch":
            from dfm_vla.policy.image_encoder import PatchImageEncoder

            self.image_encoder = PatchImageEncoder(config)
        self.state_encoder = None
        if config.state_dim:
            from dfm_vla.policy.state_encoder import StateEncoder

            self.state_encoder = StateEncoder(config.state_dim, config.state_tokens, hidden)
        self.action_embed = nn.Embedding(config.action_vocab_size, hidden)
        self.time_embed = TimeEmbedding(hidden) if config.objective != "ar" else None
        self.backbone = DecoderStack(config, config.num_layers)
        self.action_layers = (
            DecoderStack(config, config.num_action_layers) if config.num_action_layers else None
        )
        self.action_head = nn.Linear(hidden, config.action_vocab_size, bias=False)
        self.rate_head = None
        if config.rate_head:
            from dfm_vla.policy.rate_head import RateHead, RateHeadConfig

            self.rate_head = RateHead(RateHeadConfig(hidden_size=hidden, vocab_size=config.action_vocab_size))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)

    # ---- bookkeeping -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.action_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.action_embed.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def boa_id(self) -> int:
        return self.config.action_vocab_size - 3  # the action tokenizer's layout: pad, boa, eoa, mask

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.backbone.set_gradient_checkpointing(enabled)
        if self.action_layers is not None:
            self.action_layers.set_gradient_checkpointing(enabled)

    def save_pretrained(
        self,
        directory: Any,
        action_tokenizer: Any,
        text_tokenizer: Any = None,
        norm_stats: Any = None,
        extra: Any = None,
    ) -> Any:
        """Write a checkpoint folder (see :mod:`dfm_vla.policy.checkpoint`)."""
        from dfm_vla.policy.checkpoint import save_pretrained

        return save_pretrained(directory, self, action_tokenizer, text_tokenizer, norm_stats, extra)

    @classmethod
    def from_pretrained(cls, directory: Any, device: Any = "cpu", dtype: Any = None) -> DFMVLA:
        """The model of a checkpoint folder (tokenizers and statistics: ``checkpoint.load_pretrained``)."""
        from dfm_vla.policy.checkpoint import load_pretrained

        return load_pretrained(directory, device=device, dtype=dtype).model

    def metric_path(self, action_tokenizer: Any, settings: dict[str, Any] | None = None) -> Any:
        """The DFM metric path over this model's action tokens (see :mod:`probability_path`).

        settings: how the path is measured, as training saves it in a checkpoint's
        ``extra["metric_path"]``: ``distance`` ("embedding": this model's action-token embeddings;
        "value": the tokenizer's value-space distances), ``metric``, ``normalize``, ``c``, ``alpha``.
        Missing keys take MetricPath's defaults.
        """
        from dfm_vla.policy.probability_path import MetricPath

        kwargs = dict(settings or {})
        distance = kwargs.pop("distance", "embedding")
        if distance not in ("embedding", "value"):
            raise ValueError(
                f"metric_path settings['distance']: expected 'embedding' or 'value', got {distance!r}"
            )
        weights = None
        if distance == "embedding":
            weights = self.action_embed.weight
            if hasattr(weights, "full_tensor"):  # FSDP2 DTensor: gather the full table (a collective)
                weights = weights.full_tensor()
            weights = weights.detach().float().cpu()
        return MetricPath.from_tokenizer(action_tokenizer, weights, **kwargs)

    # ---- embeddings ------------------------------------------------------------------------------------
    def embed_prefix(self, prefix: PrefixInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> hidden (B, P, H), valid (B, P) bool, positions (B, P) long (counting valid tokens only)."""
        cfg = self.config
        batch = prefix.batch_size
        device = self.device
        parts: list[torch.Tensor] = []
        valids: list[torch.Tensor] = []

        def add(h: torch.Tensor, valid: torch.Tensor | None = None) -> None:
            parts.append(h)
            valids.append(
                valid if valid is not None else torch.ones(h.shape[:2], dtype=torch.bool, device=device)
            )

        if cfg.use_text:
            if prefix.text_ids is None:
                raise ValueError("prefix.text_ids: the config uses text but the batch has none")
            add(self.embed_tokens(prefix.text_ids.to(device)), prefix.text_valid.to(device))
        if cfg.image_views:
            if cfg.image_encoder == "patch":
                if prefix.images is None:
                    raise ValueError(
                        f"prefix.images: the config uses views {cfg.image_views} but the batch has none"
                    )
                add(self.image_encoder(prefix.images.to(device)))
            else:
                if prefix.image_tokens is None:
                    raise ValueError(
                        "prefix.image_tokens: the config uses VQ image tokens but the batch has none"
                    )
                add(self.embed_tokens(prefix.image_tokens.to(device).flatten(1)))
        if cfg.state_dim:
            if prefix.state is None:
                raise ValueError(
                    f"prefix.state: the config reads state keys {cfg.state_keys} but the batch has none"
                )
            add(self.state_encoder(prefix.state.to(device)))
        boa = torch.full((batch, 1), self.boa_id, dtype=torch.long, device=device)
        add(self.action_embed(boa))
        hidden = torch.cat(parts, dim=1)
        valid = torch.cat(valids, dim=1)
        positions = (valid.long().cumsum(1) - 1).clamp_min(0)
        return hidden, valid, positions

    def embed_actions(self, x_t: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        """x_t (B, L) long, t (B,) -> (B, L, H)."""
        if x_t.dtype != torch.long or x_t.ndim != 2:
            raise ValueError(f"x_t: expected (B, L) long token ids, got {x_t.dtype} {tuple(x_t.shape)}")
        h = self.action_embed(x_t)
        if self.time_embed is not None:
            if t is None:
                raise ValueError("t: expected (B,) times for this objective")
            t = torch.as_tensor(t, device=h.device, dtype=torch.float32).reshape(-1).expand(x_t.shape[0])
            h = h + self.time_embed(t)[:, None, :]
        return h

    def _slot_positions(self, num_valid: torch.Tensor, start: int, count: int) -> torch.Tensor:
        return num_valid[:, None] + torch.arange(start, start + count, device=num_valid.device)[None]

    def _tail(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: PrefixKVCache | None = None,
        written: int = 0,
    ) -> Any:
        """Action sub-module (if any) and heads over the slots' hidden states (B, n, H)."""
        if self.action_layers is not None:
            n = hidden.shape[1]
            if cache is not None:  # AR: one new slot against the slots written so far
                mask = torch.ones(hidden.shape[0], 1, n, written + n, dtype=torch.bool, device=hidden.device)
            else:
                full = torch.ones(hidden.shape[0], 0, dtype=torch.bool, device=hidden.device)
                mode = "causal_actions" if self.config.attention == "causal_actions" else "bidirectional"
                mask = masks.full_mask(full, n, mode)
            hidden = self.action_layers(hidden, positions, mask, cache)
        logits = self.action_head(hidden)
        if self.rate_head is not None:
            return logits, self.rate_head(hidden)
        return logits

    # ---- training / uncached forward ---------------------------------------------------------------------
    def forward(self, prefix: PrefixInputs, x_t: torch.Tensor, t: torch.Tensor | None = None) -> Any:
        """Full pass: prefix (B rows), x_t (B, L) long, t (B,) -> logits (B, L, V) [, RateHeadOutput]."""
        h_p, valid, pos_p = self.embed_prefix(prefix)
        return self._full_pass(h_p, valid, pos_p, x_t, t, cache=None)

    def _full_pass(self, h_p, valid, pos_p, x_t, t, cache: PrefixKVCache | None) -> Any:
        if x_t.shape[0] != h_p.shape[0]:
            raise ValueError(f"x_t: expected batch {h_p.shape[0]} (the prefix's), got {x_t.shape[0]}")
        num_slots = x_t.shape[1]
        h_a = self.embed_actions(x_t.to(h_p.device), t)
        num_valid = valid.sum(1)
        pos_a = self._slot_positions(num_valid, 0, num_slots)
        hidden = torch.cat([h_p, h_a], dim=1)
        positions = torch.cat([pos_p, pos_a], dim=1)
        mask = masks.full_mask(valid, num_slots, self.config.attention)
        if cache is not None:
            cache.mode = "full"
        out = self.backbone(hidden, positions, mask, cache)
        return self._tail(out[:, h_p.shape[1] :], pos_a)

    # ---- cached decoding ----------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prefix: PrefixInputs, num_slots: int | None = None) -> PrefixState:
        """Encode the prefix once. prefix-LM / causal: runs the backbone over the prefix and caches its keys
        and values (one model call). Bidirectional: only embeds; the first (full) call fills the cache."""
        num_slots = num_slots or self.config.num_action_slots
        h_p, valid, pos_p = self.embed_prefix(prefix)
        batch, prefix_len = valid.shape
        cfg = self.config

        def new_cache(layers: int, plen: int) -> PrefixKVCache:
            return PrefixKVCache(
                layers, batch, cfg.num_kv_heads, cfg.head_dim, plen, num_slots, h_p.dtype, h_p.device
            )

        state = PrefixState(
            hidden=h_p,
            valid=valid,
            positions=pos_p,
            num_valid=valid.sum(1),
            cache=new_cache(cfg.num_layers, prefix_len),
            action_cache=new_cache(cfg.num_action_layers, 0) if cfg.num_action_layers else None,
            num_slots=num_slots,
        )
        if cfg.attention != "bidirectional":
            state.cache.mode = "prefix"
            self.backbone(h_p, pos_p, masks.prefix_mask(valid), state.cache)
            state.prefix_calls += 1
        return state

    @torch.no_grad()
    def denoise_cached(self, state: PrefixState, x_t: torch.Tensor, t: torch.Tensor | None) -> Any:
        """Only the L slots against the cached prefix -> logits (B, L, V) [, RateHeadOutput]."""
        num_slots = x_t.shape[1]
        h_a = self.embed_actions(x_t.to(self.device), t)
        pos_a = self._slot_positions(state.num_valid, 0, num_slots)
        mask = masks.slots_mask(state.valid, num_slots, self.config.attention)
        state.cache.mode = "slots"
        out = self.backbone(h_a, pos_a, mask, state.cache)
        return self._tail(out, pos_a)

    @torch.no_grad()
    def denoise_full(
        self, state: PrefixState, x_t: torch.Tensor, t: torch.Tensor | None, write_cache: bool
    ) -> Any:
        """Prefix and slots together (exact in every mode); ``write_cache`` refreshes the prefix cache."""
        if write_cache:
            state.prefix_calls += 1
        return self._full_pass(
            state.hidden, state.valid, state.positions, x_t, t, cache=state.cache if write_cache else None
        )

    def make_denoiser(
        self,
        prefix: PrefixInputs | PrefixState,
        cache: str = "prefix",
        refresh_every: int = 4,
        refresh_fraction: float = 0.25,
        measure_drift: bool = False,
    ) -> Denoiser:
        """The sampler's ``(x_t, t) -> logits`` for one batch of prefixes.

        cache: ``"prefix"`` (exact prefix cache; prefix-LM mode), ``"none"`` (re-encode the prefix at every
        call), ``"adaptive"`` (bidirectional mode: refresh the prefix every ``refresh_every`` calls or when
        more than ``refresh_fraction`` of the slots changed).
        """
        if cache not in ("prefix", "none", "adaptive"):
            raise ValueError(f"cache: expected 'prefix', 'none' or 'adaptive', got {cache!r}")
        if cache == "prefix" and self.config.attention == "bidirectional":
            raise ValueError(
                "cache 'prefix' is exact only for the prefix-LM mask; this model is bidirectional: use "
                "cache='adaptive' (approximate) or cache='none'"
            )
        if cache == "adaptive" and self.config.attention != "bidirectional":
            raise ValueError(
                "cache 'adaptive' is for the bidirectional mask; prefix-LM models use cache='prefix'"
            )
        if isinstance(prefix, PrefixState):
            state = prefix
        elif cache == "none":
            state = self._embed_only_state(prefix)
        else:
            state = self.prefill(prefix)
        return Denoiser(self, state, cache, refresh_every, refresh_fraction, measure_drift)

    @torch.no_grad()
    def _embed_only_state(self, prefix: PrefixInputs) -> PrefixState:
        h_p, valid, pos_p = self.embed_prefix(prefix)
        dummy = PrefixKVCache(0, 0, 1, 1, 0, 0, h_p.dtype, h_p.device)
        return PrefixState(h_p, valid, pos_p, valid.sum(1), dummy, None, self.config.num_action_slots)

    def ar_stepper(self, prefix: PrefixInputs | PrefixState) -> ARCacheStepper:
        """The AR decoder's stepper (``step(prev (B,)) -> logits (B, V)``) over a fresh prefix cache."""
        if self.config.attention != "causal_actions":
            raise ValueError(
                f"AR decoding needs a model trained with objective 'ar' (causal slots); this one is "
                f"{self.config.objective!r} with attention {self.config.attention!r}"
            )
        state = prefix if isinstance(prefix, PrefixState) else self.prefill(prefix)
        return ARCacheStepper(self, state)


class Denoiser:
    """Callable ``(x_t (B, L) long, t (B,)) -> logits (B, L, V)`` over one batch of prefixes.

    Counts model calls (``num_calls``; the prefix encoding of :meth:`DFMVLA.prefill` is
    ``state.prefix_calls``). ``rate_fn`` is the DFM+Head stage-1 function for ``dfm_sample``.
    """

    def __init__(self, model: DFMVLA, state: PrefixState, cache: str, refresh_every, refresh_fraction, drift):
        self.model, self.state, self.cache = model, state, cache
        self.num_calls = 0
        self.adaptive = (
            AdaptiveCacheDenoiser(model, state, refresh_every, refresh_fraction, drift)
            if cache == "adaptive"
            else None
        )

    def _run(self, x_t: torch.Tensor, t: torch.Tensor) -> Any:
        self.num_calls += 1
        if self.cache == "prefix":
            return self.model.denoise_cached(self.state, x_t, t)
        if self.cache == "none":
            return self.model.denoise_full(self.state, x_t, t, write_cache=False)
        return self.adaptive(x_t, t)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self._run(x_t, t)
        return out[0] if isinstance(out, tuple) else out

    def rate_fn(self, x_t: torch.Tensor, t: torch.Tensor) -> Any:
        out = self._run(x_t, t)
        if not isinstance(out, tuple):
            raise ValueError("rate_fn: this model has no rate head (objective 'dfm_head')")
        return out[1]


class ARCacheStepper:
    """Autoregressive decoding over the prefix cache: each ``step`` appends one slot (one model call)."""

    def __init__(self, model: DFMVLA, state: PrefixState):
        self.model, self.state = model, state
        self.num_calls = 0

    @torch.no_grad()
    def step(self, prev_tokens: torch.Tensor) -> torch.Tensor:
        model, state = self.model, self.state
        i = state.cache.num_written
        if i >= state.num_slots:
            raise ValueError(f"ARCacheStepper: all {state.num_slots} slots are already written")
        h = model.embed_actions(prev_tokens.to(model.device).long().view(-1, 1), None)
        pos = model._slot_positions(state.num_valid, i, 1)
        state.cache.mode = "append"
        out = model.backbone(h, pos, masks.step_mask(state.valid, i), state.cache)
        state.cache.advance(1)
        action_cache = state.action_cache
        if action_cache is not None:
            action_cache.mode = "append"
        logits = model._tail(out, pos, action_cache, written=i)
        if action_cache is not None:
            action_cache.advance(1)
        self.num_calls += 1
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits[:, 0]


def build_model(
    config: ModelConfig,
    action_tokenizer: Any = None,
    text_tokenizer: Any = None,
    state_dim: int | None = None,
    device: torch.device | str = "cpu",
) -> DFMVLA:
    """A fresh model: fills the config's data sizes from the tokenizers and the state dimension."""
    changes: dict[str, Any] = {}
    if action_tokenizer is not None:
        changes.update(
            action_vocab_size=action_tokenizer.vocab_size,
            num_action_slots=action_tokenizer.num_slots,
            action_horizon=action_tokenizer.horizon,
            action_dim=action_tokenizer.action_dim,
        )
    if text_tokenizer is not None and not config.full_vocab_size:
        changes["text_vocab_size"] = text_tokenizer.vocab_size
    if state_dim is not None:
        changes["state_dim"] = int(state_dim)
    config = config.replace(**changes) if changes else config
    with torch.device(device):
        return DFMVLA(config)


def _check_sizes(config: ModelConfig) -> None:
    if config.action_vocab_size < 5 or config.num_action_slots < 1:
        raise ValueError(
            "model config: action_vocab_size and num_action_slots are unset; build the model with "
            "build_model(config, action_tokenizer, ...) or fill them from a fitted action tokenizer"
        )
    if config.use_text and not (config.full_vocab_size or config.text_vocab_size):
        raise ValueError("model config: text_vocab_size is unset; pass the text tokenizer to build_model")
    if not (config.use_text or config.image_views or config.state_dim):
        raise ValueError("model config: no input at all (use_text False, no image_views, state_dim 0)")
