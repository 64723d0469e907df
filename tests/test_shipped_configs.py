"""Every training config in configs/ loads, and its model overrides name real ModelConfig fields."""

from dataclasses import fields
from pathlib import Path

import pytest

from dfm_vla.policy.config import ModelConfig
from dfm_vla.train.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_its_overrides_are_model_fields(path):
    cfg = load_config(path)
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(cfg.model_overrides or {}) - known
    assert not unknown, f"{path.name}: model_overrides not in ModelConfig: {sorted(unknown)}"
    assert cfg.model and cfg.objective in ("dfm", "dfm_head", "dd", "ar")
