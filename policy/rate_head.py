"""The DFM+Head auxiliary head (paper variant 1, after Edit Flows, Havasi et al. 2025).

From the hidden state of each action slot the head predicts a CTMC generator directly, instead of
deriving it from the posterior and the metric path:

    u_theta(x, z) = beta'_t * lambda_theta * q_theta(x)      for x != z (z = the slot's current token)

- ``log_rate`` (B, L): log lambda_theta, the slot's jump rate **in units of beta'_t** (the path's rate
  scale, which grows like c / (1 - t)^2). Predicting the rate relative to beta'_t keeps the head's output
  and its loss O(1) at every t; it is the same generator, only parameterised differently.
- ``replacement_logits`` (B, L, V): q_theta, the distribution of the new token, renormalised over the
  slot vocabulary without the current token (a jump always changes the token).

It is trained with :func:`dfm_vla.policy.losses.rate_head_bregman_loss` against the conditional velocity of
the same metric path; :func:`head_rates` turns its output into rates for
:func:`dfm_vla.policy.samplers.ctmc_euler_step` (``dfm_sample(..., rate_fn=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dfm_vla.policy.probability_path import MetricPath


@dataclass
class RateHeadOutput:
    """log_rate: (B, L) log jump rate in units of beta'_t; replacement_logits: (B, L, V)."""

    log_rate: Tensor
    replacement_logits: Tensor


@dataclass
class RateHeadConfig:
    hidden_size: int
    vocab_size: int
    intermediate_size: int | None = None  # default: hidden_size
    max_log_rate: float = 10.0  # log_rate is soft-clamped to [-max, max] for stability


class RateHead(nn.Module):
    """Hidden states (B, L, H) -> :class:`RateHeadOutput`: a small MLP trunk and two linear outputs."""

    def __init__(self, config: RateHeadConfig):
        super().__init__()
        self.config = config
        inner = config.intermediate_size or config.hidden_size
        self.trunk = nn.Sequential(
            nn.LayerNorm(config.hidden_size), nn.Linear(config.hidden_size, inner), nn.GELU()
        )
        self.rate = nn.Linear(inner, 1)
        self.replacement = nn.Linear(inner, config.vocab_size)

    def forward(self, hidden: Tensor) -> RateHeadOutput:
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"hidden: expected shape (B, L, {self.config.hidden_size}), got {tuple(hidden.shape)}"
            )
        h = self.trunk(hidden)
        bound = self.config.max_log_rate
        log_rate = bound * torch.tanh(self.rate(h).squeeze(-1) / bound)
        return RateHeadOutput(log_rate=log_rate, replacement_logits=self.replacement(h))


def replacement_log_probs(output: RateHeadOutput, z: Tensor, allowed: Tensor) -> Tensor:
    """(B, L, V) float32 log q_theta(x): over the allowed ids except the current token z (B, L)."""
    logits = output.replacement_logits.float().masked_fill(~allowed.to(z.device), float("-inf"))
    logits = logits.scatter(-1, z[..., None], float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def head_rates(output: RateHeadOutput, z: Tensor, t: Tensor | float, path: MetricPath) -> Tensor:
    """(B, L, V) off-diagonal rates u_theta(x, z) = beta'_t lambda_theta q_theta(x); zero at x = z."""
    t = path.time_like(t, z)
    scale = path.beta_derivative(t) * output.log_rate.float().exp()
    return scale[..., None] * replacement_log_probs(output, z, path.tensors_on(z.device)[1]).exp()
