"""Boolean attention masks over [prefix (P tokens)][action slots (L)]; True = the query may attend the key.

Three patterns (``ModelConfig.attention``):

- ``prefix_lm`` (default): prefix tokens attend the (non-padded) prefix only; action slots attend the whole
  prefix and every slot. The prefix never sees the noisy actions, so its keys and values are the same at
  every refinement step and the prefix KV cache is exact.
- ``bidirectional`` (the paper's setting): every token attends every non-padded token. The prefix's keys
  and values then depend on the current action tokens; the cache is approximate (adaptive cache).
- ``causal_actions`` (the autoregressive baseline): as ``prefix_lm``, but slot i attends slots <= i only.

Masks have shape (B, 1, Q, K) so that they broadcast over heads in ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch

from dfm_vla.policy.config import ATTENTION_MODES


def _check_mode(mode: str) -> None:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode: expected one of {ATTENTION_MODES}, got {mode!r}")


def full_mask(prefix_valid: torch.Tensor, num_slots: int, mode: str) -> torch.Tensor:
    """Mask for a full pass over prefix and slots.

    prefix_valid: (B, P) bool, False at padding. Returns (B, 1, P + L, P + L) bool.
    """
    _check_mode(mode)
    batch, prefix_len = prefix_valid.shape
    device = prefix_valid.device
    total = prefix_len + num_slots
    key_valid = torch.cat(
        [prefix_valid, torch.ones(batch, num_slots, dtype=torch.bool, device=device)], dim=1
    )
    mask = key_valid[:, None, None, :].expand(batch, 1, total, total).clone()
    if mode != "bidirectional":
        mask[:, :, :prefix_len, prefix_len:] = False  # the prefix never sees the actions
    if mode == "causal_actions":
        causal = torch.tril(torch.ones(num_slots, num_slots, dtype=torch.bool, device=device))
        mask[:, :, prefix_len:, prefix_len:] = causal
    _unblock_padded_queries(mask)
    return mask


def prefix_mask(prefix_valid: torch.Tensor) -> torch.Tensor:
    """Mask for encoding the prefix alone (prefix-LM and causal modes): (B, 1, P, P) bool."""
    batch, prefix_len = prefix_valid.shape
    mask = prefix_valid[:, None, None, :].expand(batch, 1, prefix_len, prefix_len).clone()
    _unblock_padded_queries(mask)
    return mask


def slots_mask(prefix_valid: torch.Tensor, num_slots: int, mode: str) -> torch.Tensor:
    """Mask for the action slots as queries against [prefix][slots] keys: (B, 1, L, P + L) bool."""
    _check_mode(mode)
    batch, prefix_len = prefix_valid.shape
    device = prefix_valid.device
    slots = torch.ones(num_slots, num_slots, dtype=torch.bool, device=device)
    if mode == "causal_actions":
        slots = torch.tril(slots)
    mask = torch.cat(
        [
            prefix_valid[:, None, None, :].expand(batch, 1, num_slots, prefix_len),
            slots[None, None].expand(batch, 1, num_slots, num_slots),
        ],
        dim=-1,
    )
    return mask


def step_mask(prefix_valid: torch.Tensor, num_written: int) -> torch.Tensor:
    """Mask for one autoregressive step: the new slot attends the prefix and the ``num_written`` slots
    before it plus itself. Returns (B, 1, 1, P + num_written + 1) bool."""
    batch = prefix_valid.shape[0]
    ones = torch.ones(batch, num_written + 1, dtype=torch.bool, device=prefix_valid.device)
    return torch.cat([prefix_valid, ones], dim=1)[:, None, None, :]


def _unblock_padded_queries(mask: torch.Tensor) -> None:
    """A padded query row with no allowed key would give NaN in sdpa; let it attend itself (its output
    is never used and no valid token attends it)."""
    q = mask.shape[-2]
    empty = ~mask.any(dim=-1)  # (B, 1, Q)
    if empty.any():
        eye = torch.eye(q, mask.shape[-1], dtype=torch.bool, device=mask.device)
        mask |= empty[..., None] & eye
