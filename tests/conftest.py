"""Shared test set-up: headless MuJoCo rendering and a repository-root fixture."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def one_torch_thread():
    """Many tiny torch ops: one thread avoids oversubscribing the 2 shared CI cores (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
