"""Env names a user types (``libero_goal``, ``agilex_pot_lift``, ``calvin_d``), mapped to gymnasium.

``make_env(name, **kwargs)`` is the factory every command uses; ``gymnasium.make(name)`` works too
once ``register_envs()`` has run (importing ``dfm_vla.envs`` runs it). Entry points are strings, so
registering imports no simulator.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

# name -> (entry point "module:Class", default kwargs). Each env family fills its own block.
ENV_SPECS: dict[str, tuple[str, dict[str, Any]]] = {}

# env name -> scripted expert factory "module:function"; ``factory(env_name) -> expert`` with
# ``expert.reset(env)`` and ``expert.act(obs) -> action`` (used by ``python cli.py collect``).
EXPERTS: dict[str, str] = {}

# LIBERO (envs/libero)
for _suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
    ENV_SPECS[_suite] = ("dfm_vla.envs.libero.env:LiberoEnv", {"suite": _suite})
ENV_SPECS["libero_long"] = ("dfm_vla.envs.libero.env:LiberoEnv", {"suite": "libero_10"})
EXPERTS["libero_goal"] = "dfm_vla.envs.libero.goal_experts:make_goal_expert"
EXPERTS["libero_spatial"] = "dfm_vla.envs.libero.spatial_experts:make_spatial_expert"
EXPERTS["libero_object"] = "dfm_vla.envs.libero.object_experts:make_object_expert"
EXPERTS["libero_10"] = EXPERTS["libero_long"] = "dfm_vla.envs.libero.long_experts:make_long_expert"

# AgileX bimanual (envs/agilex)
for _task, _cls in (
    ("pot_lift", "PotLiftEnv"),
    ("place_veg", "PlaceVegEnv"),
    ("place_block", "PlaceBlockEnv"),
):
    ENV_SPECS[f"agilex_{_task}"] = (f"dfm_vla.envs.agilex.tasks:{_cls}", {})
    EXPERTS[f"agilex_{_task}"] = "dfm_vla.envs.agilex.expert:make_expert"

# CALVIN re-creation (envs/calvin)
for _scene in "abcd":
    ENV_SPECS[f"calvin_{_scene}"] = ("dfm_vla.envs.calvin.env:CalvinEnv", {"scene": _scene.upper()})
    EXPERTS[f"calvin_{_scene}"] = "dfm_vla.envs.calvin.expert:make_expert"


def register_envs() -> None:
    """Register every name in ``ENV_SPECS`` with gymnasium (idempotent)."""
    for name, (entry_point, kwargs) in ENV_SPECS.items():
        if name not in gym.registry:
            gym.register(id=name, entry_point=entry_point, kwargs=dict(kwargs))


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Create the env registered as ``name``; an unknown name lists the known ones."""
    _check_known(name)
    register_envs()
    spec = gym.spec(name)
    if "max_episode_steps" in kwargs:
        # gym.make would take this for its own TimeLimit wrapper; our envs keep the limit themselves.
        limit = kwargs.pop("max_episode_steps")
        spec = dataclasses.replace(spec, kwargs={**spec.kwargs, "max_episode_steps": limit})
    return gym.make(spec, **kwargs)


def env_init_parameters(name: str) -> set[str]:
    """Keyword arguments the env class registered as ``name`` accepts (imports its module)."""
    import importlib
    import inspect

    _check_known(name)
    module_name, class_name = ENV_SPECS[name][0].split(":")
    env_class = getattr(importlib.import_module(module_name), class_name)
    return set(inspect.signature(env_class.__init__).parameters) - {"self"}


def _check_known(name: str) -> None:
    if name not in ENV_SPECS:
        known = ", ".join(sorted(ENV_SPECS)) or "(none registered)"
        raise ValueError(f"unknown env name {name!r}; expected one of: {known}")
