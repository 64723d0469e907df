"""Low-dimensional state (proprioception, object poses) -> a few tokens.

The processor concatenates the observation keys listed in ``ModelConfig.state_keys`` and normalises them
with the checkpoint's statistics; this module maps the (B, S) float vector to (B, state_tokens, hidden)
with a two-layer MLP (SiLU), one learned projection per token.
"""

from __future__ import annotations

import torch
from torch import nn


class StateEncoder(nn.Module):
    """(B, state_dim) float -> (B, num_tokens, hidden)."""

    def __init__(self, state_dim: int, num_tokens: int, hidden_size: int):
        super().__init__()
        if state_dim <= 0 or num_tokens <= 0:
            raise ValueError(
                f"StateEncoder: expected state_dim > 0 and num_tokens > 0, got {state_dim}, {num_tokens}"
            )
        self.state_dim, self.num_tokens, self.hidden_size = state_dim, num_tokens, hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(state_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, num_tokens * hidden_size),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state: expected shape (B, {self.state_dim}), got {tuple(state.shape)}")
        out = self.mlp(state.to(self.mlp[0].weight.dtype))
        return out.view(state.shape[0], self.num_tokens, self.hidden_size)
