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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfm_vla.train.config import TrainConfig
from dfm_vla.train.model_setup import (
    VIEW_ALIASES,
    autocast_context,
    build_metric_path,
    count_parameters,
    load_init_weights,
    load_pretrained_for_warm_start,
    load_warm_start,
    lr_lambda,
    make_objective,
    metric_path_settings,
    model_config_for,
    param_groups,
    text_tokenizer_for,
    view_name,
)
from dfm_vla.train.policy_export import save_policy
from dfm_vla.train.progress import ProgressBar
from dfm_vla.train.training_data import (
    PrefixBuilder,
    TrainingData,
    load_training_data,
    make_action_tokenizer,
    prefix_length,
)
from dfm_vla.train.validation import decode_tokens, evaluate

# The pieces live in training_data, model_setup, validation and policy_export; they stay importable here.
__all__ = [
    "VIEW_ALIASES", "PrefixBuilder", "TrainResult", "Trainer", "TrainingData", "autocast_context",
    "build_metric_path", "decode_tokens", "evaluate", "load_training_data", "lr_lambda",
    "make_action_tokenizer", "make_objective", "metric_path_settings", "model_config_for", "param_groups",
    "prefix_length", "save_policy", "train", "view_name",
]  # fmt: skip


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
        # Fine-tuning a policy (warm_start) keeps its action tokenizer and state statistics: refitted on
        # new demos, token i and the state's units would mean something else to the loaded weights.
        warm = load_pretrained_for_warm_start(cfg.warm_start) if cfg.warm_start else None
        if warm is not None:
            self.tokenizer = warm.action_tokenizer
        elif latest is not None and tokenizer_dir.is_dir():
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
        if warm is not None:
            self.norm_stats = dict(warm.norm_stats)
        elif state_stats is not None:
            self.norm_stats["state"] = state_stats

        # Model: the same initial weights on every rank.
        torch.manual_seed(cfg.seed)
        image_hw = data.train.images.shape[2:4] if data.train.images is not None else None
        model_cfg = model_config_for(cfg, data.train.state_dim, image_hw)
        self.text_tokenizer = text_tokenizer_for(cfg, model_cfg)
        model = build_model(
            model_cfg, self.tokenizer, self.text_tokenizer, state_dim=data.train.state_dim, device=info.device
        )
        if cfg.init_from:
            load_init_weights(model, cfg.init_from, self.tokenizer, info)
        if warm is not None and latest is None:
            load_warm_start(model, warm, cfg.warm_start, info)
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
        self.bar = ProgressBar(cfg.max_steps, self.step, enabled=progress and info.is_main)
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
            "parameters": count_parameters(self.model),
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
