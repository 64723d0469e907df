"""Gymnasium environments (LIBERO, CALVIN, AgileX) and scripted experts. Imports no model code."""

from dfm_vla.envs.registration import ENV_SPECS, make_env, register_envs

register_envs()

__all__ = ["ENV_SPECS", "make_env", "register_envs"]
