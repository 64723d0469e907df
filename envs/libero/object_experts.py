"""Scripted expert for LIBERO-Object: "pick up the <object> and place it in the basket".

The BDDL goal is ``In(<object>, basket_1_contain_region)``. One script for all 10 tasks, driven by the
object's collision bounding box (read from the simulator): a top-down grasp a little below the object's
top (at its centre for flat boxes), fingers across its narrower horizontal side, a lift that clears the
basket rim, a carry over the basket centre and a release low inside it.
"""

from __future__ import annotations

import numpy as np

from dfm_vla.envs.libero.expert_base import (
    CLOSE,
    OPEN,
    R_DOWN,
    Script,
    ScriptContext,
    ScriptedExpert,
    rot_z,
    world_aabb,
)

BASKET, CONTAIN_SITE = "basket_1", "basket_1_contain_region"


def target_object(c: ScriptContext) -> str:
    """The object the task's BDDL goal ``(In <object> basket_1_contain_region)`` names."""
    for predicate in c.env.task.goal:
        if predicate[0] == "in" and predicate[2] == CONTAIN_SITE:
            return predicate[1]
    raise ValueError(
        f"task {c.env.task.name}: expected an In(<object>, {CONTAIN_SITE}) goal, got {c.env.task.goal}"
    )


def object_in_basket(c: ScriptContext) -> Script:
    obj = target_object(c)
    low, high = world_aabb(c, obj)
    size = high - low
    c.grip = OPEN
    # fingers (grip-site y axis) across the narrower horizontal side
    c.R_target = R_DOWN.copy() if size[1] <= size[0] else rot_z(np.pi / 2) @ R_DOWN
    center = (low + high) / 2
    if size[2] < 0.04:  # flat box: pinch at mid-height, fingertips just above the floor
        grip_z = max(center[2] + 0.004, low[2] + 0.014)
    else:  # tall: pinch 2.5 cm below the top
        grip_z = high[2] - 0.025
    grip_offset = np.array([center[0], center[1], grip_z]) - c.obj(obj)
    yield from c.move_above_then_down(lambda: c.obj(obj) + grip_offset, clearance=0.08)
    yield from c.set_grip(CLOSE, 15)

    basket_low, basket_high = world_aabb(c, BASKET)
    below_grip = grip_z - low[2]  # object bottom is this far below the grip site
    carry_z = basket_high[2] + 0.04 + below_grip
    yield from c.move(lambda: np.array([*c.eef()[:2], carry_z]), vmax=0.8, tol=0.015, max_steps=60)
    contain = c.site(CONTAIN_SITE)
    yield from c.move(np.array([contain[0], contain[1], carry_z]), tol=0.015, max_steps=120)
    release_z = basket_low[2] + 0.04 + below_grip
    yield from c.precise(
        c.move(np.array([contain[0], contain[1], release_z]), vmax=0.5, tol=0.01, max_steps=60)
    )
    yield from c.set_grip(OPEN, 10)
    yield from c.move(lambda: np.array([*c.eef()[:2], carry_z + 0.05]), tol=0.015, max_steps=40)


def make_object_expert(env_name: str = "libero_object") -> ScriptedExpert:
    """The LIBERO-Object expert (all 10 tasks share one script)."""
    if env_name != "libero_object":
        raise ValueError(f"env_name: the LIBERO-Object expert serves 'libero_object', got {env_name!r}")
    return ScriptedExpert(dict.fromkeys(range(10), object_in_basket))
