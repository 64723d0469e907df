"""Several episodes in parallel processes: ``make_vector_env(name, num_envs, **kwargs)``.

A gymnasium ``AsyncVectorEnv`` whose workers each build ``make_env(name, **kwargs)`` in a fresh
(``spawn``) process, so every worker has its own simulator and, with cameras, its own EGL context.
Reset options go to every worker: ``envs.reset(seed=[...], options={"init_state_id": k})``; per-worker
options need ``envs.call`` or one env per task.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym


def make_vector_env(
    name: str, num_envs: int, *, context: str = "spawn", **kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of env ``name`` (each built with ``kwargs``) stepping in parallel processes."""
    from dfm_vla.envs.registration import ENV_SPECS, make_env

    if name not in ENV_SPECS:
        raise ValueError(f"name: unknown env {name!r}; expected one of {sorted(ENV_SPECS)}")
    if num_envs < 1:
        raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
    return gym.vector.AsyncVectorEnv(
        [partial(make_env, name, **kwargs) for _ in range(num_envs)],
        context=context,
        shared_memory=False,  # gymnasium's shared memory garbles Text (language) observations
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
