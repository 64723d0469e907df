"""Distributed training through ``torchrun``: process group, model wrapping, effective batch.

``torchrun --nproc_per_node N cli.py train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
``python cli.py train`` runs as a single process. Small and base models are wrapped in DDP; the 8B
model is fully sharded with FSDP (``fully_shard``, bf16 parameters and reductions in fp32). Only
rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); single process otherwise.

    device: "auto" (CUDA when available), "cpu" or "cuda".
    """
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch.cuda.is_available() is False")
    dev = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = ""
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_strategy(strategy: str, model_name: str, info: DistInfo) -> str:
    """ "auto" -> "fsdp" for univla-8b on CUDA, "ddp" when distributed, "none" for one process."""
    if strategy != "auto":
        if strategy == "fsdp" and not info.device.startswith("cuda") and info.distributed:
            # FSDP runs on gloo too, but bf16 sharding is meant for GPUs; allowed, not the default.
            return "fsdp"
        return strategy
    if not info.distributed:
        return "none"
    if model_name == "univla-8b" and info.device.startswith("cuda"):
        return "fsdp"
    return "ddp"


def wrap_model(model, strategy: str, info: DistInfo, bf16: bool = False):
    """Wrap ``model`` (already on ``info.device``) for ``strategy``: "none", "ddp" or "fsdp"."""
    import torch

    if strategy == "none" or not info.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.local_rank] if info.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else torch.float32, reduce_dtype=torch.float32
        )
        # Shard every transformer block, then the root (embeddings, heads).
        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    raise ValueError(f"strategy: expected 'none', 'ddp' or 'fsdp', got {strategy!r}")


def unwrap_model(model):
    """The module inside a DDP wrapper (FSDP2 shards in place, so it is returned as is)."""
    return getattr(model, "module", model)


def resolve_grad_accum(
    batch_size: int, grad_accum: int, world_size: int, effective_batch_size: int = 0
) -> int:
    """Accumulation steps: ``grad_accum``, or derived from ``effective_batch_size`` when that is > 0.

    The effective batch (samples per optimizer step) is batch_size x grad_accum x world size; a target
    that batch_size x world size does not divide raises ``ValueError``.
    """
    if effective_batch_size <= 0:
        return int(grad_accum)
    per_micro_step = int(batch_size) * int(world_size)
    if effective_batch_size % per_micro_step:
        raise ValueError(
            f"effective_batch_size: {effective_batch_size} is not a multiple of batch_size {batch_size} x "
            f"world size {world_size} = {per_micro_step}; change batch_size or effective_batch_size"
        )
    return effective_batch_size // per_micro_step


def effective_batch(batch_size: int, grad_accum: int, world_size: int) -> int:
    """Samples per optimizer step = per-device batch x accumulation x processes."""
    return int(batch_size) * int(grad_accum) * int(world_size)


def all_reduce_mean(values, info: DistInfo):
    """Mean of a float tensor over ranks (returned unchanged for one process)."""
    import torch.distributed as dist

    if info.distributed and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values
