"""CALVIN's task oracle for all 34 tasks, on a simulator-neutral snapshot of the scene.

A task is a predicate ``f(start, end)`` on two ``SceneSnapshot``s: ``start`` taken once when the subtask
begins, ``end`` after each step (facts 3.1-3.2). Our MuJoCo env and the calvin_env adapter
(``original.py``) both build snapshots, so the same rules judge both.

Contacts are sets of ``(body, link)`` names: bodies are ``"robot"``, ``"table"``, ``"block_red"``,
``"block_blue"``, ``"block_pink"`` and anything else the simulator reports (``"plane"``); table links are
CALVIN's link names (``"base_link"``, ``"plank_link"``, ``"drawer_link"``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from dfm_vla.envs.calvin.tasks import TASK_NAMES

ROBOT, TABLE = "robot", "table"
BLOCK_NAMES = ("block_red", "block_blue", "block_pink")
Contact = tuple[str, str]  # (body, link)


@dataclass(frozen=True)
class BlockSnapshot:
    """One movable block: position (3,) m, quaternion xyzw (4,), velocities (3,) m/s and rad/s, contacts."""

    pos: np.ndarray
    quat_xyzw: np.ndarray
    lin_vel: np.ndarray
    ang_vel: np.ndarray
    contacts: frozenset[Contact] = frozenset()

    @property
    def contact_bodies(self) -> set[str]:
        return {body for body, _ in self.contacts}


@dataclass(frozen=True)
class SceneSnapshot:
    """What the oracle reads (CALVIN's ``scene_info`` + robot contacts), in names instead of pybullet uids.

    doors: ``{"base__slide": m, "base__drawer": m}``; lights: ``{"lightbulb": 0|1, "led": 0|1}``.
    """

    blocks: dict[str, BlockSnapshot]
    doors: dict[str, float]
    lights: dict[str, int]
    robot_contacts: frozenset[Contact] = field(default_factory=frozenset)

    @property
    def robot_contact_bodies(self) -> set[str]:
        return {body for body, _ in self.robot_contacts}


def _without_robot(contacts: Iterable[Contact]) -> set[Contact]:
    return {c for c in contacts if c[0] != ROBOT}


def rotate_object(
    start: SceneSnapshot,
    end: SceneSnapshot,
    obj: str,
    z_deg: float,
    x_y_threshold: float = 30,
    z_threshold: float = 180,
    movement_threshold: float = 0.1,
) -> bool:
    """Yaw change past ``z_deg`` (sign = direction), tilt under 30 deg, moved at most 0.1 m, resting on
    something that is not the robot."""
    s, e = start.blocks[obj], end.blocks[obj]
    rel = Rotation.from_quat(e.quat_xyzw) * Rotation.from_quat(s.quat_xyzw).inv()
    x, y, z = rel.as_euler("xyz", degrees=True)
    if np.linalg.norm(e.pos - s.pos) > movement_threshold:
        return False
    if not (e.contact_bodies - {ROBOT}):
        return False
    if abs(x) >= x_y_threshold or abs(y) >= x_y_threshold:
        return False
    if z_deg > 0:
        return z_deg < z < z_threshold
    return -z_threshold < z < z_deg


def push_object(start: SceneSnapshot, end: SceneSnapshot, obj: str, x_dir: float, y_dir: float) -> bool:
    """Moved past ``x_dir`` (and ``y_dir``) metres while staying on the same (body, link) surfaces."""
    s, e = start.blocks[obj], end.blocks[obj]
    start_surfaces, end_surfaces = _without_robot(s.contacts), _without_robot(e.contacts)
    if not start_surfaces or not end_surfaces or not start_surfaces <= end_surfaces:
        return False
    dx, dy = e.pos[0] - s.pos[0], e.pos[1] - s.pos[1]
    ok_x = dx > x_dir if x_dir > 0 else (dx < x_dir if x_dir < 0 else True)
    ok_y = dy > y_dir if y_dir > 0 else (dy < y_dir if y_dir < 0 else True)
    return ok_x and ok_y


def lift_object(
    start: SceneSnapshot, end: SceneSnapshot, obj: str, z: float, surface_body: str, surface_link: str
) -> bool:
    """Raised more than ``z`` m from the given surface and held only by the robot."""
    s, e = start.blocks[obj], end.blocks[obj]
    if not e.pos[2] - s.pos[2] > z:
        return False
    if e.contact_bodies != {ROBOT}:
        return False
    return (surface_body, surface_link) in s.contacts


def place_object(start: SceneSnapshot, end: SceneSnapshot, dest_body: str, dest_link: str) -> bool:
    """The block the robot alone held at the start now rests on ``(dest_body, dest_link)``, released."""
    held = start.robot_contact_bodies
    if len(held) != 1:
        return False
    (obj,) = held
    if obj not in start.blocks or start.blocks[obj].contact_bodies != {ROBOT}:
        return False
    e = end.blocks[obj]
    return ROBOT not in e.contact_bodies and (dest_body, dest_link) in e.contacts


def push_object_into(
    start: SceneSnapshot,
    end: SceneSnapshot,
    objs: Iterable[str],
    src_body: str,
    src_link: str,
    dest_body: str,
    dest_link: str,
) -> bool:
    """Some block, untouched by the robot at start and end, went from the source to the destination."""
    for obj in objs:
        s, e = start.blocks[obj], end.blocks[obj]
        if ROBOT in s.contact_bodies or ROBOT in e.contact_bodies:
            continue
        if set(s.contacts) == {(src_body, src_link)} and (dest_body, dest_link) in e.contacts:
            return True
    return False


def move_door_rel(start: SceneSnapshot, end: SceneSnapshot, joint: str, threshold: float) -> bool:
    """The door joint moved by more than ``threshold`` m in the threshold's direction."""
    delta = end.doors[joint] - start.doors[joint]
    return 0 < threshold < delta or 0 > threshold > delta


def toggle_light(
    start: SceneSnapshot, end: SceneSnapshot, light: str, start_state: int, end_state: int
) -> bool:
    return start.lights[light] == start_state and end.lights[light] == end_state


def _slow(block: BlockSnapshot, max_vel: float) -> bool:
    # CALVIN compares signed components (no abs), kept as is.
    return bool(np.all(block.lin_vel < max_vel) and np.all(block.ang_vel < max_vel))


def stack_objects(start: SceneSnapshot, end: SceneSnapshot, max_vel: float = 1) -> bool:
    """Some block that touched no block now rests only on block(s), and is slow."""
    blocks = set(start.blocks)
    for obj in start.blocks:
        s_bodies, e_bodies = start.blocks[obj].contact_bodies, end.blocks[obj].contact_bodies
        if s_bodies & blocks:
            continue
        if e_bodies & blocks and e_bodies <= blocks and _slow(end.blocks[obj], max_vel):
            return True
    return False


def unstack_objects(start: SceneSnapshot, end: SceneSnapshot, max_vel: float = 1) -> bool:
    """Some block that rested (slowly) only on block(s) now touches no block."""
    blocks = set(start.blocks)
    for obj in start.blocks:
        s_bodies, e_bodies = start.blocks[obj].contact_bodies, end.blocks[obj].contact_bodies
        if not (s_bodies & blocks) or not s_bodies <= blocks or not _slow(start.blocks[obj], max_vel):
            continue
        if not e_bodies & blocks:
            return True
    return False


def _check(task: str, start: SceneSnapshot, end: SceneSnapshot) -> bool:
    parts = task.split("_")
    if parts[0] in ("rotate", "push") and task != "push_into_drawer":
        obj = f"block_{parts[1]}"
        right = parts[3] == "right"
        if parts[0] == "rotate":
            return rotate_object(start, end, obj, -60 if right else 60)
        return push_object(start, end, obj, 0.1 if right else -0.1, 0)
    if task in ("move_slider_left", "move_slider_right"):
        return move_door_rel(start, end, "base__slide", 0.15 if task.endswith("left") else -0.15)
    if task in ("open_drawer", "close_drawer"):
        return move_door_rel(start, end, "base__drawer", 0.12 if task.startswith("open") else -0.12)
    if parts[0] == "lift":
        surface = parts[3]
        z = 0.03 if surface == "slider" else 0.05
        link = {"table": "base_link", "slider": "plank_link", "drawer": "drawer_link"}[surface]
        return lift_object(start, end, f"block_{parts[1]}", z, TABLE, link)
    if task == "place_in_slider":
        return place_object(start, end, TABLE, "plank_link")
    if task == "place_in_drawer":
        return place_object(start, end, TABLE, "drawer_link")
    if task == "stack_block":
        return stack_objects(start, end)
    if task == "unstack_block":
        return unstack_objects(start, end)
    if parts[0] == "turn":
        light = parts[2]
        on = parts[1] == "on"
        return toggle_light(start, end, light, 0 if on else 1, 1 if on else 0)
    if task == "push_into_drawer":
        return push_object_into(start, end, BLOCK_NAMES, TABLE, "base_link", TABLE, "drawer_link")
    raise ValueError(f"task: unknown CALVIN task {task!r}; expected one of the 34 in tasks.TASK_NAMES")


def task_success(task: str, start: SceneSnapshot, end: SceneSnapshot) -> bool:
    """Whether ``task`` (a CALVIN task name) is done between ``start`` and ``end``."""
    if task not in TASK_NAMES:
        raise ValueError(f"task: unknown CALVIN task {task!r}; expected one of the 34 in tasks.TASK_NAMES")
    return _check(task, start, end)


def completed_tasks(start: SceneSnapshot, end: SceneSnapshot, tasks: Iterable[str] = TASK_NAMES) -> set[str]:
    """CALVIN's ``get_task_info_for_set``: the subset of ``tasks`` done between ``start`` and ``end``."""
    return {t for t in tasks if task_success(t, start, end)}
