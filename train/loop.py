"""The fine-tuning loop: demos -> chunk data set -> model -> objective -> checkpoints and a policy folder.

One function, :func:`train`, serves every scale and objective. Per optimizer step it gathers
``grad_accum`` micro-batches of ``batch_size`` chunks per process, corrupts the action tokens with the
objective (``policy/losses.py``), runs ``model(prefix, x_t, t)`` under bf16 autocast on GPU, clips the
gradient norm and steps AdamW on a warm-up + cosine schedule. DFM objectives measure their metric path on
the model's own action-token embeddings (``path_distance: embedding``, the paper's DFM+Embed), refreshed
every ``path_refresh_every`` steps, or on the tokenizer's value-space distances (``value``).

Validation (every ``eval_every`` steps, fixed random streams so evaluations compare): the objective's loss
and the **token accuracy** of full decoding with the objective's own decoder (DFM: 14 stochastic + 2
greedy steps; DD: 16 steps; AR: one call per slot) against the demo's tokens, plus the mean absolute
error of the decoded actions (original units) over the real (unpadded) steps.

Output folder: the policy (``save_pretrained``, loadable by ``DFMPolicy.from_pretrained``),
``train_config.yaml``, ``metrics.json``, ``curves.png``, ``tensorboard/`` and ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.train.config import TrainConfig

# Image keys of demo files (``<camera>_rgb``) -> the model's view names.
VIEW_ALIASES = {"eye_in_hand": "wrist", "robot0_eye_in_hand": "wrist"}


def view_name(image_key: str) -> str:
    name = image_key.removesuffix("_rgb").removesuffix("_image")
    return VIEW_ALIASES.get(name, name)


@dataclass
class TrainResult:
    """What a run did: steps taken, time, the last validation numbers and where things are."""

    steps: int
    wall_minutes: float
    val_loss: float
    val_token_accuracy: float
    val_action_mae: float
    out_dir: Path
    is_main: bool = True
    history: dict[str, list] = field(default_factory=dict)
    samples_per_second: float = float("nan")
    tokens_per_second: float = float("nan")
    stopped_by: str = "max_steps"


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    train: Any  # ChunkDataset
    val: Any  # ChunkDataset or None
    split: Any  # EpisodeSplit
    num_episodes: int


def load_training_data(cfg: TrainConfig) -> TrainingData:
    """Read every demo path, split whole episodes, build the train and validation chunk data sets."""
    from dfm_vla.train.dataset import ChunkDataset, split_episodes
    from dfm_vla.train.readers import read_episodes

    if not cfg.data:
        raise ValueError("TrainConfig.data: expected at least one demo file or folder, got none")
    obs_keys = list(dict.fromkeys(list(cfg.state_keys) + list(cfg.image_keys)))
    episodes = []
    for path in cfg.data:
        episodes.extend(read_episodes(path, obs_keys=obs_keys, fmt=cfg.data_format))
    split = split_episodes(episodes, cfg.val_fraction, cfg.data_fraction, cfg.seed)
    train = ChunkDataset([episodes[i] for i in split.train], cfg.horizon, cfg.state_keys, cfg.image_keys)
    val = None
    if split.val:
        val = ChunkDataset([episodes[i] for i in split.val], cfg.horizon, cfg.state_keys, cfg.image_keys)
    return TrainingData(train=train, val=val, split=split, num_episodes=len(episodes))


def make_action_tokenizer(cfg: TrainConfig):
    """An unfitted action tokenizer as the config asks (``bins`` or ``fast``)."""
    from dfm_vla.policy.bin_tokenizer import BinActionTokenizer, BinTokenizerConfig
    from dfm_vla.policy.fast_tokenizer import FastActionTokenizer, FastTokenizerConfig

    if cfg.tokenizer == "bins":
        return BinActionTokenizer(
            BinTokenizerConfig(num_bins=cfg.num_bins, gripper_dims=tuple(cfg.gripper_dims))
        )
    return FastActionTokenizer(
        FastTokenizerConfig(
            scale=cfg.fast_scale, vocab_size=cfg.fast_vocab_size, gripper_dims=tuple(cfg.gripper_dims)
        )
    )


class PrefixBuilder:
    """Batch arrays of a :class:`ChunkDataset` -> :class:`PrefixInputs`, exactly as the policy's processor
    builds them from observation dicts (text ids cached per instruction; state normalised with the
    processor's statistics)."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.config = processor.config
        self._text_cache: dict[str, list[int]] = {}

    def _text_ids(self, text: str) -> list[int]:
        ids = self._text_cache.get(text)
        if ids is None:
            ids = self.processor.text_tokenizer.encode(text)
            if len(ids) > self.config.max_text_tokens:
                raise ValueError(
                    f"language: instruction {text[:60]!r} is {len(ids)} tokens, the model accepts at most "
                    f"{self.config.max_text_tokens} (raise model_overrides.max_text_tokens)"
                )
            self._text_cache[text] = ids
        return ids

    def __call__(self, batch: dict[str, Any]):
        import torch

        from dfm_vla.policy.processor import PrefixInputs
        from dfm_vla.policy.text_tokenizer import pad_batch

        out = PrefixInputs()
        if self.config.use_text:
            lists = [self._text_ids(s) for s in batch["language"]]
            ids, valid = pad_batch(lists, self.processor.text_tokenizer.pad_id, self.config.max_text_tokens)
            out.text_ids, out.text_valid = torch.from_numpy(ids), torch.from_numpy(valid)
        if self.config.image_views:
            images = torch.from_numpy(np.ascontiguousarray(batch["images"]))
            if self.config.image_encoder == "vq":
                out.image_tokens = self.processor.image_tokenizer(images)
            else:
                out.images = images
        if self.config.state_dim:
            state = (batch["state"].astype(np.float64) - self.processor.state_mean) / self.processor.state_std
            out.state = torch.from_numpy(state.astype(np.float32))
        return out


# ----------------------------------------------------------------------------------------------------
# Model, path, objective
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def decode_tokens(model, prefix, cfg: TrainConfig, tokenizer, path, generator):
    """Decode action tokens (B, L) for ``prefix`` with the objective's own decoder."""
    import torch

    from dfm_vla.policy import samplers
    from dfm_vla.policy.probability_path import slot_token_ids

    mc = model.config
    batch, slots = prefix.batch_size, mc.num_action_slots
    allowed = torch.zeros(tokenizer.vocab_size, dtype=torch.bool, device=model.device)
    allowed[slot_token_ids(tokenizer)] = True
    if cfg.objective == "ar":
        return samplers.ar_sample(
            model.ar_stepper(prefix),
            batch,
            slots,
            boa_id=tokenizer.boa_id,
            allowed=allowed,
            device=model.device,
        ).tokens
    cache = "prefix" if mc.attention != "bidirectional" else "none"
    denoiser = model.make_denoiser(prefix, cache=cache)
    if cfg.objective == "dd":
        steps = mc.steps_fine + mc.steps_val
        return samplers.dd_sample(
            denoiser, tokenizer.mask_id, batch, slots, steps, allowed=allowed, device=model.device
        ).tokens
    rate_fn = denoiser.rate_fn if cfg.objective == "dfm_head" else None
    return samplers.dfm_sample(
        denoiser,
        path.to(model.device) if hasattr(path, "to") else path,
        batch,
        slots,
        steps_fine=mc.steps_fine,
        steps_val=mc.steps_val,
        generator=generator,
        rate_fn=rate_fn,
        device=model.device,
    ).tokens


def evaluate(
    model,
    dataset,
    prefix_builder,
    objective,
    cfg: TrainConfig,
    tokenizer,
    path,
    device: str,
    decode: bool = True,
) -> dict:
    """Validation metrics on fixed batches with fixed random streams (comparable across evaluations).

    val/loss: the objective's loss. val/posterior_acc: argmax of the model's one-pass prediction at the
    corrupted input (DFM: p_1|t at the sampled t; DD: the masked slots; AR: teacher-forced) against the
    demo tokens. With ``decode`` (not under FSDP, whose shards only gather inside ``forward``):
    val/token_acc, full decoding with the objective's decoder against the demo tokens, and
    val/action_mae, the mean absolute error of the decoded actions over the real steps (original units).
    ``model`` is what gets called: the unwrapped model, or the FSDP module (every rank calls it then).
    """
    import torch

    if dataset is None or len(dataset) == 0:
        return {}
    n = len(dataset)
    order = np.random.default_rng(12345).permutation(n)
    batch_size = min(cfg.batch_size, n)
    num_batches = math.ceil(n / batch_size)
    if cfg.eval_batches:
        num_batches = min(num_batches, cfg.eval_batches)
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(("loss", "post_hit", "post_n", "correct", "counted", "abs_err", "abs_count"), 0.0)
    totals["batches"] = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        generator = torch.Generator(device=device).manual_seed(cfg.seed + 777)
        for b in range(num_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            batch = dataset.batch(idx)
            prefix = prefix_builder(batch).to(device)
            x1 = torch.from_numpy(batch["action_tokens"]).to(device)
            slot_mask = torch.from_numpy(batch["slot_mask"]).to(device)
            cpu_gen = torch.Generator().manual_seed(cfg.seed + 1000 + b)
            noised = objective.corrupt(x1.cpu(), cpu_gen)
            noised.x_t, noised.t = noised.x_t.to(device), noised.t.to(device)
            with autocast_context(cfg, device):
                output = model(prefix, noised.x_t, noised.t)
                loss = objective.loss(output, x1, noised, slot_mask)
            totals["loss"] += float(loss)
            logits = (output[0] if isinstance(output, tuple) else output).float()
            if getattr(objective, "allowed", None) is not None:
                logits = logits.masked_fill(~objective.allowed.to(device), float("-inf"))
            elif path is not None:
                logits = logits.masked_fill(~path.allowed.to(device), float("-inf"))
            counted = slot_mask & (noised.x_t == tokenizer.mask_id) if cfg.objective == "dd" else slot_mask
            totals["post_hit"] += float(((logits.argmax(-1) == x1) & counted).sum())
            totals["post_n"] += float(counted.sum())
            totals["batches"] += 1
            if not decode:
                continue
            tokens = decode_tokens(model, prefix, cfg, tokenizer, path, generator)
            totals["correct"] += float(((tokens == x1) & slot_mask).sum())
            totals["counted"] += float(slot_mask.sum())
            decoded = tokenizer.decode(tokens.cpu().numpy()).actions  # (B, H, A)
            step_mask = batch["action_mask"][..., None]
            totals["abs_err"] += float((np.abs(decoded - batch["actions"]) * step_mask).sum())
            totals["abs_count"] += float(step_mask.sum() * decoded.shape[-1])
    model.train(was_training)
    result = {
        "val/loss": totals["loss"] / totals["batches"],
        "val/posterior_acc": totals["post_hit"] / max(1.0, totals["post_n"]),
    }
    if decode:
        result["val/token_acc"] = totals["correct"] / max(1.0, totals["counted"])
        result["val/action_mae"] = totals["abs_err"] / max(1.0, totals["abs_count"])
    return result


# ----------------------------------------------------------------------------------------------------
# Saving the policy
# ----------------------------------------------------------------------------------------------------


def save_policy(out_dir: Path, model, tokenizer, text_tokenizer, norm_stats: dict, cfg: TrainConfig) -> None:
    """Write the loadable policy (weights, model config, tokenizers, normalisation) into ``out_dir``.

    ``save_pretrained`` replaces a whole folder, so the policy is written to a temporary folder first and
    its entries are moved into ``out_dir`` one by one (each an atomic rename; ``config.json`` last),
    leaving the run's other files (checkpoints, curves, logs) in place.
    """
    import shutil

    from dfm_vla.policy.checkpoint import CONFIG_FILE, replace_path, save_pretrained

    extra = {
        "metric_path": metric_path_settings(cfg),
        "trained_with": {"objective": cfg.objective, "config": "train_config.yaml"},
    }
    staging = out_dir / ".policy_staging"
    if staging.exists():
        shutil.rmtree(staging)
    save_pretrained(
        staging,
        model,
        action_tokenizer=tokenizer,
        text_tokenizer=text_tokenizer,
        norm_stats=norm_stats,
        extra=extra,
    )
    entries = sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_FILE)  # config.json last
    for entry in entries:
        replace_path(entry, out_dir / entry.name)
    shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Run (or, with ``resume``, continue) training as ``cfg`` says; see the module docstring."""
    trainer = Trainer(cfg, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        trainer.close()


class Trainer:
    """Holds one run's pieces (data, model, optimizer, sampler, log); :meth:`run` trains."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        import torch

        from dfm_vla.policy.model import build_model
        from dfm_vla.policy.processor import PolicyProcessor
        from dfm_vla.train import checkpointing, distributed
        from dfm_vla.train.dataset import EpochSampler
        from dfm_vla.train.logging_utils import MetricLog

        cfg.validate()
        self.cfg = cfg
        self.start_time = time.monotonic()
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.info = info = distributed.init_distributed(cfg.device)
        self.out_dir = out_dir = Path(cfg.out_dir)
        latest = checkpointing.latest_checkpoint(out_dir) if resume else None
        if resume and latest is None and info.is_main:
            print(f"resume: no checkpoint in {out_dir / checkpointing.CHECKPOINT_DIR}; starting from scratch")

        # Data, tokenizer and statistics: deterministic, so every rank computes the same.
        self.data = data = load_training_data(cfg)
        tokenizer_dir = out_dir / "action_tokenizer"
        if latest is not None and tokenizer_dir.is_dir():
            from dfm_vla.policy.action_tokenizer import load_action_tokenizer

            self.tokenizer = load_action_tokenizer(tokenizer_dir)
        else:
            self.tokenizer = data.train.fit_tokenizer(
                make_action_tokenizer(cfg), cfg.tokenizer_fit_max_chunks, cfg.seed
            )
        data.train.attach_tokenizer(self.tokenizer, cfg.mask_padded_steps)
        if data.val is not None:
            data.val.attach_tokenizer(self.tokenizer, cfg.mask_padded_steps)
        self.norm_stats: dict[str, Any] = {}
        state_stats = data.train.state_statistics()
        if state_stats is not None:
            self.norm_stats["state"] = state_stats

        # Model: the same initial weights on every rank.
        torch.manual_seed(cfg.seed)
        image_hw = data.train.images.shape[2:4] if data.train.images is not None else None
        model_cfg = model_config_for(cfg, data.train.state_dim, image_hw)
        self.text_tokenizer = _text_tokenizer(cfg, model_cfg)
        model = build_model(
            model_cfg, self.tokenizer, self.text_tokenizer, state_dim=data.train.state_dim, device=info.device
        )
        if cfg.init_from:
            _load_init(model, cfg.init_from, self.tokenizer, info)
        if cfg.warm_start and latest is None:
            _load_warm_start(model, cfg.warm_start, info)
        if cfg.activation_checkpointing:
            model.set_gradient_checkpointing(True)
        self.model = model.to(info.device)
        self.processor = PolicyProcessor(model.config, self.text_tokenizer, self.norm_stats)
        self.prefix_builder = PrefixBuilder(self.processor)
        self.strategy = distributed.resolve_strategy(cfg.strategy, cfg.model, info)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.startswith("cuda"))
        self.wrapped = distributed.wrap_model(model, self.strategy, info, bf16=use_bf16)

        self.grad_accum = distributed.resolve_grad_accum(
            cfg.batch_size, cfg.grad_accum, info.world_size, cfg.effective_batch_size
        )
        self.effective_batch = distributed.effective_batch(cfg.batch_size, self.grad_accum, info.world_size)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.wrapped, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
        )
        clock = None
        if cfg.lr_schedule_clock == "budget" and cfg.max_minutes > 0:

            def clock() -> float:  # this invocation's share of its wall-clock budget, as a step count
                return cfg.max_steps * self.elapsed_seconds() / (cfg.max_minutes * 60.0)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, clock))
        self.sampler = EpochSampler(len(data.train), cfg.batch_size, cfg.seed, info.rank, info.world_size)

        self.step, history, self.prior_seconds = 0, {}, 0.0
        self.resumed_from = latest
        if latest is not None:
            state = checkpointing.load_checkpoint(
                latest, self.wrapped, self.optimizer, self.scheduler, info.rank, info.world_size
            )
            self.step = state["step"]
            self.sampler.load_state_dict(state["sampler"])
            history = state["extra"].get("history", {})
            self.prior_seconds = float(state["extra"].get("train_seconds", 0.0))
        else:
            torch.manual_seed(cfg.seed * 1000 + 1 + info.rank)  # each rank draws its own times and noise

        self.path = (
            build_metric_path(model, self.tokenizer, cfg) if cfg.objective in ("dfm", "dfm_head") else None
        )
        self.objective = make_objective(cfg, self.tokenizer, self.path)
        self.log = MetricLog(out_dir, cfg.tensorboard, history) if info.is_main else None
        self.bar = _ProgressBar(cfg.max_steps, self.step, enabled=progress and info.is_main)
        self.samples_seen, self.tokens_seen = 0, 0.0
        self.last_eval: dict[str, float] = {}
        if info.is_main:
            self._write_run_files()

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _write_run_files(self) -> None:
        from dfm_vla.utils.io import atomic_write_json

        cfg, data, info = self.cfg, self.data, self.info
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(self.out_dir / "train_config.yaml")
        self.tokenizer.save(self.out_dir / "action_tokenizer")
        summary = {
            "model": self.model.config.name,
            "parameters": _count_params(self.model),
            "objective": cfg.objective,
            "episodes": {
                "total": data.num_episodes,
                "train": len(data.split.train),
                "val": len(data.split.val),
            },
            "chunks": {"train": len(data.train), "val": len(data.val) if data.val is not None else 0},
            "action_tokens": {"num_slots": self.tokenizer.num_slots, "vocab_size": self.tokenizer.vocab_size},
            "world_size": info.world_size,
            "strategy": self.strategy,
            "grad_accum": self.grad_accum,
            "effective_batch": self.effective_batch,
            "device": info.device,
        }
        atomic_write_json(self.out_dir / "run_summary.json", summary)
        resumed = f", resuming at step {self.step}" if self.resumed_from is not None else ""
        print(
            f"train: {summary['parameters'] / 1e6:.2f}M-parameter {summary['model']} model, objective "
            f"{cfg.objective}, {len(data.split.train)} train / {len(data.split.val)} val episodes "
            f"({len(data.train)} chunks), L={self.tokenizer.num_slots} slots, effective batch "
            f"{self.effective_batch} ({cfg.batch_size} x {self.grad_accum} accum x {info.world_size} proc), "
            f"device {info.device}{resumed}",
            flush=True,
        )

    def elapsed_seconds(self) -> float:
        return time.monotonic() - self.start_time

    # ---- one optimizer step ---------------------------------------------------------------------------
    def train_step(self) -> float:
        """Accumulate ``grad_accum`` micro-batches, clip, step; returns this rank's mean loss."""
        import torch

        cfg, info = self.cfg, self.info
        loss_sum = 0.0
        for micro in range(self.grad_accum):
            batch = self.data.train.batch(self.sampler.next_indices())
            prefix = self.prefix_builder(batch).to(info.device)
            x1 = torch.from_numpy(batch["action_tokens"])
            slot_mask = torch.from_numpy(batch["slot_mask"]).to(info.device)
            noised = self.objective.corrupt(x1)  # on the CPU: the same random stream on any device
            x1 = x1.to(info.device)
            noised.x_t, noised.t = noised.x_t.to(info.device), noised.t.to(info.device)
            skip_sync = micro < self.grad_accum - 1 and self.strategy == "ddp"
            with _no_sync(self.wrapped, skip_sync), autocast_context(cfg, info.device):
                output = self.wrapped(prefix, noised.x_t, noised.t)
                loss = self.objective.loss(output, x1, noised, slot_mask) / self.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
            self.tokens_seen += x1.shape[0] * (x1.shape[1] + prefix_length(prefix, self.model.config))
            self.samples_seen += x1.shape[0]
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if (
            self.path is not None
            and cfg.path_distance == "embedding"
            and self.step % cfg.path_refresh_every == 0
        ):
            self.path = build_metric_path(self.model, self.tokenizer, cfg)
            self.objective.path = self.path
        return loss_sum

    def evaluate(self) -> dict[str, float]:
        """Validation on rank 0 (other ranks wait at a barrier); logs and returns the numbers."""
        import torch.distributed as dist

        result: dict[str, float] = {}
        sharded = self.strategy == "fsdp"  # every rank must join the forward passes of a sharded model
        if self.info.is_main or sharded:
            result = evaluate(
                self.wrapped if sharded else self.model, self.data.val, self.prefix_builder, self.objective,
                self.cfg, self.tokenizer, self.path, self.info.device, decode=not sharded,
            )  # fmt: skip
        if self.info.is_main and result and self.log is not None:
            self.log.log(self.step, result)
            decoded = (
                f", token acc {result['val/token_acc']:.3f}, action MAE {result['val/action_mae']:.4f}"
                if "val/token_acc" in result
                else ""
            )
            self.bar.note(
                f"step {self.step}: val loss {result['val/loss']:.4f}, "
                f"posterior acc {result['val/posterior_acc']:.3f}{decoded}"
            )
        if self.info.distributed and dist.is_initialized():
            dist.barrier()
        self.last_eval = result
        self.last_eval_step = self.step
        return result

    def save(self) -> None:
        """Training checkpoint (collective) and, on rank 0, the loadable policy folder."""
        from dfm_vla.train import checkpointing

        extra = {
            "history": self.log.state() if self.log is not None else {},
            "train_seconds": self.prior_seconds + self.elapsed_seconds(),
        }
        checkpointing.save_checkpoint(
            self.out_dir, self.step, self.wrapped, self.optimizer, self.scheduler, self.sampler.state_dict(),
            extra, self.info.rank, self.info.world_size, self.cfg.keep_checkpoints,
        )  # fmt: skip
        if self.info.is_main:
            save_policy(
                self.out_dir, self.model, self.tokenizer, self.text_tokenizer, self.norm_stats, self.cfg
            )
        self.last_save_step = self.step

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        import torch

        from dfm_vla.train import distributed

        cfg, info = self.cfg, self.info
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else float("inf")
        loop_start = time.monotonic()
        stopped_by = "max_steps"
        self.last_eval_step = self.last_save_step = -1
        if cfg.eval_at_start and self.step == 0:
            self.evaluate()
        self.wrapped.train()
        while self.step < cfg.max_steps:
            if _should_stop(self.elapsed_seconds(), budget, info):
                stopped_by = "max_minutes"
                break
            loss = self.train_step()
            seconds = max(time.monotonic() - loop_start, 1e-9)
            tokens_per_s = self.tokens_seen * info.world_size / seconds
            if self.step % cfg.log_every == 0 or self.step == 1:
                mean_loss = float(distributed.all_reduce_mean(torch.tensor(loss), info))
                if self.log is not None:
                    self.log.log(
                        self.step,
                        {
                            "train/loss": mean_loss,
                            "train/lr": self.scheduler.get_last_lr()[0],
                            "train/grad_norm": self.grad_norm,
                            "train/tokens_per_s": tokens_per_s,
                            "train/samples_per_s": self.samples_seen * info.world_size / seconds,
                        },
                    )
            shown = self.log.last("train/loss") if self.log is not None else loss
            self.bar.update(self.step, shown, self.scheduler.get_last_lr()[0], tokens_per_s)
            if self.step % cfg.eval_every == 0:
                self.evaluate()
            if self.step % cfg.save_every == 0:
                self.save()
        # Final evaluation and save (unless the last step just did them).
        if self.last_eval_step != self.step:
            self.evaluate()
        if self.last_save_step != self.step:
            self.save()
        seconds = max(time.monotonic() - loop_start, 1e-9)
        result = TrainResult(
            steps=self.step,
            wall_minutes=self.elapsed_seconds() / 60.0,
            val_loss=self.last_eval.get("val/loss", float("nan")),
            val_token_accuracy=self.last_eval.get("val/token_acc", float("nan")),
            val_action_mae=self.last_eval.get("val/action_mae", float("nan")),
            out_dir=self.out_dir,
            is_main=info.is_main,
            samples_per_second=self.samples_seen * info.world_size / seconds,
            tokens_per_second=self.tokens_seen * info.world_size / seconds,
            stopped_by=stopped_by,
        )
        if self.log is not None:
            self._write_metrics(result)
        return result

    def _write_metrics(self, result: TrainResult) -> None:
        from dfm_vla.train.logging_utils import plot_curves
        from dfm_vla.utils.io import atomic_write_json

        result.history = self.log.state()
        metrics = {
            "steps": result.steps,
            "stopped_by": result.stopped_by,
            "wall_minutes_this_run": result.wall_minutes,
            "train_minutes_total": (self.prior_seconds + self.elapsed_seconds()) / 60.0,
            "samples_per_second": result.samples_per_second,
            "tokens_per_second": result.tokens_per_second,
            "final": self.last_eval,
            "history": result.history,
        }
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        plot_curves(
            self.log.history, self.out_dir / "curves.png", f"{self.model.config.name} / {self.cfg.objective}"
        )

    def close(self) -> None:
        import torch.distributed as dist

        from dfm_vla.train import distributed

        self.bar.close()
        if self.log is not None:
            self.log.close()
        if self.info.distributed and dist.is_initialized():
            distributed.shutdown_distributed()


def _count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prefix_length(prefix, model_cfg) -> int:
    """Padded prefix tokens per row that the model sees: text + image + state tokens + boa."""
    length = 1
    if prefix.text_ids is not None:
        length += prefix.text_ids.shape[1]
    if prefix.image_tokens is not None:
        length += prefix.image_tokens[0].numel()
    if prefix.images is not None:
        length += len(model_cfg.image_views) * model_cfg.image_tokens_per_view
    if prefix.state is not None:
        length += model_cfg.state_tokens
    return length


def _text_tokenizer(cfg: TrainConfig, model_cfg):
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


def _load_init(model, path: str, action_tokenizer, info) -> None:
    """Initialise from a local UniVLA/Emu3 checkpoint (Hugging Face layout) with the model issue's loader."""
    import torch

    from dfm_vla.policy.univla_loader import load_univla_weights

    with torch.no_grad():
        report = load_univla_weights(model, path, action_tokenizer)
    if info.is_main:
        print(f"init_from {path}: {report}")


def _load_warm_start(model, path: str, info) -> None:
    """Start from the weights of a dfm-vla policy folder (read by ``load_pretrained``) whose model config
    matches this run's."""
    from dfm_vla.policy.checkpoint import load_pretrained

    try:
        saved = load_pretrained(path).model
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"warm_start: {err}") from None
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


def _should_stop(elapsed: float, budget: float, info) -> bool:
    """True when the wall-clock budget is spent (rank 0 decides; every rank agrees)."""
    import torch
    import torch.distributed as dist

    stop = elapsed >= budget
    if info.distributed and dist.is_initialized():
        flag = torch.tensor([1 if stop else 0], dtype=torch.int32)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def _no_sync(model, skip: bool):
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


class _ProgressBar:
    """A rich progress bar (loss, lr, tokens/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self._last_print = 0.0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console()
        self.interactive = self.console.is_terminal
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"
                ),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train", total=total, completed=start, loss=float("nan"), lr=0.0, tps=0.0
            )
            self.progress.start()
        self.total = total

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, lr=lr, tps=tokens_per_s)
        elif time.monotonic() - self._last_print > 30 or step == self.total:
            self._last_print = time.monotonic()
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:.0f} tok/s",
                flush=True,
            )

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
