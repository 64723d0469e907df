"""Scripted experts for the 10 LIBERO-Goal tasks (one shared scene, privileged simulator state).

Recipes follow the measured facts in the project's LIBERO notes: a rim grasp for the bowl, a neck
grasp for the wine bottle, a horizontal pinch of the drawer handle bar, a grasp-and-twist of the stove
knob, a rim pinch to carry the plate. Each script is a generator of actions (see ``expert_base``).
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
    rot_x,
    rot_y,
    rot_z,
)

BOWL, CHEESE, BOTTLE, PLATE = "akita_black_bowl_1", "cream_cheese_1", "wine_bottle_1", "plate_1"
HANDLE_GEOMS = {
    "top": "wooden_cabinet_1_g18",
    "middle": "wooden_cabinet_1_g29",
    "bottom": "wooden_cabinet_1_g40",
}
R_HORIZ = rot_x(-np.pi / 2) @ R_DOWN  # approach along -y, fingers spread vertically
BOTTLE_NECK = 0.133  # grasp height above the bottle origin (its base)


def bowl_rim_point(c: ScriptContext, theta: float, dz: float, bowl: str = BOWL) -> np.ndarray:
    """Grip-site target on the bowl rim at angle ``theta`` from +y toward -x, ``dz`` above its origin."""
    return c.obj(bowl) + [-0.052 * np.sin(theta), 0.052 * np.cos(theta), dz]


def bowl_grasp(
    c: ScriptContext,
    theta: float = 0.7,
    lift_z: float = 1.10,
    dz: float = 0.035,
    bowl: str = BOWL,
    lean_x: float = 0.0,
    clearance: float = 0.08,
    lift_vmax: float = 0.8,
) -> Script:
    """Pinch the bowl rim at angle ``theta`` from +y toward -x, ``dz`` above the bowl origin (fingers
    along world y), then lift the grip site to ``lift_z``. ``lean_x`` (rad) tilts the hand about world
    y so that its upper end leans toward -x (clear of an obstacle on the +x side)."""
    c.R_target = rot_y(-lean_x) @ R_DOWN
    c.grip = OPEN
    yield from c.move_above_then_down(bowl_rim_point(c, theta, dz, bowl), clearance=clearance)
    yield from c.set_grip(CLOSE, 15)
    yield from c.move(lambda: np.array([*c.eef()[:2], lift_z]), vmax=lift_vmax, tol=0.01, max_steps=60)


def carry_and_place(
    c: ScriptContext,
    obj: str,
    obj_goal: np.ndarray,
    carry_z: float,
    release_steps: int = 8,
    carry_vmax: float = 1.0,
) -> Script:
    """Carry the held ``obj`` so its origin reaches ``obj_goal``, at ``carry_z`` then down; release."""
    offset = c.eef() - c.obj(obj)
    goal = obj_goal + offset
    yield from c.move(np.array([*goal[:2], max(carry_z, goal[2])]), vmax=carry_vmax, tol=0.01, max_steps=150)
    yield from c.precise(c.move(goal, vmax=0.5, tol=0.006, max_steps=80))
    yield from c.set_grip(OPEN, release_steps)
    yield from c.move(
        lambda: c.eef() * [1, 1, 0] + [0, 0, max(c.eef()[2], goal[2]) + 0.08], tol=0.01, max_steps=30
    )


def open_drawer(c: ScriptContext, level: str, pull: float = 0.155) -> Script:
    """Horizontal pinch of the drawer's handle bar, then pull it toward +y by ``pull`` m."""
    handle = lambda: c.geom(HANDLE_GEOMS[level])  # noqa: E731
    h0 = handle()
    c.grip = OPEN
    c.R_target = R_HORIZ.copy()
    yield from c.move(h0 + [0, 0.15, 0.03], tol=0.015, rot_tol=0.06, max_steps=60)
    yield from c.move(h0 + [0, 0.10, 0], tol=0.006, rot_tol=0.04, max_steps=40)
    yield from c.precise(c.move(handle, vmax=0.4, tol=0.004, max_steps=50))
    yield from c.set_grip(CLOSE, 15)
    yield from c.move(h0 + [0, pull, 0], vmax=0.6, tol=0.004, max_steps=80)


def task0_open_middle_drawer(c: ScriptContext) -> Script:
    yield from open_drawer(c, "middle")
    yield from c.hold(20)


def task1_bowl_on_stove(c: ScriptContext) -> Script:
    yield from bowl_grasp(c)
    cook = c.site("flat_stove_1_cook_region")
    yield from carry_and_place(c, BOWL, np.array([cook[0], cook[1], 0.932]), carry_z=1.10)


def task2_bottle_on_cabinet(c: ScriptContext) -> Script:
    yield from bottle_grasp(c, lift_z=1.30)
    top = c.site("wooden_cabinet_1_top_side")
    yield from carry_and_place(c, BOTTLE, np.array([top[0], top[1], 1.132]), carry_z=1.30)


def task3_top_drawer_bowl_inside(c: ScriptContext, carry_z: float = 1.25, lean_x: float = 0.3) -> Script:
    # The longest task (about 245 of 300 steps). The open top drawer overhangs the +x half of the bowl:
    # the hand leans ``lean_x`` rad toward -x so that its upper end clears the drawer's -x side wall
    # (upright, 15/20 on seeds 100-119: the descent stalled on the wall at the bowl's +x extreme; leaning
    # 0.3 rad, 30/30 on seeds 100-129). From the released handle the hand goes straight to a point 5 cm
    # higher above the grasp, with a shorter slow descent and a faster lift (274 -> 249 steps on seed 100).
    # Held-out seeds 9000-9049: 50/50, 237-249 steps.
    c.rot_limit = 1.0  # turn the hand faster
    yield from open_drawer(c, "top")
    yield from c.set_grip(OPEN, 6)
    yield from c.move(c.eef() + [0, 0.06, 0], tol=0.015, max_steps=15)
    c.R_target = rot_y(-lean_x) @ R_DOWN
    rim = bowl_rim_point(c, 0.7, 0.030)
    yield from c.move(np.array([*rim[:2], c.eef()[2] + 0.05]), tol=0.02, rot_tol=0.3, max_steps=40)
    yield from bowl_grasp(
        c, theta=0.7, lift_z=carry_z, dz=0.030, lean_x=lean_x, clearance=0.06, lift_vmax=1.0
    )
    region = c.site("wooden_cabinet_1_top_region")
    yield from carry_and_place(c, BOWL, region + [0, 0.025, -0.02], carry_z=carry_z)


def task4_bowl_on_cabinet(c: ScriptContext) -> Script:
    yield from bowl_grasp(c, lift_z=1.25)
    top = c.site("wooden_cabinet_1_top_side")
    yield from carry_and_place(c, BOWL, np.array([top[0], top[1], 1.13]), carry_z=1.25)


CHEESE_HALF_XY = np.array([0.0405, 0.0215])  # the cream cheese box's half extent in xy (fixed yaw)


def unit(theta: float) -> np.ndarray:
    """The xy unit vector at angle ``theta`` from +y toward -x."""
    return np.array([-np.sin(theta), np.cos(theta)])


def cheese_clearance(c: ScriptContext, theta: float) -> float:
    """xy distance (m) from the open outer finger of a radial plate-rim pinch at angle ``theta`` (0.115 m
    from the plate centre) to the cream cheese box; 0 when it lands on the cheese."""
    finger = c.obj(PLATE)[:2] + 0.115 * unit(theta)
    outside = np.maximum(np.abs(finger - c.obj(CHEESE)[:2]) - CHEESE_HALF_XY, 0.0)
    return float(np.linalg.norm(outside))


def task5_plate_to_stove_front(
    c: ScriptContext,
    thetas: tuple[float, ...] = (0.4, 0.35, 0.3, 0.25, 0.2, 0.1, 0.0),
    min_clearance: float = 0.015,
) -> Script:
    # Pinch the rim at angle theta from +y toward -x, fingers radial. Measured on 12 random resets:
    # theta 0 (the +y point) 7/12 (out of reach at the plate's +x extreme), 0.2 8/12, 0.3 11/12,
    # 0.4 12/12, pi/4 5/12 (the outer finger meets the bowl). Always 0.4 (with a retry at 0.3): 44/50 on
    # seeds 5000-5049; all 6 failures had the open outer finger within 1.2 cm of the cream cheese, which
    # it then pinched or lifted with the rim, and the plate slipped out during the carry. So the first
    # angle of ``thetas`` whose outer finger clears the cheese by ``min_clearance`` is used (else the
    # clearest); a pinch that closes on nothing is retried at the next angle. 49/50 on seeds 5000-5049,
    # 47/50 on held-out seeds 9000-9049 (always 0.4: 42/50 on the same seeds).
    clearances = [cheese_clearance(c, theta) for theta in thetas]
    first = next(
        (i for i, clear in enumerate(clearances) if clear >= min_clearance), int(np.argmax(clearances))
    )
    order = [thetas[first], thetas[first + 1 if first + 1 < len(thetas) else first - 1]]
    c.grip = OPEN
    for theta in order:
        c.R_target = rot_z(theta) @ R_DOWN
        yield from c.move_above_then_down(lambda theta=theta: c.obj(PLATE) + [*(0.070 * unit(theta)), 0.011])
        yield from c.set_grip(CLOSE, 15)
        if c.finger_gap() > 0.003:  # closed on the rim (about 0.006), not on nothing (< 0.002)
            break
        yield from c.set_grip(OPEN, 8)
        yield from c.move(c.eef() + [0, 0, 0.05], tol=0.01, max_steps=15)
    # a rim pinch holds the plate by 3 mm of rim: no collection noise until it is released
    yield from c.precise(c.move(lambda: np.array([*c.eef()[:2], 1.0]), vmax=0.8, tol=0.01, max_steps=40))
    region = c.site("main_table_stove_front_region")
    goal = np.array([region[0] + 0.01, region[1] + 0.005, 0.905])
    yield from c.precise(carry_and_place(c, PLATE, goal, carry_z=1.0))


def task6_cheese_in_bowl(c: ScriptContext) -> Script:
    c.R_target = R_DOWN.copy()
    c.grip = OPEN
    yield from c.move_above_then_down(c.obj(CHEESE) + [0, 0, 0.004])
    yield from c.set_grip(CLOSE, 15)
    yield from c.move(lambda: np.array([*c.eef()[:2], 1.05]), vmax=0.8, tol=0.01, max_steps=40)
    bowl = c.obj(BOWL)
    yield from carry_and_place(c, CHEESE, np.array([bowl[0], bowl[1], bowl[2] + 0.04]), carry_z=1.05)


def task7_turn_on_stove(c: ScriptContext) -> Script:
    c.R_target = R_DOWN.copy()
    c.grip = OPEN
    knob = c.body("flat_stove_1_button")
    yield from c.move_above_then_down(np.array([knob[0] - 0.005, knob[1] + 0.0015, 0.942]))
    yield from c.set_grip(CLOSE, 12)
    hold_at = c.eef()
    for _ in range(12):
        c.R_target = rot_z(0.1) @ c.R_target
        yield from c.hold(5, hold_at)


def task8_bowl_on_plate(c: ScriptContext) -> Script:
    yield from bowl_grasp(c)
    plate = c.obj(PLATE)
    yield from carry_and_place(c, BOWL, np.array([plate[0], plate[1], plate[2] + 0.02]), carry_z=1.10)


def task9_bottle_on_rack(c: ScriptContext) -> Script:
    yield from bottle_grasp(c, lift_z=1.36)
    rack = c.site("wine_rack_1_top_region")
    yield from carry_and_place(c, BOTTLE, np.array([rack[0], rack[1] - 0.01, 1.152]), carry_z=1.36)


def bottle_grasp(c: ScriptContext, lift_z: float) -> Script:
    """Grasp the wine bottle by its neck, approaching from high above (lower moves tip it over)."""
    c.R_target = R_DOWN.copy()
    c.grip = OPEN
    yield from c.move_above_then_down(c.obj(BOTTLE) + [0, 0, BOTTLE_NECK], clearance=0.10)
    yield from c.set_grip(CLOSE, 15)
    yield from c.move(lambda: np.array([*c.eef()[:2], lift_z]), vmax=0.8, tol=0.01, max_steps=60)


GOAL_SCRIPTS = {
    0: task0_open_middle_drawer,
    1: task1_bowl_on_stove,
    2: task2_bottle_on_cabinet,
    3: task3_top_drawer_bowl_inside,
    4: task4_bowl_on_cabinet,
    5: task5_plate_to_stove_front,
    6: task6_cheese_in_bowl,
    7: task7_turn_on_stove,
    8: task8_bowl_on_plate,
    9: task9_bottle_on_rack,
}


def make_goal_expert(env_name: str = "libero_goal") -> ScriptedExpert:
    """The LIBERO-Goal expert (all 10 tasks); ``reset(env)`` picks the script of the env's task."""
    if env_name != "libero_goal":
        raise ValueError(f"env_name: the LIBERO-Goal expert serves 'libero_goal', got {env_name!r}")
    return ScriptedExpert(GOAL_SCRIPTS)
