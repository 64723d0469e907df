"""Chunk data set: each time step of each demo becomes (observation, next H actions).

- Splits are by whole episode and deterministic: per task, a seeded permutation puts the first
  ``val_fraction`` of episodes in validation; ``data_fraction`` then keeps the first share of the
  remaining ones (so a 10% run's episodes are a subset of a 50% run's, and the validation set is
  the same for every fraction).
- Chunks past an episode's end repeat its last action; ``action_mask`` (H,) marks the real steps.
- The action tokenizer and the state statistics are fitted on the training split only.

A batch (``ChunkDataset.batch(indices)``) is a dict::

    language      list[str] (B)
    state         (B, S) float32, the concatenated ``state_keys`` (raw units; absent if no keys)
    images        (B, V, H, W, 3) uint8 for ``image_keys`` (absent if none)
    actions       (B, H, A) float32 in original units
    action_mask   (B, H) bool, False on padded steps
    action_tokens (B, L) int64 (when a tokenizer is attached)
    slot_mask     (B, L) bool, the loss mask over the L slots (bins: the step mask repeated per dim;
                  FAST, whose tokens mix steps: all True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfm_vla.train.readers import Episode


@dataclass
class EpisodeSplit:
    """Indices into the episode list: ``train`` (after ``data_fraction``) and ``val``."""

    train: list[int]
    val: list[int]
    train_full: list[int]  # the training split before data_fraction


def split_episodes(
    episodes: list[Episode], val_fraction: float = 0.1, data_fraction: float = 1.0, seed: int = 0
) -> EpisodeSplit:
    """Deterministic, per-task split of whole episodes (see module docstring)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
    if not 0.0 < data_fraction <= 1.0:
        raise ValueError(f"data_fraction: expected a number in (0, 1], got {data_fraction}")
    by_task: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_task.setdefault(int(ep.task_index), []).append(i)
    train, val, train_full = [], [], []
    for task in sorted(by_task):
        members = by_task[task]
        order = np.random.default_rng([int(seed), task]).permutation(len(members))
        members = [members[j] for j in order]
        n_val = 0
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val.extend(members[:n_val])
        rest = members[n_val:]
        train_full.extend(rest)
        train.extend(rest[: max(1, math.ceil(data_fraction * len(rest) - 1e-9))])
    return EpisodeSplit(train=sorted(train), val=sorted(val), train_full=sorted(train_full))


def chunk_actions(actions: np.ndarray, start: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Actions ``[start, start + horizon)`` of one episode (T, A), the tail padded with the last row.

    Returns (chunk (H, A) float32, mask (H,) bool with False on padded steps).
    """
    length = actions.shape[0]
    stop = min(start + horizon, length)
    chunk = actions[start:stop]
    mask = np.ones(horizon, dtype=bool)
    if stop - start < horizon:
        pad = np.repeat(actions[length - 1 : length], horizon - (stop - start), axis=0)
        chunk = np.concatenate([chunk, pad], axis=0)
        mask[stop - start :] = False
    return chunk.astype(np.float32, copy=False), mask


class ChunkDataset:
    """All (episode, t) pairs of ``episodes``; arrays are stacked once, batches are gathered by index.

    episodes: the demos of one split. horizon: H. state_keys: low-dimensional obs keys concatenated
    into ``state`` (in this order). image_keys: ``<camera>_rgb`` keys stacked into ``images``.
    """

    def __init__(
        self,
        episodes: list[Episode],
        horizon: int,
        state_keys: list[str] | tuple[str, ...] = ("state",),
        image_keys: list[str] | tuple[str, ...] = (),
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon: expected a positive integer, got {horizon}")
        if not episodes:
            raise ValueError("episodes: expected at least one episode, got none")
        self.horizon = int(horizon)
        self.state_keys = list(state_keys)
        self.image_keys = list(image_keys)
        action_dims = {ep.actions.shape[1] for ep in episodes}
        if len(action_dims) != 1:
            dims = sorted(action_dims)
            raise ValueError(f"actions: expected one action dimension across episodes, got {dims}")
        self.action_dim = action_dims.pop()
        for ep in episodes:
            for key in self.state_keys + self.image_keys:
                if key not in ep.obs:
                    raise ValueError(f"{ep.name}: obs[{key!r}] missing; available: {sorted(ep.obs)}")

        chunks, masks, states, images, episode_of, step_of = [], [], [], [], [], []
        self.languages: list[str] = []
        for e, ep in enumerate(episodes):
            self.languages.append(ep.language)
            for t in range(len(ep)):
                chunk, mask = chunk_actions(ep.actions, t, self.horizon)
                chunks.append(chunk)
                masks.append(mask)
            episode_of.append(np.full(len(ep), e, dtype=np.int64))
            step_of.append(np.arange(len(ep), dtype=np.int64))
            if self.state_keys:
                parts = [ep.obs[k].reshape(len(ep), -1).astype(np.float32) for k in self.state_keys]
                states.append(np.concatenate(parts, axis=1))
            if self.image_keys:
                images.append(np.stack([ep.obs[k] for k in self.image_keys], axis=1))
        self.actions = np.stack(chunks)  # (N, H, A)
        self.action_mask = np.stack(masks)  # (N, H)
        self.episode_of = np.concatenate(episode_of)  # (N,)
        self.step_of = np.concatenate(step_of)  # (N,)
        self.states = np.concatenate(states) if states else None  # (N, S)
        self.images = np.concatenate(images) if images else None  # (N, V, H, W, 3)
        self.episode_names = [ep.name for ep in episodes]
        self.action_tokens: np.ndarray | None = None
        self.slot_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def state_dim(self) -> int:
        return 0 if self.states is None else int(self.states.shape[1])

    def fit_tokenizer(self, tokenizer, max_chunks: int | None = 50_000, seed: int = 0):
        """Fit ``tokenizer`` on this split's chunks (a seeded subsample of ``max_chunks``); returns it."""
        chunks = self.actions
        if max_chunks is not None and len(chunks) > max_chunks:
            pick = np.sort(np.random.default_rng(seed).choice(len(chunks), max_chunks, replace=False))
            chunks = chunks[pick]
        return tokenizer.fit(chunks)

    def state_statistics(self) -> dict[str, list[float]] | None:
        """Mean, std, 1st/99th percentiles of ``state`` over this split (call on the training split)."""
        from dfm_vla.policy.processor import state_statistics

        return None if self.states is None else state_statistics(self.states)

    def attach_tokenizer(self, tokenizer, mask_padded_steps: bool = True) -> None:
        """Encode every chunk once: ``action_tokens`` (N, L) and ``slot_mask`` (N, L)."""
        tokens = np.asarray(tokenizer.encode(self.actions), dtype=np.int64)
        slots = tokens.shape[1]
        if mask_padded_steps and slots == self.horizon * self.action_dim:
            # One token per (step, dim), time-major (bins): mask the padded steps' slots.
            slot_mask = np.repeat(self.action_mask, self.action_dim, axis=1)
        else:
            slot_mask = np.ones_like(tokens, dtype=bool)
        self.action_tokens, self.slot_mask = tokens, slot_mask

    def batch(self, indices: np.ndarray | list[int]) -> dict[str, Any]:
        """Gather a batch (module docstring) as numpy arrays and a list of strings."""
        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, Any] = {
            "language": [self.languages[e] for e in self.episode_of[idx]],
            "actions": self.actions[idx],
            "action_mask": self.action_mask[idx],
        }
        if self.states is not None:
            out["state"] = self.states[idx]
        if self.images is not None:
            out["images"] = self.images[idx]
        if self.action_tokens is not None:
            out["action_tokens"] = self.action_tokens[idx]
            out["slot_mask"] = self.slot_mask[idx]
        return out

    def observation(self, index: int) -> dict[str, Any]:
        """The agent-style observation dict of one sample: ``language``, ``state``, ``images``."""
        obs: dict[str, Any] = {"language": self.languages[self.episode_of[index]]}
        if self.states is not None:
            obs["state"] = self.states[index]
        if self.images is not None:
            obs["images"] = {
                k.removesuffix("_rgb"): self.images[index, v] for v, k in enumerate(self.image_keys)
            }
        return obs


class EpochSampler:
    """Deterministic shuffled batches with a resumable position, sharded over ranks.

    Each epoch is a permutation of range(n) seeded by (seed, epoch). A global step takes
    ``batch_size * world_size`` indices; rank r gets its slice. The last incomplete global batch
    of an epoch is dropped. ``state_dict()`` / ``load_state_dict()`` give (epoch, position).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size * world_size > n:
            raise ValueError(
                f"batch_size: {batch_size} per rank x {world_size} ranks exceeds the {n} training samples"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_indices(self) -> np.ndarray:
        """Indices of this rank's next batch (batch_size,)."""
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > self.n:
            self.epoch += 1
            self.position = 0
            self._perm = self._permutation(self.epoch)
        start = self.position + self.rank * self.batch_size
        out = self._perm[start : start + self.batch_size]
        self.position += global_batch
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)
