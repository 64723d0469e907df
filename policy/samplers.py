"""Decoders: DFM two-stage (CTMC Euler + greedy validation), masked diffusion (DD) and autoregressive (AR).

One interface: a model is a :data:`Denoiser`, a function (x_t (B, L) long, t (B,) float in [0, 1)) ->
logits (B, L, V) over the action vocabulary (for AR, an :class:`ARStepper` over the model's KV cache).
Every decoder returns a :class:`SampleResult`, including how many tokens changed at each model call:
the refinement at work.

DFM (paper, "two-stage decoding"), on a time grid 0 = t_0 < ... < t_N = 1 (N = ``steps_fine``):

- stage 1, n = 0 .. N-1: posterior p_{1|t} = softmax(denoiser(x, t_n)) on the slot vocabulary; marginal
  velocity u(x, z) of the metric path (``velocity.marginal_velocity``); one Euler step of the CTMC with
  h = t_{n+1} - t_n (:func:`ctmc_euler_step`): each slot jumps with probability min(1, h * lambda),
  lambda = sum_{x != z} u(x, z), to a token drawn in proportion to u(., z).
- stage 2, ``steps_val`` times: x <- argmax p_{1|t}(. | x) at t = ``t_val`` (default t_{N-1}, the last time
  stage 1 called the model). Not at t = 1: a model trained with t close to 1 sees x_t = x1 there and learns
  to copy its input, so greedy steps at t = 1 would change nothing (reference/dfm-probe-findings.md).

Velocity: ``velocity="sample"`` (default) draws x1 from the posterior per slot and step and uses the
conditional velocity; ``"topk"`` sums over the top-k x1 (exact at k = V). Measured on a factorised
3-slot target (tests/test_samplers.py, 20,000 samples, noise floor ~0.008 TV): at 16 Euler steps the
sampled-x1 form stays at TV ~0.01 per slot while the exact marginal reaches 0.015-0.034 (coarse steps
clamp min(1, h lambda) harder on the averaged rate); at 32-64 steps both are at the floor.

DD: start all masked (or from a partly masked x0); at each of T steps predict every masked slot
(argmax, or sampled with a temperature), then unmask the most confident ones so that after step s about
n0 (1 - (s + 1) / T) slots stay masked. An unmasked slot is never revisited.

AR: left to right, one model call per slot, greedy; a written token is never revisited.

Fixed slots (real-time chunking, the actions that will run while a plan is made): DFM takes ``frozen``
(those slots start on their tokens and never jump), DD an ``x0`` unmasked there, AR a forced ``prefix``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from dfm_vla.policy.probability_path import MetricPath, sample_categorical
from dfm_vla.policy.rate_head import RateHeadOutput, head_rates
from dfm_vla.policy.velocity import VelocityMode, jump_intensity, marginal_velocity

Denoiser = Callable[[torch.LongTensor, torch.Tensor], torch.Tensor]
"""(x_t (B, L) long, t (B,) float in [0, 1)) -> logits (B, L, V)."""

RateFn = Callable[[torch.LongTensor, torch.Tensor], RateHeadOutput]
"""DFM+Head: (x_t (B, L), t (B,)) -> the rate head's output for every slot."""


class ARStepper(Protocol):
    """The narrow interface :func:`ar_sample` drives; the model implements it over its KV cache.

    The stepper is created by the model with the context (text, image, state tokens) already prefilled.
    ``step(prev_tokens)`` appends ``prev_tokens`` (B,) long (the boa id at the first call, then the token
    chosen for the previous slot) to the cache and returns the logits (B, V) for the next action slot.
    """

    def step(self, prev_tokens: torch.LongTensor) -> torch.Tensor: ...


@dataclass
class SampleResult:
    """tokens: (B, L) long. changed_per_step: (B, T) long, slots changed by model call s.

    num_model_calls: T. times: the t given to the model at each call (DFM, DD; AR: empty).
    history: (B, T + 1, L) long states before the first and after every call, if requested.
    """

    tokens: Tensor
    changed_per_step: Tensor
    num_model_calls: int
    times: tuple[float, ...] = ()
    history: Tensor | None = None


def ctmc_euler_step(
    z: Tensor, rates: Tensor, h: float | Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One Euler step of a CTMC per slot: returns (new tokens, jumped) of z's shape.

    z: (...) long current tokens; rates: (..., V) rates u(x, z) (the x = z entry and negatives are
    ignored); h: step size. Each slot jumps with probability min(1, h * lambda), lambda = sum_{x != z}
    u(x, z), to x drawn with probability u(x, z) / lambda.
    """
    if rates.shape[:-1] != z.shape:
        raise ValueError(f"rates: expected shape {tuple(z.shape)} + (V,), got {tuple(rates.shape)}")
    off = rates.float().scatter(-1, z[..., None], 0.0).clamp_min(0.0)
    lam = jump_intensity(off, z)
    p_jump = (h * lam).clamp(max=1.0)
    jump = torch.rand(z.shape, generator=generator, device=z.device) < p_jump
    moving = lam > 0
    target = sample_categorical(off, generator)  # rows with lambda = 0 give junk, and never jump
    jump = jump & moving
    return torch.where(jump, target, z), jump


def uniform_time_grid(steps: int, t_start: float = 0.0, device=None) -> Tensor:
    """(steps + 1,) float32 evenly spaced from ``t_start`` to 1."""
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    return torch.linspace(t_start, 1.0, steps + 1, device=device)


@torch.no_grad()
def dfm_sample(
    denoiser: Denoiser,
    path: MetricPath,
    batch_size: int,
    num_slots: int,
    *,
    steps_fine: int = 14,
    steps_val: int = 2,
    generator: torch.Generator | None = None,
    x0: Tensor | None = None,
    time_grid: Tensor | None = None,
    t_val: float | None = None,
    velocity: VelocityMode = "sample",
    top_k: int | None = None,
    temperature: float = 1.0,
    rate_fn: RateFn | None = None,
    frozen: Tensor | None = None,
    device: torch.device | str | None = None,
    return_history: bool = False,
) -> SampleResult:
    """Two-stage DFM decoding (module docstring): ``steps_fine`` Euler steps + ``steps_val`` greedy steps.

    x0: (B, L) start tokens (default uniform over the slot vocabulary = p_0). time_grid: increasing
    (steps_fine + 1,) times ending at 1 (default evenly spaced from 0; start later to refine a given x0);
    it overrides ``steps_fine``. velocity / top_k: how the marginal velocity is formed (``velocity.py``).
    temperature: the velocity's x1 comes from softmax(logits / temperature) (< 1 sharpens the posterior;
    1 is the model's posterior; the greedy steps take the argmax either way).
    rate_fn: DFM+Head, stage 1 takes its rates from the head instead of the path (stage 2 still uses the
    denoiser's posterior). generator: a torch.Generator on the sampling device, for reproducibility.
    frozen: (B, L) long, a token id where a slot is fixed (it starts there and never jumps; the model sees
    it at every call), -1 where the slot is refined (real-time chunking: the actions that run while the
    robot waits for this plan).
    """
    if steps_val < 0:
        raise ValueError(f"steps_val: expected >= 0, got {steps_val}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    device = torch.device(device) if device is not None else (x0.device if x0 is not None else path.device)
    if time_grid is None:
        time_grid = uniform_time_grid(steps_fine, device=device) if steps_fine > 0 else torch.zeros(1)
    time_grid = torch.as_tensor(time_grid, dtype=torch.float32, device=device).flatten()
    steps_fine = len(time_grid) - 1
    if steps_fine > 0 and (
        (time_grid.diff() <= 0).any() or time_grid[0] < 0 or abs(float(time_grid[-1]) - 1.0) > 1e-6
    ):
        raise ValueError(
            f"time_grid: expected increasing times in [0, 1] ending at 1, got {time_grid.tolist()}"
        )
    if t_val is None:
        t_val = float(time_grid[-2]) if steps_fine > 0 else 0.0
    if not 0.0 <= t_val < 1.0:
        raise ValueError(f"t_val: expected in [0, 1), got {t_val}")
    x = _start_tokens(x0, path, batch_size, num_slots, generator, device)
    hold = _frozen_slots(frozen, x, path)
    x = hold(x)

    recorder = _Recorder(x, return_history)
    for n in range(steps_fine):
        t_n, h = float(time_grid[n]), float(time_grid[n + 1] - time_grid[n])
        t = torch.full((batch_size,), t_n, device=device)
        if rate_fn is not None:
            rates = head_rates(rate_fn(x, t), x, t, path)
        else:
            logits = _check_output(denoiser(x, t), x, path.vocab_size)
            posterior = path.posterior_log_probs(logits if temperature == 1.0 else logits / temperature).exp()
            rates = marginal_velocity(path, x, posterior, t, mode=velocity, top_k=top_k, generator=generator)
        x_new, _ = ctmc_euler_step(x, rates, h, generator)
        x = recorder.record(x, hold(x_new), t_n)
    for _ in range(steps_val):
        t = torch.full((batch_size,), t_val, device=device)
        logits = _check_output(denoiser(x, t), x, path.vocab_size)
        x = recorder.record(x, hold(path.posterior_log_probs(logits).argmax(-1)), t_val)
    return recorder.result(x)


@torch.no_grad()
def dd_sample(
    denoiser: Denoiser,
    mask_id: int,
    batch_size: int,
    num_slots: int,
    steps: int = 16,
    *,
    x0: Tensor | None = None,
    allowed: Tensor | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    return_history: bool = False,
) -> SampleResult:
    """Masked-diffusion decoding (module docstring); the model sees t = fraction of unmasked slots.

    x0: (B, L) start, mask_id where masked (default all masked); its unmasked slots stay as they are.
    allowed: (V,) bool ids the model may write (default all but ``mask_id``). temperature 0: argmax;
    > 0: sample from softmax(logits / temperature). Confidence = the chosen token's probability.
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    device = (
        torch.device(device) if device is not None else (x0.device if x0 is not None else torch.device("cpu"))
    )
    if x0 is None:
        x = torch.full((batch_size, num_slots), int(mask_id), dtype=torch.long, device=device)
    else:
        x = _check_x0(x0, batch_size, num_slots).to(device)
    n0 = (x == mask_id).sum(-1)  # (B,) masked at the start
    recorder = _Recorder(x, return_history)
    for s in range(steps):
        masked = x == mask_id
        t = 1.0 - masked.float().mean(-1)
        logits = denoiser(x, t).float()
        _check_output(logits, x, None)
        keep = torch.ones(logits.shape[-1], dtype=torch.bool, device=device) if allowed is None else allowed
        keep = keep.to(device).clone()
        keep[mask_id] = False
        logp = torch.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
        if temperature > 0:
            gumbel = -torch.log(
                -torch.log(torch.rand(logp.shape, generator=generator, device=device).clamp_min(1e-20))
            )
            pred = (logp / temperature + gumbel).masked_fill(~keep, float("-inf")).argmax(-1)
        else:
            pred = logp.argmax(-1)
        confidence = logp.gather(-1, pred[..., None]).squeeze(-1).masked_fill(~masked, float("-inf"))
        remaining = torch.floor(n0.float() * (1.0 - (s + 1) / steps)).long()  # masked after this step
        k = (masked.sum(-1) - remaining).clamp_min(0)  # (B,) slots to unmask now
        rank = confidence.argsort(-1, descending=True).argsort(-1)  # 0 = most confident
        unmask = masked & (rank < k[:, None])
        x_new = torch.where(unmask, pred, x)
        x = recorder.record(x, x_new, float(t.mean()))
    return recorder.result(x)


@torch.no_grad()
def ar_sample(
    stepper: ARStepper,
    batch_size: int,
    num_slots: int,
    *,
    boa_id: int,
    allowed: Tensor | None = None,
    prefix: Tensor | None = None,
    device: torch.device | str | None = None,
    return_history: bool = False,
) -> SampleResult:
    """Greedy left-to-right decoding, one ``stepper.step`` per slot (num_model_calls = num_slots).

    allowed: (V,) bool ids that may be written (default all). prefix: (B, P) long tokens forced into the
    first P slots (teacher-forced through the stepper; they count 0 changes); the rest are decoded.
    """
    device = torch.device(device) if device is not None else (prefix.device if prefix is not None else "cpu")
    tokens = torch.zeros(batch_size, num_slots, dtype=torch.long, device=device)
    n_forced = 0
    if prefix is not None:
        if prefix.dim() != 2 or prefix.shape[0] != batch_size or prefix.shape[1] > num_slots:
            raise ValueError(
                f"prefix: expected shape ({batch_size}, P) with P <= {num_slots}, got {tuple(prefix.shape)}"
            )
        n_forced = prefix.shape[1]
    changed = torch.zeros(batch_size, num_slots, dtype=torch.long, device=device)
    history = [tokens.clone()] if return_history else None
    prev = torch.full((batch_size,), int(boa_id), dtype=torch.long, device=device)
    for i in range(num_slots):
        logits = stepper.step(prev)
        if logits.shape[0] != batch_size or logits.dim() != 2:
            raise ValueError(
                f"stepper.step: expected logits of shape ({batch_size}, V), got {tuple(logits.shape)}"
            )
        if i < n_forced:
            tok = prefix[:, i].to(device)
        else:
            logits = logits.float()
            if allowed is not None:
                logits = logits.masked_fill(~allowed.to(device), float("-inf"))
            tok = logits.argmax(-1)
            changed[:, i] = 1
        tokens[:, i] = tok
        prev = tok
        if history is not None:
            history.append(tokens.clone())
    return SampleResult(
        tokens=tokens,
        changed_per_step=changed,
        num_model_calls=num_slots,
        times=(),
        history=torch.stack(history, dim=1) if history is not None else None,
    )


# ----- helpers -------------------------------------------------------------------------------------------


class _Recorder:
    """Counts changed slots per model call and optionally keeps the token history."""

    def __init__(self, x: Tensor, keep_history: bool):
        self.changed: list[Tensor] = []
        self.times: list[float] = []
        self.history = [x.clone()] if keep_history else None

    def record(self, x_old: Tensor, x_new: Tensor, t: float) -> Tensor:
        self.changed.append((x_new != x_old).sum(-1))
        self.times.append(t)
        if self.history is not None:
            self.history.append(x_new.clone())
        return x_new

    def result(self, x: Tensor) -> SampleResult:
        changed = torch.stack(self.changed, dim=1) if self.changed else x.new_zeros(x.shape[0], 0)
        return SampleResult(
            tokens=x,
            changed_per_step=changed.long(),
            num_model_calls=len(self.changed),
            times=tuple(self.times),
            history=torch.stack(self.history, dim=1) if self.history is not None else None,
        )


def _check_x0(x0: Tensor, batch_size: int, num_slots: int) -> Tensor:
    if x0.shape != (batch_size, num_slots):
        raise ValueError(f"x0: expected shape ({batch_size}, {num_slots}), got {tuple(x0.shape)}")
    return x0.long()


def _start_tokens(x0, path: MetricPath, batch_size: int, num_slots: int, generator, device) -> Tensor:
    if x0 is None:
        return path.sample_source((batch_size, num_slots), generator=generator, device=device)
    x = _check_x0(x0, batch_size, num_slots).to(device)
    if not path.tensors_on(device)[1][x].all():
        raise ValueError("x0: expected only ids of the path's slot vocabulary (path.allowed)")
    return x


def _frozen_slots(frozen: Tensor | None, x: Tensor, path: MetricPath) -> Callable[[Tensor], Tensor]:
    """A function that puts the frozen tokens back into a state (B, L); identity without ``frozen``."""
    if frozen is None:
        return lambda state: state
    if frozen.shape != x.shape:
        raise ValueError(
            f"frozen: expected shape {tuple(x.shape)} (-1 where free), got {tuple(frozen.shape)}"
        )
    frozen = frozen.to(x.device).long()
    fixed = frozen >= 0
    if not path.tensors_on(x.device)[1][frozen[fixed]].all():
        raise ValueError("frozen: expected ids of the path's slot vocabulary (path.allowed) or -1")
    return lambda state: torch.where(fixed, frozen, state)


def _check_output(logits: Tensor, x: Tensor, vocab_size: int | None) -> Tensor:
    if (
        logits.dim() != 3
        or logits.shape[:2] != x.shape
        or (vocab_size is not None and logits.shape[-1] != vocab_size)
    ):
        want = f"({x.shape[0]}, {x.shape[1]}, {vocab_size if vocab_size is not None else 'V'})"
        raise ValueError(f"denoiser output: expected logits of shape {want}, got {tuple(logits.shape)}")
    return logits
