"""Scripted experts for the AgileX tasks: tool waypoints planned from the initial object poses,
interpolated per control step, turned into joint targets by ``mink`` IK (ACT-style scripted demos).

Usage::

    expert = make_expert("agilex_pot_lift")   # or AgileXExpert()
    obs, _ = env.reset(seed=0)
    expert.reset(env)
    action = expert.act(obs)                  # (14,) float32 absolute joint targets

The expert reads privileged object poses from ``env.unwrapped`` at ``reset``; it is open loop after that.
"""

from __future__ import annotations

from dataclasses import dataclass

import mink
import numpy as np

from dfm_vla.envs.agilex.env import ARMS, AgileXEnv
from dfm_vla.envs.agilex.ik import BimanualIK, grasp_rotation
from dfm_vla.envs.agilex.tasks import (
    BLOCK_HALF,
    POT_HANDLE_OFFSET,
    POT_RIM_HEIGHT,
    PlaceBlockEnv,
    PlaceVegEnv,
    PotLiftEnv,
)

OPEN = 0.06  # m gripper opening while approaching
CLOSED = 0.0  # commanded opening when grasping (the object stops the fingers)
TILT = 0.6  # rad from straight down, towards the object as seen from the arm base
APPROACH = 0.08  # m back-off along the tool axis before descending onto a grasp
RELEASE_FROM = 0.75  # fraction of the last descent after which the fingers open (about 2 cm above place)


@dataclass
class Waypoint:
    """Reach ``pos`` (3,) / ``rot`` (3, 3) over ``steps`` control steps, gripper opening ``gripper`` (m).

    The gripper keeps the previous waypoint's opening until the motion has covered ``gripper_from`` of the
    segment (a fraction of the path, 0 = from the first step)."""

    steps: int
    pos: np.ndarray
    rot: np.ndarray
    gripper: float
    gripper_from: float = 0.0


def _best_axis(candidates: list[np.ndarray], approach: np.ndarray) -> np.ndarray:
    """The object axis most parallel to the approach direction (fingers then close across it)."""
    h = approach[:2] / np.linalg.norm(approach[:2])
    return max(candidates, key=lambda a: abs(float(a[:2] @ h)))


def _pick_and_place(
    base: np.ndarray, grasp: np.ndarray, axis: np.ndarray, place: np.ndarray, lift: float
) -> list[Waypoint]:
    """Waypoints for the arm mounted at ``base``: approach, descend, close, lift, carry above ``place``,
    lower (the gripper is commanded open once three quarters of the descent are covered), retreat.
    ``lift`` (m) is the carry clearance above the higher of grasp and place.

    The fingers open while the arm still moves, so the release is tied to a position the learned policies
    reach, not to a pause at ``place`` (a policy that waits for it stops a centimetre short, holding on)."""
    rot = grasp_rotation(axis, grasp - base, TILT)
    back = -APPROACH * rot[:, 2]
    carry_height = max(grasp[2], place[2]) + lift
    above_grasp = np.array([grasp[0], grasp[1], carry_height])
    above_place = np.array([place[0], place[1], carry_height])
    return [
        Waypoint(30, grasp + back, rot, OPEN),
        Waypoint(18, grasp, rot, OPEN),
        Waypoint(8, grasp, rot, CLOSED),
        Waypoint(16, above_grasp, rot, CLOSED),
        Waypoint(28, above_place, rot, CLOSED),
        Waypoint(16, place, rot, OPEN, gripper_from=RELEASE_FROM),
        Waypoint(8, place, rot, OPEN),
        Waypoint(16, place + np.array([0.0, 0.0, 0.08]) + back, rot, OPEN),
    ]


class AgileXExpert:
    """Plans both arms' tool waypoints at ``reset(env)``; ``act(obs)`` returns the next joint targets."""

    # Arm joints only (grippers are dims 6 and 13): what `collect --noise` may perturb.
    noise_dims = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)

    def __init__(self, ik_iterations: int = 6) -> None:
        self.ik = BimanualIK(iterations=ik_iterations)
        self.plans: dict[str, list[Waypoint]] = {}
        self._t = 0
        self._schedule: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}

    # ------------------------------------------------------------------------------------ planning
    def reset(self, env) -> None:
        task: AgileXEnv = env.unwrapped
        q = task.joint_state()
        self.ik.reset(np.stack([q[0:6], q[7:13]]))
        start = {arm: (*self.ik.tcp_pose(arm), q[6 + 7 * i]) for i, arm in enumerate(ARMS)}
        if isinstance(task, PotLiftEnv):
            self.plans = self._plan_pot_lift(task)
        elif isinstance(task, PlaceVegEnv):
            self.plans = {"right": self._plan_place_veg(task)}
        elif isinstance(task, PlaceBlockEnv):
            self.plans = {"left": self._plan_place_block(task)}
        else:
            raise TypeError(f"env: expected an AgileX task env, got {type(task).__name__}")
        # An arm without a plan holds its starting pose and gripper.
        self._schedule = {
            arm: self._interpolate(start[arm], self.plans[arm]) if arm in self.plans else [start[arm]]
            for arm in ARMS
        }
        self._t = 0

    def _plan_pot_lift(self, task: PotLiftEnv) -> dict[str, list[Waypoint]]:
        pos, rot = task.body_pose("pot")
        axis = rot[:, 0]  # the handle bars run along the pot's x axis
        plans = {}
        for arm, sign in (("left", 1.0), ("right", -1.0)):
            handle = pos + rot @ (POT_HANDLE_OFFSET * np.array([1.0, sign, 1.0]))
            grasp = handle + np.array([0.0, 0.0, 0.002])
            r = grasp_rotation(axis, grasp - task.body_pose(f"{arm}_base")[0], TILT)
            back = -APPROACH * r[:, 2]
            lifted = grasp + np.array([0.0, 0.0, 0.09])
            plans[arm] = [
                Waypoint(30, grasp + back, r, OPEN),
                Waypoint(18, grasp, r, OPEN),
                Waypoint(10, grasp, r, CLOSED),
                Waypoint(30, lifted, r, CLOSED),
                Waypoint(40, lifted, r, CLOSED),
            ]
        return plans

    def _plan_place_veg(self, task: PlaceVegEnv) -> list[Waypoint]:
        veg_pos, veg_rot = task.body_pose("veg")
        pot_pos, _ = task.body_pose("pot")
        grasp = veg_pos + np.array([0.0, 0.0, 0.004])
        place = np.array([pot_pos[0], pot_pos[1], pot_pos[2] + POT_RIM_HEIGHT + 0.045])
        return _pick_and_place(task.body_pose("right_base")[0], grasp, veg_rot[:, 0], place, 0.06)

    def _plan_place_block(self, task: PlaceBlockEnv) -> list[Waypoint]:
        block_pos, block_rot = task.body_pose("block")
        grasp = block_pos + np.array([0.0, 0.0, 0.004])
        base = task.body_pose("left_base")[0]
        axis = _best_axis([block_rot[:, 0], block_rot[:, 1]], grasp - base)
        plate_xy = task.body_pose("plate")[0][:2]
        place = np.array([*plate_xy, task.plate_top_z() + BLOCK_HALF + 0.012])
        return _pick_and_place(base, grasp, axis, place, 0.08)

    @staticmethod
    def _interpolate(start, waypoints: list[Waypoint]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Per-step (pos, rot, gripper) targets: linear in position, geodesic in rotation."""
        pos, rot, grip = start
        out = []
        for wp in waypoints:
            a = mink.SE3.from_rotation_and_translation(mink.SO3.from_matrix(rot), pos)
            b = mink.SE3.from_rotation_and_translation(mink.SO3.from_matrix(wp.rot), wp.pos)
            for k in range(1, wp.steps + 1):
                s = k / wp.steps
                s = s * s * (3 - 2 * s)  # smooth start and stop
                T = a.interpolate(b, s)
                if s < wp.gripper_from:
                    g = grip
                elif wp.gripper >= grip:
                    g = wp.gripper
                else:
                    g = grip + (wp.gripper - grip) * min(1.0, 2 * k / wp.steps)
                out.append((T.translation().copy(), T.rotation().as_matrix().copy(), g))
            pos, rot, grip = wp.pos, wp.rot, wp.gripper
        return out

    # ------------------------------------------------------------------------------------ acting
    @property
    def horizon(self) -> int:
        """Number of planned steps (the expert holds the last target afterwards)."""
        return max(len(s) for s in self._schedule.values())

    def act(self, obs) -> np.ndarray:
        targets, grippers = {}, {}
        for arm in ARMS:
            pos, rot, grippers[arm] = self._schedule[arm][min(self._t, len(self._schedule[arm]) - 1)]
            targets[arm] = (pos, rot)
        q = self.ik.solve(targets)
        self._t += 1
        action = np.concatenate([q[0], [grippers["left"]], q[1], [grippers["right"]]])
        return action.astype(np.float32)


def make_expert(env_name: str | None = None) -> AgileXExpert:
    """Factory for the ``EXPERTS`` registry (one expert class serves the three tasks)."""
    return AgileXExpert()
