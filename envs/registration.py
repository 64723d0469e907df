"""Env names a user types (``libero_goal``, ``agilex_pot_lift``, ``calvin_d``), mapped to gymnasium.

``make_env(name, **kwargs)`` is the factory every command uses; ``gymnasium.make(name)`` works too
once ``register_envs()`` has run (importing ``dfm_vla.envs`` runs it). Entry points are strings, so
registering imports no simulator.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

# name -> (entry point "module:Class", default kwargs). Each env family fills its own block.
ENV_SPECS: dict[str, tuple[str, dict[str, Any]]] = {}

# LIBERO (envs/libero)

# AgileX bimanual (envs/agilex)

# CALVIN re-creation (envs/calvin)


def register_envs() -> None:
    """Register every name in ``ENV_SPECS`` with gymnasium (idempotent)."""
    for name, (entry_point, kwargs) in ENV_SPECS.items():
        if name not in gym.registry:
            gym.register(id=name, entry_point=entry_point, kwargs=dict(kwargs))


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Create the env registered as ``name``; an unknown name lists the known ones."""
    if name not in ENV_SPECS:
        known = ", ".join(sorted(ENV_SPECS)) or "(none registered)"
        raise ValueError(f"unknown env name {name!r}; expected one of: {known}")
    register_envs()
    return gym.make(name, **kwargs)
