"""Scripted expert for LIBERO-Spatial: every task is "pick up the black bowl <where> and place it on the
plate" (BDDL goal ``On(akita_black_bowl_1, plate_1)``); only the bowl's start differs (table, cookie box,
ramekin, stove, cabinet top, top drawer). One script: the LIBERO-Goal rim grasp, a lift that clears
the bowl's support, a carry to the plate centre and a release just above it.
"""

from __future__ import annotations

import numpy as np

from dfm_vla.envs.libero.expert_base import Script, ScriptContext, ScriptedExpert
from dfm_vla.envs.libero.goal_experts import bowl_grasp, carry_and_place

BOWL, PLATE = "akita_black_bowl_1", "plate_1"


def bowl_on_plate(c: ScriptContext) -> Script:
    lift_z = max(1.10, c.obj(BOWL)[2] + 0.20)
    yield from bowl_grasp(c, lift_z=lift_z, bowl=BOWL)
    plate = c.obj(PLATE)
    yield from carry_and_place(c, BOWL, np.array([plate[0], plate[1], plate[2] + 0.02]), carry_z=lift_z)


def make_spatial_expert(env_name: str = "libero_spatial") -> ScriptedExpert:
    """The LIBERO-Spatial expert (all 10 tasks share one script)."""
    if env_name != "libero_spatial":
        raise ValueError(f"env_name: the LIBERO-Spatial expert serves 'libero_spatial', got {env_name!r}")
    return ScriptedExpert(dict.fromkeys(range(10), bowl_on_plate))
