"""Model configurations as dataclasses, with named presets.

One code path serves every scale; the presets differ only in numbers and in which input encoders exist:

- ``tiny``: about 2M parameters, for 2 CPU cores; language + low-dimensional state (images optional).
- ``small``: 12 layers, hidden 512 (about 35M without embeddings); the larger CPU config of the bench.
- ``base``: 24 layers, hidden 1024, about 0.3B in the blocks; one GPU.
- ``univla-8b``: UniVLA / Emu3-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads, vocabulary 184,622,
  Emu3 VQ image tokens, plus UniVLA's 2-layer action sub-module; builds on the meta device.

Sizes that come from data (action vocabulary and slot count from the fitted action tokenizer, text
vocabulary from the text tokenizer, state dimension from the demos) are filled in by
:func:`dfm_vla.policy.model.build_model` / the trainer before the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ATTENTION_MODES = ("prefix_lm", "bidirectional", "causal_actions")
OBJECTIVES = ("dfm", "dfm_head", "dd", "ar")
IMAGE_ENCODERS = ("patch", "vq")


@dataclass
class ModelConfig:
    """Everything needed to build :class:`dfm_vla.policy.model.DFMVLA` (saved as ``config.json``)."""

    name: str = "tiny"
    # Transformer blocks (Hugging Face Emu3 / Llama decoder layers).
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    dropout: float = 0.0
    attn_implementation: str = "sdpa"  # "sdpa" (CPU and GPU), "flash_attention_2" where installed, "eager"
    num_action_layers: int = 0  # UniVLA's action sub-module: extra decoder layers over the action slots only
    # Attention pattern and training objective.
    attention: str = "prefix_lm"  # one of ATTENTION_MODES; "causal_actions" is forced for objective "ar"
    objective: str = "dfm"  # one of OBJECTIVES
    # Text: tiktoken vocabulary shipped with the checkpoint.
    use_text: bool = True
    text_vocab_size: int = 0  # filled from the text tokenizer (incl. its special tokens)
    max_text_tokens: int = 32
    # Shared token table of the UniVLA layout: text, VQ image and action tokens in one vocabulary.
    full_vocab_size: int = 0  # 0: separate tables (tiny/small); 184622 for univla-8b
    # Images: {view name} -> tokens.
    image_views: tuple[str, ...] = ()
    image_size: int = 64  # images are resized to image_size x image_size
    image_encoder: str = "patch"  # "patch" (small conv patch encoder) or "vq" (Emu3VQVAE tokens)
    patch_size: int = 8
    vq_codebook_size: int = 32768
    vq_token_offset: int = 151854  # Emu3: id of "<|visual token 000000|>"
    vq_downsample: int = 8  # Emu3VQVAE spatial factor
    vq_eol_token_id: int = 151846  # Emu3: "<|extra_200|>", appended after every row of codes
    # Low-dimensional state: obs keys concatenated in this order, projected to a few tokens.
    state_keys: tuple[str, ...] = ("state",)
    state_dim: int = 0  # filled from data (sum of the keys' lengths); 0 = no state input
    state_tokens: int = 2
    # Actions (filled from the fitted action tokenizer).
    action_vocab_size: int = 0
    num_action_slots: int = 0
    action_horizon: int = 0
    action_dim: int = 0
    # Agent defaults.
    execute_horizon: int = 8  # actions of each chunk executed before re-planning
    steps_fine: int = 14
    steps_val: int = 2
    # DFM decoding knobs beyond the step split (defaults reproduce the plain two-stage decoder).
    val_time: float | None = None  # t at which the greedy steps query the model; None: the last Euler time
    posterior_temperature: float = 1.0  # x1 for the velocity is drawn from p_{1|t}^(1/T); 1 = the posterior
    # Refinement from the previous plan (bins tokenizers; policy/warm_start.py): the unexecuted actions of
    # the last chunk shifted to the front, the last one repeated, noised to p_t0 and refined from t0.
    warm_start: bool = False
    warm_start_t0: float = 0.5
    warm_start_steps_fine: int = 3
    warm_start_steps_val: int = 1
    # Real-time execution (agents/dfm_policy.py): plan the next chunk while the current one runs.
    # inference_delay: control steps a plan takes (0 = synchronous: plan when the chunk ran out);
    # freeze_prefix: keep the new chunk's first inference_delay steps fixed to the actions that run
    # meanwhile (bins tokenizers), so the plan agrees with what the robot does while it is made.
    inference_delay: int = 0
    freeze_prefix: bool = True
    rate_head: bool = False  # DFM+Head's per-slot rates; set from the objective ("dfm_head")
    init_std: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_views = tuple(self.image_views)
        self.state_keys = tuple(self.state_keys)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention: expected one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder: expected one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}"
            )
        self._check_decoding()
        if self.objective == "ar":
            self.attention = "causal_actions"
        self.rate_head = self.objective == "dfm_head"  # the head exists exactly for DFM+Head
        if self.image_encoder == "vq" and self.image_views and not self.full_vocab_size:
            raise ValueError(
                "image_encoder 'vq' needs full_vocab_size > 0 (VQ codes live in the shared vocab)"
            )

    def _check_decoding(self) -> None:
        for name in (
            "steps_fine",
            "steps_val",
            "warm_start_steps_fine",
            "warm_start_steps_val",
            "inference_delay",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
        if self.warm_start_steps_fine + self.warm_start_steps_val < 1:
            raise ValueError("warm_start_steps_fine + warm_start_steps_val: expected >= 1 model call")
        if self.val_time is not None and not 0.0 <= float(self.val_time) < 1.0:
            raise ValueError(f"val_time: expected None or a time in [0, 1), got {self.val_time!r}")
        if not float(self.posterior_temperature) > 0.0:
            raise ValueError(f"posterior_temperature: expected > 0, got {self.posterior_temperature!r}")
        if not 0.0 <= float(self.warm_start_t0) < 1.0:
            raise ValueError(f"warm_start_t0: expected a time in [0, 1), got {self.warm_start_t0!r}")
        for name in ("warm_start", "freeze_prefix"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_tokens_per_view(self) -> int:
        if self.image_encoder == "patch":
            return (self.image_size // self.patch_size) ** 2
        side = self.image_size // self.vq_downsample
        return side * (side + 1)  # Emu3 appends an end-of-line token to every row

    @property
    def max_prefix_tokens(self) -> int:
        """Upper bound on the prefix length: text + images + state + boa."""
        text = self.max_text_tokens if self.use_text else 0
        state = self.state_tokens if self.state_dim else 0
        return text + len(self.image_views) * self.image_tokens_per_view + state + 1

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_views"] = list(self.image_views)
        data["state_keys"] = list(self.state_keys)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        name="tiny", hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=2, intermediate_size=512
    ),
    "small": dict(
        name="small", hidden_size=512, num_layers=12, num_heads=8, num_kv_heads=2, intermediate_size=1408
    ),
    "base": dict(
        name="base",
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        num_kv_heads=4,
        intermediate_size=2816,
        num_action_layers=2,
        max_text_tokens=64,
        image_views=("agentview", "wrist"),
        image_size=128,
        patch_size=16,
    ),
    "univla-8b": dict(
        name="univla-8b",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=14336,
        rms_norm_eps=1e-5,
        max_position_embeddings=9216,
        num_action_layers=2,
        full_vocab_size=184622,
        text_vocab_size=184622,
        max_text_tokens=128,
        image_views=("agentview", "wrist"),
        image_encoder="vq",
        image_size=200,  # 25 x 25 VQ codes (+ 25 end-of-line tokens) = 650 tokens per view
        attention="bidirectional",
    ),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A named preset (``tiny``, ``small``, ``base``, ``univla-8b``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"model config: expected one of {sorted(PRESETS)}, got {name!r}")
    return ModelConfig(**{**PRESETS[name], **overrides})
