"""Training objectives: DFM (primary), DFM+Head, masked discrete diffusion (DD) and autoregressive (AR).

Each objective is a small class the training loop picks by name (:data:`OBJECTIVES`, :func:`make_objective`)
with two methods:

- ``corrupt(x1, generator)`` -> :class:`NoisedBatch` (x_t (B, L) long, t (B,) float): the model's input.
- ``loss(output, x1, batch, slot_mask=None)`` -> scalar: ``output`` is the model's logits (B, L, V), or for
  "dfm_head" a tuple (logits, :class:`~dfm_vla.policy.rate_head.RateHeadOutput`).

The loss functions underneath are plain functions of tensors. ``slot_mask`` (B, L) bool, optional, marks
the slots that count (default all); every loss averages over those slots. Time conventions are shared by
all objectives and decoders: t = 0 is pure noise (DFM: uniform tokens; DD: all masked), t = 1 is data.

DFM (paper, L_CE)::

    L = E_{t ~ U(0, t_max), x1, x_t ~ p_t(.|x1)} [ -log p_{1|t}(x1 | x_t) ]     (mean over slots)

t_max = 1 - 1e-3 keeps t away from 1, where x_t = x1 and the model would only learn to copy.

DFM+Head: the rate head's generator u_theta is matched to the conditional velocity u_t(. , x_t | x1) of
the same path with the CTMC generalised KL (the Bregman divergence of phi(u) = u log u)::

    D(u, v) = sum_{x != z} [ v(x) - u(x) + u(x) log(u(x) / v(x)) ]  >= 0, = 0 iff v = u

Because D is linear in its first argument, E_{x1 | x_t} D(u(.|x1), v) is minimised by the marginal velocity
v = E_{x1 | x_t} u(.|x1) (generator matching; Holderrieth et al. 2024, Edit Flows). Both rates are taken in
units of beta'_t (see ``rate_head``), i.e. the loss is D/beta'_t: a time weighting that keeps it O(1) and
does not move the minimiser. The posterior cross-entropy is added with weight ``ce_weight`` (default 1) so
the greedy validation steps still have a posterior.

DD (masked diffusion, MDLM / LLaDA): each slot is masked with probability 1 - t, t ~ U(0, 1 - eps)::

    L = E_t [ 1 / (1 - t) * sum_{masked i} -log p(x1_i | x_t) / L ]     (weighting "elbo")

the ELBO weighting; "none" averages the cross-entropy over the masked slots instead.

AR: next-token cross-entropy with teacher forcing. The model reads x_t = [boa, x1_1, ..., x1_{L-1}] with
causal attention and its logits at position i predict x1_i (already aligned: no shift inside the loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dfm_vla.policy.probability_path import MetricPath
from dfm_vla.policy.rate_head import RateHeadOutput, replacement_log_probs
from dfm_vla.policy.velocity import conditional_velocity

DDWeighting = Literal["elbo", "none"]


@dataclass
class NoisedBatch:
    """x_t: (B, L) long model input; t: (B,) float32 time in [0, 1)."""

    x_t: Tensor
    t: Tensor


# ----- loss functions ----------------------------------------------------------------------------------


def masked_cross_entropy(
    logits: Tensor, targets: Tensor, slot_mask: Tensor | None = None, allowed: Tensor | None = None
) -> Tensor:
    """Mean over the counted slots of -log softmax(logits)[target]; (B, L, V), (B, L) -> scalar float32.

    allowed: (V,) bool; logits of other ids are masked to -inf first (targets must be allowed).
    """
    _check_logits(logits, targets)
    logp = _log_softmax(logits, allowed)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    return _masked_mean(nll, slot_mask)


def dfm_cross_entropy(
    logits: Tensor, x1: Tensor, path: MetricPath, slot_mask: Tensor | None = None
) -> Tensor:
    """DFM loss: -log p_{1|t}(x1 | x_t) over the path's slot vocabulary, mean over counted slots."""
    return masked_cross_entropy(logits, x1, slot_mask, path.allowed)


def rate_head_bregman_loss(
    head: RateHeadOutput,
    x_t: Tensor,
    x1: Tensor,
    t: Tensor,
    path: MetricPath,
    slot_mask: Tensor | None = None,
) -> Tensor:
    """Generalised KL D(u_t(., x_t | x1) / beta'_t, u_theta / beta'_t) per slot, mean over counted slots.

    head: log_rate (B, L), replacement_logits (B, L, V); x_t, x1: (B, L) long; t: (B,) float.
    """
    target = conditional_velocity(path, x_t, x1, t)  # (B, L, V), diagonal negative
    target = target.scatter(-1, x_t[..., None], 0.0) / path.beta_derivative(path.time_like(t, x_t))[..., None]
    target = target.float()
    log_q = replacement_log_probs(
        head, x_t, path.tensors_on(x_t.device)[1]
    )  # -inf at x_t and outside the slot vocabulary
    log_rate = head.log_rate.float()
    # D = lambda - sum_x u(x) [log lambda + log q(x)] + sum_x [u log u - u]; 0 * log 0 terms are 0.
    positive = target > 0
    log_model = torch.where(positive, log_rate[..., None] + log_q, torch.zeros_like(target))
    cross = (target * log_model).sum(-1)
    entropy = torch.xlogy(target, target).sum(-1) - target.sum(-1)
    per_slot = log_rate.exp() - cross + entropy
    return _masked_mean(per_slot, slot_mask)


def dd_masked_cross_entropy(
    logits: Tensor,
    x1: Tensor,
    x_t: Tensor,
    t: Tensor,
    mask_id: int,
    slot_mask: Tensor | None = None,
    weighting: DDWeighting = "elbo",
    allowed: Tensor | None = None,
) -> Tensor:
    """Masked-diffusion loss over the slots where x_t == mask_id (see module docstring); scalar float32.

    t: (B,) the unmasked fraction's expectation (mask probability 1 - t). ``allowed`` defaults to every id
    but ``mask_id`` (the model never predicts the mask).
    """
    _check_logits(logits, x1)
    if allowed is None:
        allowed = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        allowed[mask_id] = False
    logp = _log_softmax(logits, allowed)
    nll = -logp.gather(-1, x1[..., None]).squeeze(-1)
    counted = torch.ones_like(x1, dtype=torch.bool) if slot_mask is None else slot_mask.bool()
    masked = (x_t == mask_id) & counted
    if weighting == "elbo":
        weight = 1.0 / (1.0 - t.float()).clamp_min(1e-3)  # (B,)
        per_seq = (nll * masked).sum(-1) / counted.sum(-1).clamp_min(1)
        return (weight * per_seq).mean()
    if weighting == "none":
        return _masked_mean(nll, masked)
    raise ValueError(f"weighting: expected 'elbo' or 'none', got {weighting!r}")


def ar_cross_entropy(
    logits: Tensor, x1: Tensor, slot_mask: Tensor | None = None, allowed: Tensor | None = None
) -> Tensor:
    """AR next-token loss; logits (B, L, V) at position i already predict x1[:, i] (teacher forcing)."""
    return masked_cross_entropy(logits, x1, slot_mask, allowed)


def ar_inputs(x1: Tensor, boa_id: int) -> Tensor:
    """Teacher-forcing input [boa, x1_1, ..., x1_{L-1}] (B, L) for targets x1 (B, L)."""
    boa = torch.full_like(x1[:, :1], boa_id)
    return torch.cat([boa, x1[:, :-1]], dim=1)


# ----- objectives ----------------------------------------------------------------------------------------


def sample_time(
    batch_size: int, t_max: float, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """(B,) float32 t ~ U(0, t_max)."""
    return torch.rand(batch_size, generator=generator, device=device) * t_max


class DFMObjective:
    """Objective "dfm": x_t ~ p_t(. | x1) on the metric path, cross-entropy of the posterior."""

    name = "dfm"

    def __init__(self, path: MetricPath, t_max: float = 1.0 - 1e-3):
        if not 0.0 < t_max < 1.0:
            raise ValueError(f"t_max: expected in (0, 1), got {t_max}")
        self.path = path
        self.t_max = t_max

    def corrupt(self, x1: Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        t = sample_time(x1.shape[0], self.t_max, x1.device, generator)
        return NoisedBatch(x_t=self.path.sample(x1, t, generator), t=t)

    def loss(self, output, x1: Tensor, batch: NoisedBatch, slot_mask: Tensor | None = None) -> Tensor:
        return dfm_cross_entropy(output, x1, self.path, slot_mask)


class DFMHeadObjective(DFMObjective):
    """Objective "dfm_head": "dfm" plus the rate head Bregman loss; output = (logits, RateHeadOutput)."""

    name = "dfm_head"

    def __init__(self, path: MetricPath, t_max: float = 1.0 - 1e-3, ce_weight: float = 1.0):
        super().__init__(path, t_max)
        if ce_weight < 0:
            raise ValueError(f"ce_weight: expected >= 0, got {ce_weight}")
        self.ce_weight = ce_weight

    def loss(self, output, x1: Tensor, batch: NoisedBatch, slot_mask: Tensor | None = None) -> Tensor:
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], RateHeadOutput)):
            raise TypeError("output: expected a tuple (logits, RateHeadOutput) for the 'dfm_head' objective")
        logits, head = output
        loss = rate_head_bregman_loss(head, batch.x_t, x1, batch.t, self.path, slot_mask)
        if self.ce_weight > 0:
            loss = loss + self.ce_weight * dfm_cross_entropy(logits, x1, self.path, slot_mask)
        return loss


class DDObjective:
    """Objective "dd": each slot masked with probability 1 - t; cross-entropy on the masked slots."""

    name = "dd"

    def __init__(
        self, mask_id: int, weighting: DDWeighting = "elbo", t_max: float = 1.0 - 1e-3, allowed=None
    ):
        self.mask_id = int(mask_id)
        self.weighting = weighting
        self.t_max = t_max
        self.allowed = allowed

    def corrupt(self, x1: Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        t = sample_time(x1.shape[0], self.t_max, x1.device, generator)
        u = torch.rand(x1.shape, generator=generator, device=x1.device)
        x_t = torch.where(u < (1.0 - t)[:, None], torch.full_like(x1, self.mask_id), x1)
        return NoisedBatch(x_t=x_t, t=t)

    def loss(self, output, x1: Tensor, batch: NoisedBatch, slot_mask: Tensor | None = None) -> Tensor:
        return dd_masked_cross_entropy(
            output, x1, batch.x_t, batch.t, self.mask_id, slot_mask, self.weighting, self.allowed
        )


class ARObjective:
    """Objective "ar": teacher forcing; x_t = [boa, x1[:, :-1]], t = 0 (unused by a causal model)."""

    name = "ar"

    def __init__(self, boa_id: int, allowed=None):
        self.boa_id = int(boa_id)
        self.allowed = allowed

    def corrupt(self, x1: Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        return NoisedBatch(x_t=ar_inputs(x1, self.boa_id), t=torch.zeros(x1.shape[0], device=x1.device))

    def loss(self, output, x1: Tensor, batch: NoisedBatch, slot_mask: Tensor | None = None) -> Tensor:
        return ar_cross_entropy(output, x1, slot_mask, self.allowed)


OBJECTIVES = {"dfm": DFMObjective, "dfm_head": DFMHeadObjective, "dd": DDObjective, "ar": ARObjective}


def make_objective(
    name: str,
    *,
    path: MetricPath | None = None,
    mask_id: int | None = None,
    boa_id: int | None = None,
    **kwargs,
):
    """Build an objective by name: "dfm"/"dfm_head" need ``path``, "dd" ``mask_id``, "ar" ``boa_id``."""
    if name in ("dfm", "dfm_head"):
        if path is None:
            raise ValueError(f"path: the '{name}' objective needs a MetricPath")
        return OBJECTIVES[name](path, **kwargs)
    if name == "dd":
        if mask_id is None:
            raise ValueError("mask_id: the 'dd' objective needs the mask token id")
        return DDObjective(mask_id, **kwargs)
    if name == "ar":
        if boa_id is None:
            raise ValueError("boa_id: the 'ar' objective needs the boa token id")
        return ARObjective(boa_id, **kwargs)
    raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {name!r}")


# ----- helpers -------------------------------------------------------------------------------------------


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            f"logits: expected (B, L, V) with (B, L) = {tuple(targets.shape)}, got {tuple(logits.shape)}"
        )


def _log_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)
