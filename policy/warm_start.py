"""Refinement from the previous plan: the start state of a warm-started DFM decode.

A DFM decoder may revise every token, so a new chunk need not start from noise. After a plan of H actions
of which ``executed`` ran, the ``H - executed`` actions left over are a good guess for the front of the next
chunk; the tail is filled by repeating the last planned action. That guess x_hat is then noised onto the
path at time t0, x_t0 ~ p_t0(. | x_hat) (every slot independently), and the CTMC runs from t0 to 1 on a
grid of a few Euler steps (``dfm_sample(x0=..., time_grid=uniform_time_grid(steps, t0))``). The noise at t0
lets the model move any token the new observation disagrees with: on a metric path with action geometry a
token stays near its guess at large t0 and may go anywhere at small t0. At t0 = 0 the start is the path's
source (uniform), drawn exactly as a cold decode draws it, so the decode equals the cold one.

Token layout: the bins tokenizers put one token per (step, dim), step-major, so slot s * D + d holds step s,
dimension d (``policy/bin_tokenizer.py``). FAST tokens mix all steps of a chunk and cannot be shifted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfm_vla.policy.probability_path import MetricPath


def shifted_plan(previous: Tensor, action_dim: int, executed: int) -> Tensor:
    """(B, L) tokens of the previous chunks -> (B, L) guess: the unexecuted steps first, the last repeated.

    previous: (B, H * action_dim) long, step-major. executed: steps of it that ran (0 <= executed < H).
    """
    if previous.dim() != 2 or previous.shape[1] % action_dim:
        raise ValueError(
            f"previous: expected (B, H * {action_dim}) tokens, got shape {tuple(previous.shape)}"
        )
    steps = previous.reshape(previous.shape[0], -1, action_dim)
    horizon = steps.shape[1]
    if not 0 <= executed < horizon:
        raise ValueError(f"executed: expected 0 <= executed < {horizon} (the chunk length), got {executed}")
    rest = steps[:, executed:]
    tail = steps[:, -1:].expand(-1, executed, -1)
    return torch.cat([rest, tail], dim=1).reshape(previous.shape)


def warm_start_state(
    path: MetricPath, guess: Tensor, t0: float, generator: torch.Generator | None = None
) -> Tensor:
    """x_t0 ~ p_t0(. | guess) per slot, (B, L) long; at t0 = 0 the source draw of a cold decode."""
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"t0: expected a time in [0, 1), got {t0}")
    if t0 == 0.0:
        return path.sample_source(tuple(guess.shape), generator=generator, device=guess.device)
    if not path.tensors_on(guess.device)[1][guess].all():
        raise ValueError("guess: expected only ids of the path's slot vocabulary (path.allowed)")
    return path.sample(guess, t0, generator=generator)
