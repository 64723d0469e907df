"""Scripted experts for the 10 LIBERO-Long (``libero_10``) tasks (privileged simulator state).

Nine of the ten tasks chain two sub-goals, read from the BDDL goal where the objects vary: two objects
into the basket (tasks 0, 1, 7), the stove knob and one or two moka pots onto the stove (2, 8), two mugs
onto two plates (4), a mug onto the plate and the pudding beside it (6). This module holds those
pick-and-place tasks and their grasps (the can/box grasp of LIBERO-Object, a pinch of the moka pot's
handle, a radial pinch of a mug's rim opposite its handle, the knob twist of LIBERO-Goal); the tasks
with articulated fixtures or a tight container (the bottom drawer, the caddy, the microwave: 3, 5, 9)
live in ``long_fixture_experts``. Scripts name their current phase in ``c.phase`` (read on failure).
Units: metres, radians, world frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dfm_vla.envs.libero.expert_base import (
    CLOSE,
    OPEN,
    R_DOWN,
    Script,
    ScriptContext,
    ScriptedExpert,
    Target,
    boxes_union,
    collision_geoms,
    geom_box,
    rot_z,
    world_aabb,
)
from dfm_vla.envs.libero.goal_experts import carry_and_place

BASKET, BASKET_REGION = "basket_1", "basket_1_contain_region"
STOVE, COOK_REGION = "flat_stove_1", "flat_stove_1_cook_region"
MUG_HANDLE_GEOMS = ("g1", "g2", "g3")  # the handle loop of both LIBERO mugs; every other geom is the cup
MOKA_HANDLE_BAR, MOKA_HANDLE_TOP = "g14", "g13"  # outer bar and top of the moka pot's handle loop


# ---------------------------------------------------------------------------------------- geometry
def body_geom_names(c: ScriptContext, obj: str) -> list[str]:
    """Names of the collision geoms of movable object ``obj``."""
    return [c.model.geom_id2name(g) for g in collision_geoms(c, obj)]


def yaw_for_fingers(c: ScriptContext, direction: np.ndarray, at: np.ndarray) -> float:
    """Yaw of ``rot_z(yaw) @ R_DOWN`` whose finger axis lies along the xy ``direction``; of the two
    equivalent yaws (the fingers are symmetric) the one that keeps joint 7 nearest the middle of its
    range for a hand over ``at`` (joint 7 is 0 near yaw = bearing from the robot base + 0.785)."""
    yaw = float(np.arctan2(direction[1], direction[0]) - np.pi / 2)
    base = c.body("robot0_base")
    middle = float(np.arctan2(at[1] - base[1], at[0] - base[0])) + 0.785
    return (yaw - middle + np.pi / 2) % np.pi + middle - np.pi / 2


# ---------------------------------------------------------------------------------------- primitives
def move_until_blocked(
    c: ScriptContext, target: Target, vmax: float, tol: float, max_steps: int, stall: float = 0.001
) -> Script:
    """``c.move`` that also stops once the grip site has moved less than ``stall`` m over 4 steps
    (e.g. a held object resting on something: waiting for the servo to get there wastes the budget)."""
    trail = []
    for action in c.move(target, vmax=vmax, tol=tol, max_steps=max_steps):
        trail.append(c.eef())
        if len(trail) > 10 and np.linalg.norm(trail[-1] - trail[-5]) < stall:
            return
        yield action


def pick(
    c: ScriptContext,
    grip: Callable[[], np.ndarray],
    R: np.ndarray,
    lift_z: float,
    clearance: float = 0.08,
    lift_vmax: float = 0.8,
) -> Script:
    """Top-down grasp at ``grip()`` (re-read each step) with hand orientation ``R``; lift to ``lift_z``."""
    c.R_target = R.copy()
    c.grip = OPEN
    yield from c.move_above_then_down(grip, clearance=clearance)
    yield from c.set_grip(CLOSE, 15)
    yield from c.move(lambda: np.array([*c.eef()[:2], lift_z]), vmax=lift_vmax, tol=0.01, max_steps=60)


def hand_clearance(
    c: ScriptContext, obj: str, grip_xy: np.ndarray, yaw: float, hand_bottom: float
) -> tuple[float, str]:
    """Smallest xy distance (m), and the object it is to, from the footprint of a top-down hand at
    ``grip_xy`` (``rot_z(yaw) @ R_DOWN``: 21 cm along the fingers, 8 cm across) to the footprint of any
    other movable object that rises above ``hand_bottom`` (z of the hand's underside; call once the
    objects rest)."""
    axis = rot_z(yaw)[:2, 1]  # the finger axis (R_DOWN's is world y)
    across = np.array([-axis[1], axis[0]])
    s, t = np.meshgrid(np.linspace(-0.105, 0.105, 15), np.linspace(-0.04, 0.04, 5))
    points = grip_xy + s.reshape(-1, 1) * axis + t.reshape(-1, 1) * across
    best, nearest = np.inf, ""
    for other in c.env.task.objects:
        if other == obj:
            continue
        low, high = world_aabb(c, other)
        if high[2] < hand_bottom:
            continue
        outside = np.maximum(np.maximum(low[:2] - points, points - high[:2]), 0.0)
        distance = float(np.linalg.norm(outside, axis=1).min())
        if distance < best:
            best, nearest = distance, other
    return best, nearest


def box_grasp_point(c: ScriptContext, obj: str) -> tuple[np.ndarray, np.ndarray, float, str]:
    """LIBERO-Object grasp of a can or box: (grip offset from the object origin, hand R, height of the
    grip site above the object's bottom, the neighbour in the hand's way or ""). Flat boxes at
    mid-height (fingertips just above the table), tall ones 2.5 cm below the top.
    The fingers go across a box's narrower side (yawed at most 0.2 rad off it: a box pinched
    diagonally turns and jams between the open fingers); a can may be pinched from any side. Of the
    candidate pinches (also up to 3 cm off-centre along a box's long side) the first whose hand keeps
    1.5 cm from the neighbours is used, else the clearest."""
    low, high = world_aabb(c, obj)
    size = high - low
    center = (low + high) / 2
    long_side = abs(size[0] - size[1]) > 0.01
    yaw0 = 0.0 if size[1] <= size[0] else np.pi / 2
    if long_side:
        along = np.array([1.0, 0.0]) if size[1] <= size[0] else np.array([0.0, 1.0])
        reach = min(0.03, max(size[0], size[1]) / 2 - 0.015)
        candidates = [
            (yaw0 + dyaw, center[:2] + shift * along)
            for dyaw in (0.0, 0.2, -0.2)
            for shift in (0.0, reach / 2, -reach / 2, reach, -reach)
        ]
    else:
        candidates = [(yaw0 + dyaw, center[:2]) for dyaw in (0.0, 0.4, -0.4, 0.8, -0.8, np.pi / 2)]
    if size[2] < 0.04:
        grip_z = max(center[2] + 0.004, low[2] + 0.014)
    else:  # 2.5 cm: the palm is 2.4 cm above the grip site
        grip_z = high[2] - 0.025
    clear = [hand_clearance(c, obj, xy, yaw, grip_z + 0.02) for yaw, xy in candidates]
    ok = [i for i, (cl, _) in enumerate(clear) if cl >= 0.015]
    best = ok[0] if ok else int(np.argmax([cl for cl, _ in clear]))
    (yaw, xy), (clearance, nearest) = candidates[best], clear[best]
    blocker = nearest if clearance < 0.005 and nearest != BASKET else ""
    return np.array([*xy, grip_z]) - c.obj(obj), rot_z(yaw) @ R_DOWN, float(grip_z - low[2]), blocker


def move_aside(c: ScriptContext, obj: str, away_from: str, distance: float = 0.08) -> Script:
    """Pick ``obj`` (a can or carton in the way of the hand), carry it 1.5 cm off the table (slowly: a
    13 cm carton held by its top tips over) and set it down ``distance`` m away, in the direction (away
    from ``away_from``, or up to 90 degrees off it) that leaves its footprint furthest from every other
    object's."""
    c.phase = f"move {obj} out of the way"
    offset, R, _, _ = box_grasp_point(c, obj)
    start = c.obj(obj)
    low, high = world_aabb(c, obj)
    others = [world_aabb(c, o) for o in c.env.task.objects if o != obj]
    away = start[:2] - c.obj(away_from)[:2]
    heading = np.arctan2(away[1], away[0])

    def footprint_gap(shift: np.ndarray) -> float:
        gaps = [
            np.max(np.maximum(o_low[:2] - (high[:2] + shift), (low[:2] + shift) - o_high[:2]))
            for o_low, o_high in others
        ]
        return float(min(gaps))

    turns = (0, 0.8, -0.8, 1.57, -1.57)
    shift = max(
        (distance * np.array([np.cos(heading + d), np.sin(heading + d)]) for d in turns), key=footprint_gap
    )
    lift_z = start[2] + offset[2] + 0.015
    yield from pick(c, lambda: c.obj(obj) + offset, R, lift_z, lift_vmax=0.4)
    goal = start + offset + [*shift, 0.015]
    yield from c.move(goal, vmax=0.5, tol=0.008, max_steps=40)
    yield from c.set_grip(OPEN, 8)
    yield from c.move(c.eef() + [0, 0, 0.05], tol=0.015, max_steps=20)


def grasp_box(c: ScriptContext, obj: str, max_moves: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """``box_grasp_point``, after moving (up to ``max_moves``) neighbours that leave the hand no room."""
    offset, R, below_grip, blocker = box_grasp_point(c, obj)
    for _ in range(max_moves):
        if not blocker:
            break
        yield from move_aside(c, blocker, obj)
        offset, R, below_grip, blocker = box_grasp_point(c, obj)
    return offset, R, below_grip


def wait_until_still(c: ScriptContext, speed: float = 0.02, max_steps: int = 40) -> Script:
    """Hold still until every movable object moves slower than ``speed`` m/s (some LIBERO-Long objects
    are still falling onto the table when the env's settling steps end)."""
    model = c.model._model
    dofs = [
        model.jnt_dofadr[c.model.joint_name2id(f"{obj}_joint0")]
        for obj in c.env.task.objects
        if f"{obj}_joint0" in c.model.joint_names
    ]
    for _ in range(max_steps):
        if all(np.linalg.norm(c.data.qvel[d : d + 3]) < speed for d in dofs):
            return
        yield c.action(c.eef(), 0.5)


def put_in_basket(c: ScriptContext, obj: str, slot: np.ndarray, stack: float = 0.0) -> Script:
    """Grasp ``obj`` (a can or a box), carry it over the basket's contain region + ``slot`` (xy) and
    release it low inside, ``stack`` m higher when something already lies there."""
    offset, R, below_grip = yield from grasp_box(c, obj)
    c.phase = f"grasp {obj}"
    basket_low, basket_high = world_aabb(c, BASKET)
    carry_z = basket_high[2] + 0.04 + below_grip
    yield from pick(c, lambda: c.obj(obj) + offset, R, carry_z)
    c.phase = f"carry {obj} to the basket"
    target = c.site(BASKET_REGION)[:2] + slot
    yield from c.move(np.array([*target, carry_z]), tol=0.015, max_steps=120)
    release_z = basket_low[2] + 0.04 + below_grip + stack
    yield from c.precise(move_until_blocked(c, np.array([*target, release_z]), 0.5, 0.01, 60))
    yield from c.set_grip(OPEN, 10)
    yield from c.move(lambda: np.array([*c.eef()[:2], carry_z + 0.05]), tol=0.015, max_steps=40)


def turn_on_stove(c: ScriptContext, stove: str = STOVE, on_at: float = 0.9) -> Script:
    """LIBERO-Goal's knob twist: grasp the knob's bar, turn it counter-clockwise (seen from above) in
    0.1 rad steps until it is past ``on_at`` rad, let go and rise. The knob counts as on from 0.5 rad;
    letting go turns it back by up to 0.15 rad, hence the margin. A knob that a random placement left
    past ``on_at`` is not touched (the fingers landing on it would turn it back)."""
    c.phase = "turn on the stove"
    joint = f"{stove}_button"
    if c.qpos(joint) > on_at:
        return
    knob = c.body(joint)
    c.R_target = R_DOWN.copy()
    c.grip = OPEN
    yield from c.move_above_then_down(knob + [-0.005, 0.0015, 0.037])
    yield from c.set_grip(CLOSE, 12)
    hold_at = c.eef()
    for _ in range(20):
        if c.qpos(joint) > on_at:
            break
        c.R_target = rot_z(0.1) @ c.R_target
        yield from c.hold(5, hold_at)
    yield from c.set_grip(OPEN, 8)
    yield from c.move(hold_at + [0, 0, 0.10], tol=0.015, rot_tol=3.0, max_steps=30)


def place_held(
    c: ScriptContext, obj: str, obj_goal: np.ndarray, carry_z: float, rise: float = 0.06
) -> Script:
    """Carry the held ``obj`` at ``carry_z`` (grip site) until its origin is over ``obj_goal``, lower it
    there, release, and rise ``rise`` m (``goal_experts.carry_and_place`` with a fixed final rise)."""
    goal = obj_goal + c.eef() - c.obj(obj)
    yield from c.move(np.array([*goal[:2], max(carry_z, goal[2])]), tol=0.01, max_steps=150)
    yield from c.precise(move_until_blocked(c, goal, 0.5, 0.006, 80))
    yield from c.set_grip(OPEN, 8)
    yield from c.move(c.eef() + [0, 0, rise], tol=0.015, max_steps=30)


@dataclass
class MokaConfig:
    """Moka pot handling (m): grip below the handle's top, carry height of the pot's origin (its base is
    6.6 cm below it), release height of the origin above the burner plate."""

    grip_below_top: float = 0.018
    carry_origin_z: float = 1.13
    release_above_burner: float = 0.072


def moka_to_stove(c: ScriptContext, pot: str, spot: np.ndarray, cfg: MokaConfig | None = None) -> Script:
    """Pinch the moka pot's handle loop (fingers along x, across the 1.3 cm bar) from above, carry the
    pot so its origin is over the cook region + ``spot`` (xy) and set it on the burner."""
    cfg = cfg or MokaConfig()
    c.phase = f"grasp {pot}"
    bar_lo, bar_hi = geom_box(c, f"{pot}_{MOKA_HANDLE_BAR}")
    _, top_hi = geom_box(c, f"{pot}_{MOKA_HANDLE_TOP}")
    grip = np.array(
        [(bar_lo[0] + bar_hi[0]) / 2, (bar_lo[1] + bar_hi[1]) / 2, top_hi[2] - cfg.grip_below_top]
    )
    offset = grip - c.obj(pot)
    carry_z = cfg.carry_origin_z + offset[2]
    R = rot_z(yaw_for_fingers(c, np.array([1.0, 0.0]), grip)) @ R_DOWN
    yield from pick(c, lambda: c.obj(pot) + offset, R, carry_z)
    c.phase = f"carry {pot} to the stove"
    cook = c.site(COOK_REGION)
    burner_top = geom_box(c, f"{STOVE}_collision_burner")[1][2]
    goal = np.array([*(cook[:2] + spot), burner_top + cfg.release_above_burner])
    yield from place_held(c, pot, goal, carry_z)


@dataclass
class MugConfig:
    """Radial pinch of a mug's rim (m): the grip site this far inside the rim's outer radius and below
    its top; lift height above the table; release height of the mug's origin above its target."""

    inset: float = 0.007
    below_top: float = 0.017
    lift_above_table: float = 0.25
    release_above: float = 0.015


def mug_geometry(c: ScriptContext, mug: str) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(cup centre xy, cup outer radius, cup top z, unit xy vector from the centre toward the handle)."""
    names = body_geom_names(c, mug)
    handle = [n for n in names if n.rsplit("_", 1)[1] in MUG_HANDLE_GEOMS]
    cup_lo, cup_hi = boxes_union([geom_box(c, n) for n in names if n not in handle])
    h_lo, h_hi = boxes_union([geom_box(c, n) for n in handle])
    centre = (cup_lo + cup_hi)[:2] / 2
    toward = (h_lo + h_hi)[:2] / 2 - centre
    return centre, float((cup_hi - cup_lo)[:2].mean() / 2), float(cup_hi[2]), toward / np.linalg.norm(toward)


def mug_grasp(c: ScriptContext, mug: str, lift_z: float, cfg: MugConfig | None = None) -> Script:
    """Pinch the mug's rim on the side opposite its handle, fingers radial, and lift to ``lift_z``."""
    cfg = cfg or MugConfig()
    c.phase = f"grasp {mug}"
    centre, radius, top, toward = mug_geometry(c, mug)
    grip = np.array([*(centre - toward * (radius - cfg.inset)), top - cfg.below_top])
    offset = grip - c.obj(mug)
    R = rot_z(yaw_for_fingers(c, toward, grip)) @ R_DOWN
    yield from pick(c, lambda: c.obj(mug) + offset, R, lift_z)


def mug_on_plate(c: ScriptContext, mug: str, plate: str, cfg: MugConfig | None = None) -> Script:
    """Task 4 and 6: ``mug_grasp``, then set the mug's origin on the plate's."""
    cfg = cfg or MugConfig()
    lift_z = c.obj(plate)[2] + cfg.lift_above_table
    yield from mug_grasp(c, mug, lift_z, cfg)
    c.phase = f"carry {mug} to {plate}"
    yield from carry_and_place(c, mug, c.obj(plate) + [0, 0, cfg.release_above], carry_z=lift_z)


def box_to(c: ScriptContext, obj: str, goal_xy: np.ndarray, lift: float = 0.12) -> Script:
    """Carry a small box (``box_grasp_point``) so its origin lands at ``goal_xy`` on the table."""
    offset, R, _ = yield from grasp_box(c, obj)
    c.phase = f"grasp {obj}"
    z0 = c.obj(obj)[2]
    yield from pick(c, lambda: c.obj(obj) + offset, R, z0 + offset[2] + lift)
    c.phase = f"carry {obj}"
    yield from carry_and_place(c, obj, np.array([*goal_xy, z0 + 0.01]), carry_z=z0 + offset[2] + lift)


# ---------------------------------------------------------------------------------------- tasks
def goal_predicates(c: ScriptContext, name: str) -> list[tuple[str, ...]]:
    return [p for p in c.env.task.goal if p[0] == name]


def two_in_basket(c: ScriptContext) -> Script:
    """Tasks 0, 1, 7: ``In(a, basket)`` and ``In(b, basket)``; the first 2 cm to the far side (+y),
    the second 2 cm to the near side (3 cm put the open fingers against the basket's wall, which then
    keep a flat box wedged between them)."""
    yield from wait_until_still(c)
    objs = [p[1] for p in goal_predicates(c, "in")]
    yield from put_in_basket(c, objs[0], np.array([0.0, 0.02]))
    yield from put_in_basket(c, objs[1], np.array([0.0, -0.02]), stack=0.01)
    c.phase = "done"


def stove_and_moka(c: ScriptContext) -> Script:
    """Task 2: turn the stove on, then the moka pot onto the cook region's centre."""
    yield from wait_until_still(c)
    yield from turn_on_stove(c)
    yield from moka_to_stove(c, "moka_pot_1", np.array([0.0, 0.0]))
    c.phase = "done"


def both_mokas(c: ScriptContext) -> Script:
    """Task 8: both pots on the cook region, side by side in x (their bodies are 8 cm wide, the region
    15 cm), the first to the far spot, and the stove kept on: it starts on (BDDL init ``Turnon``, the
    knob drawn in 0.5-2.1 rad) and ``turn_on_stove`` turns it further only when it is below 0.9."""
    yield from wait_until_still(c)
    yield from turn_on_stove(c)
    yield from moka_to_stove(c, "moka_pot_2", np.array([0.05, -0.03]))
    yield from moka_to_stove(c, "moka_pot_1", np.array([-0.045, 0.03]))
    c.phase = "done"


def mugs_on_plates(c: ScriptContext) -> Script:
    """Task 4: each ``On(mug, plate)`` of the goal in turn."""
    yield from wait_until_still(c)
    for _, mug, plate in goal_predicates(c, "on"):
        yield from mug_on_plate(c, mug, plate)
    c.phase = "done"


def mug_and_pudding(c: ScriptContext) -> Script:
    """Task 6: the white mug onto the plate, then the pudding into the region right of the plate."""
    yield from wait_until_still(c)
    yield from mug_on_plate(c, "porcelain_mug_1", "plate_1")
    region = c.site("living_room_table_plate_right_region")
    yield from box_to(c, "chocolate_pudding_1", region[:2] + [0.0, 0.015])
    c.phase = "done"


def long_scripts() -> dict[int, Callable[[ScriptContext], Script]]:
    from dfm_vla.envs.libero import long_fixture_experts as fixtures

    return {
        0: two_in_basket,
        1: two_in_basket,
        2: stove_and_moka,
        3: fixtures.bowl_in_drawer_and_close,
        4: mugs_on_plates,
        5: fixtures.book_in_caddy,
        6: mug_and_pudding,
        7: two_in_basket,
        8: both_mokas,
        9: fixtures.mug_in_microwave_and_close,
    }


def make_long_expert(env_name: str = "libero_10") -> ScriptedExpert:
    """The LIBERO-Long expert (all 10 tasks); ``reset(env)`` picks the script of the env's task."""
    if env_name not in ("libero_10", "libero_long"):
        raise ValueError(
            f"env_name: the LIBERO-Long expert serves 'libero_10' / 'libero_long', got {env_name!r}"
        )
    return ScriptedExpert(long_scripts())
