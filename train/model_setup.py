"""What a run trains and how: the model config and text tokenizer of a training config, its initial
weights (``init_from``, ``warm_start``), the DFM metric path, the objective, AdamW groups, the lr schedule
and autocast."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from dfm_vla.train.config import TrainConfig

# Image keys of demo files (``<camera>_rgb``) -> the model's view names.
VIEW_ALIASES = {"eye_in_hand": "wrist", "robot0_eye_in_hand": "wrist"}


def view_name(image_key: str) -> str:
    name = image_key.removesuffix("_rgb").removesuffix("_image")
    return VIEW_ALIASES.get(name, name)


def model_config_for(cfg: TrainConfig, state_dim: int, image_hw: tuple[int, int] | None = None):
    """The model preset with the training config's choices (objective, inputs, overrides) applied.

    image_hw: (height, width) of the training images in pixels, saved so that evaluation renders at it.
    """
    from dfm_vla.policy.config import get_config

    overrides = dict(cfg.model_overrides)
    overrides.setdefault("objective", cfg.objective)
    overrides.setdefault("state_keys", tuple(cfg.state_keys))
    overrides.setdefault("image_views", tuple(view_name(k) for k in cfg.image_keys))
    if not cfg.state_keys:
        overrides["state_dim"] = 0
    preset_execute = get_config(cfg.model).execute_horizon
    overrides.setdefault("execute_horizon", min(preset_execute, cfg.horizon))
    extra = dict(overrides.pop("extra", {}))
    extra["metric_path"] = metric_path_settings(cfg)
    extra["state_keys"] = list(cfg.state_keys)
    extra["image_keys"] = list(cfg.image_keys)
    if image_hw is not None:
        extra["image_hw"] = [int(image_hw[0]), int(image_hw[1])]
    overrides["extra"] = extra
    if cfg.init_from:
        from dfm_vla.policy.univla_loader import univla_model_config

        return univla_model_config(cfg.init_from, **overrides)
    return get_config(cfg.model, **overrides)


def metric_path_settings(cfg: TrainConfig) -> dict[str, Any]:
    """How the DFM path is measured; saved in the model config's ``extra`` for the agent."""
    return {
        "distance": cfg.path_distance,
        "metric": cfg.path_metric,
        "normalize": cfg.path_normalize,
        "c": cfg.path_c,
        "alpha": cfg.path_alpha,
    }


def build_metric_path(model, tokenizer, cfg: TrainConfig):
    """The DFM metric path on the model's current action embeddings (or the tokenizer's values).

    The same call the agent makes at decode time, with the settings saved in the checkpoint.
    """
    return model.metric_path(tokenizer, metric_path_settings(cfg))


def make_objective(cfg: TrainConfig, tokenizer, path):
    import torch

    from dfm_vla.policy import losses
    from dfm_vla.policy.probability_path import slot_token_ids

    allowed = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    allowed[slot_token_ids(tokenizer)] = True
    if cfg.objective in ("dfm", "dfm_head"):
        return losses.make_objective(cfg.objective, path=path, t_max=cfg.t_max)
    if cfg.objective == "dd":
        return losses.make_objective("dd", mask_id=tokenizer.mask_id, allowed=allowed)
    return losses.make_objective("ar", boa_id=tokenizer.boa_id, allowed=allowed)


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and embeddings (dim >= 2), none on biases and norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig, clock=None):
    """Multiplier of ``lr`` at step s: linear warm-up over ``warmup_steps``, cosine to ``min_lr_ratio``.

    clock: optional function returning the wall-clock progress as an equivalent step count; after the
    warm-up the cosine then follows whichever is further along (``lr_schedule_clock: budget``).
    """

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if clock is not None:
            step = max(step, clock())
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def autocast_context(cfg: TrainConfig, device: str):
    import torch

    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.startswith("cuda"))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def text_tokenizer_for(cfg: TrainConfig, model_cfg):
    """The tiny tokenizer that ships with the package, or the Emu3 one of the ``init_from`` checkpoint."""
    if not model_cfg.use_text:
        return None
    if model_cfg.full_vocab_size:
        from dfm_vla.policy.text_tokenizer import CONFIG_FILE, TextTokenizer, emu3_text_tokenizer

        folder = Path(cfg.init_from) if cfg.init_from else None
        if folder is None or not folder.is_dir():
            raise ValueError(
                f"init_from: the {model_cfg.name} model uses the Emu3 text vocabulary; set init_from to "
                "the local UniVLA checkpoint folder that ships it"
            )
        if (folder / CONFIG_FILE).is_file():
            return TextTokenizer.load(folder)
        rank_files = sorted(folder.glob("*.tiktoken"))
        if not rank_files:
            raise FileNotFoundError(f"init_from {folder}: no {CONFIG_FILE} and no *.tiktoken rank file")
        return emu3_text_tokenizer(rank_files[0])
    from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer

    return tiny_text_tokenizer()


def load_init_weights(model, path: str, action_tokenizer, info) -> None:
    """Initialise from a local UniVLA/Emu3 checkpoint (Hugging Face layout) with the model issue's loader."""
    import torch

    from dfm_vla.policy.univla_loader import load_univla_weights

    with torch.no_grad():
        report = load_univla_weights(model, path, action_tokenizer)
    if info.is_main:
        print(f"init_from {path}: {report}")


def load_pretrained_for_warm_start(path: str):
    """The dfm-vla policy folder ``warm_start`` names (a ``PolicyBundle``: model, tokenizers, statistics)."""
    from dfm_vla.policy.checkpoint import load_pretrained

    try:
        return load_pretrained(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"warm_start: {err}") from None


def load_warm_start(model, bundle, path: str, info) -> None:
    """Start from the weights of a loaded dfm-vla policy (``load_pretrained_for_warm_start``) whose model
    config matches this run's; the run also keeps its action tokenizer and state statistics."""
    saved = bundle.model
    fields = (
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_action_slots",
        "state_dim",
        "attention",
        "objective",
    )
    mismatched = [n for n in fields if getattr(saved.config, n) != getattr(model.config, n)]
    if mismatched:
        detail = ", ".join(
            f"{n}: {getattr(saved.config, n)!r} vs {getattr(model.config, n)!r}" for n in mismatched
        )
        raise ValueError(f"warm_start {path}: its model config differs from this run's ({detail})")
    state, own = saved.state_dict(), model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ValueError(
            f"warm_start {path}: weights do not fit this model (unexpected or mis-shaped "
            f"{bad[:5]}, missing {missing[:5]})"
        )
    model.load_state_dict(state)
    if info.is_main:
        print(f"warm_start: weights from {path}")
