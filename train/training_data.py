"""What the loop feeds the model: a config's demos as train and validation chunk data sets, the action
tokenizer to fit on them, and batch arrays -> the model's prefix inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dfm_vla.train.config import TrainConfig


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
