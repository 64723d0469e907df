"""Scripted experts for CALVIN's 34 tasks, from privileged state of our MuJoCo ``CalvinEnv``.

``CalvinExpert.reset(env)`` then ``act(obs)`` each step: it plans the current subtask (``env.task``)
when the subtask changes, as a list of waypoints for the TCP (position, yaw, gripper), and outputs
CALVIN's relative action toward the next one: position and euler errors of the env's integrated target
pose divided by 0.02 m / 0.05 rad, clipped to [-1, 1]; gripper +1 open / -1 close. Waypoints may end on
a condition (a door moved far enough, a block pushed far enough) instead of on arrival.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from dfm_vla.envs.calvin.env import ORN_SCALE, POS_SCALE
from dfm_vla.envs.calvin.oracle import BLOCK_NAMES

SAFE_Z = 0.60  # fingertips (and most held blocks) clear the slider handle (top 0.58)
ROBOT_BASE_XY = np.array([-0.34, -0.46])
OPEN, CLOSE = 1.0, -1.0
SWITCH_AXIS = np.array([0.0, 0.5, 0.866])
SWITCH_TILT = 0.6  # the switch sits near the edge of the Panda's reach

Vec = np.ndarray


@dataclass
class Waypoint:
    """Go to ``pos`` (or ``pos()``) with TCP yaw ``yaw`` and gripper ``grip``; done on arrival within
    ``tol`` m (or when ``until()`` holds), after at least ``min_steps`` and at most ``max_steps``."""

    pos: Vec | Callable[[], Vec]
    yaw: float
    grip: float
    tol: float = 0.006
    min_steps: int = 0
    max_steps: int = 80
    until: Callable[[], bool] | None = None
    speed: float = 1.0
    tilt: float = 0.0  # rad: the gripper leans away from the robot base (reaches further), 0 = straight down
    keep_orientation: bool = False  # move without turning the hand


def _wrap(a: Vec) -> Vec:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


class CalvinExpert:
    """Privileged scripted expert for every CALVIN task (see module docstring)."""

    def __init__(self, env_name: str | None = None):
        self.env_name = env_name
        self.env = None
        self.plan: list[Waypoint] = []
        self.planned_task: str | None = None
        self.k = 0
        self.t = 0
        self._target = np.zeros(3)
        self._orientation_error = 0.0

    # --------------------------------------------------------------------------------------- API
    def reset(self, env=None) -> None:
        if env is not None:
            self.env = env.unwrapped
        self.plan, self.planned_task, self.k, self.t = [], None, 0, 0

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        env = self.env
        if env is None:
            raise RuntimeError("CalvinExpert.act: call reset(env) first")
        if self.planned_task != env.task:
            self.plan = self._make_plan(env.task)
            self.planned_task, self.k, self.t = env.task, 0, 0
        if self.k >= len(self.plan):
            action = np.zeros(7)
            action[6] = env.gripper_action
            return action
        wp = self.plan[self.k]
        if self.t == 0:  # a callable target is evaluated once, when its waypoint starts
            self._target = np.asarray(wp.pos() if callable(wp.pos) else wp.pos, float)
        target = self._target
        action = self._toward(target, wp.yaw, wp.grip, wp.speed, wp.tilt)
        if wp.keep_orientation:
            action[3:6] = 0.0
            self._orientation_error = 0.0
        self.t += 1
        tcp = env.tcp_pose()[0]
        turned = self._orientation_error < 0.02
        arrived = (
            turned
            and np.linalg.norm(env._target_pos - target) < 1e-3
            and np.linalg.norm(tcp - target) < wp.tol
        )
        done = wp.until() if wp.until is not None else arrived
        if (done and self.t >= wp.min_steps) or self.t >= wp.max_steps:
            self.k, self.t = self.k + 1, 0
        return action

    # ----------------------------------------------------------------------------------- helpers
    def _toward(self, pos: Vec, yaw: float, grip: float, speed: float, tilt: float = 0.0) -> np.ndarray:
        """Relative action toward (pos, orientation): position clipped to ``speed``; orientation as the
        wrapped euler-xyz difference of the env's target pose (CALVIN's action convention)."""
        env = self.env
        action = np.zeros(7)
        action[:3] = np.clip((pos - env._target_pos) / POS_SCALE, -speed, speed)
        desired = np.array([np.pi, 0.0, yaw])
        if tilt:
            out = pos[:2] - ROBOT_BASE_XY
            phi = np.arctan2(out[1], out[0])
            axis = np.array([-np.sin(phi), np.cos(phi), 0.0])
            desired = (Rotation.from_rotvec(-axis * tilt) * Rotation.from_euler("xyz", desired)).as_euler(
                "xyz"
            )
        error = _wrap(desired - env._target_euler)
        self._orientation_error = float(np.max(np.abs(error)))
        action[3:6] = np.clip(error / ORN_SCALE, -1, 1)
        action[6] = grip
        return action

    def _yaw_now(self) -> float:
        """Heading of the hand's x axis in the table plane (meaningful for tilted hands too)."""
        x_axis = Rotation.from_euler("xyz", self.env._target_euler).as_matrix()[:, 0]
        return float(np.arctan2(x_axis[1], x_axis[0]))

    def _grasp_yaw(self, block_yaw: float, bias: float = 0.0) -> float:
        """Hand yaw aligned with ``block_yaw`` (mod pi) nearest to the home yaw (pi/2) + ``bias``, which keeps
        the wrist (joint 7) away from its limits whatever the previous subtasks did."""
        home = np.pi / 2 + bias
        options = [block_yaw + k * np.pi for k in range(-3, 4)]
        return float(min(options, key=lambda y: abs(y - home)))

    def _block(self, colour_or_name: str) -> tuple[Vec, float]:
        name = colour_or_name if colour_or_name.startswith("block_") else f"block_{colour_or_name}"
        pos, quat = self.env.block_pose(name)
        return pos, float(Rotation.from_quat(quat).as_euler("xyz")[2])

    def _joint(self, name: str) -> float:
        return float(self.env.data.qpos[self.env._door_qpos[name]])

    def _gripper_open(self) -> bool:
        return float(np.sum(self.env.data.qpos[self.env._finger_qpos])) > 0.075

    def _on_table_top(self) -> list[str]:
        """Blocks resting on the table top (touching its base link, not the robot)."""
        snap = self.env.snapshot()
        return [
            b
            for b in BLOCK_NAMES
            if ("table", "base_link") in snap.blocks[b].contacts
            and "robot" not in snap.blocks[b].contact_bodies
        ]

    def _held_block(self) -> str | None:
        bodies = self.env.snapshot().robot_contact_bodies
        held = [b for b in BLOCK_NAMES if b in bodies]
        return held[0] if held else None

    # ----------------------------------------------------------------------------------- planning
    def _make_plan(self, task: str) -> list[Waypoint]:
        return self._clear_start() + self._task_plan(task)

    def _clear_start(self) -> list[Waypoint]:
        """From wherever the last subtask left the hand (in the cabinet, on the switch, hooked in a handle):
        back out toward the robot without turning, then up to a safe height, hand pointing down."""
        tcp = self.env.tcp_pose()[0]
        yaw, grip = self._yaw_now(), self.env.gripper_action
        plan = []
        if tcp[1] > -0.05 and tcp[2] < 0.64:
            tcp = np.array([tcp[0], -0.10, tcp[2] + 0.01])
            plan.append(Waypoint(tcp, yaw, grip, tol=0.015, keep_orientation=True, max_steps=40))
        if tcp[2] < SAFE_Z - 0.02:
            plan.append(Waypoint(np.array([tcp[0], tcp[1], SAFE_Z]), yaw, grip, tol=0.015, max_steps=40))
        return plan

    def _task_plan(self, task: str) -> list[Waypoint]:
        parts = task.split("_")
        if task.startswith("lift_"):
            return self._lift(parts[1], parts[3])
        if task.startswith("rotate_"):
            return self._rotate(parts[1], -1.0 if parts[3] == "right" else 1.0)
        if task.startswith("push_") and task != "push_into_drawer":
            return self._push(parts[1], 1.0 if parts[3] == "right" else -1.0)
        if task.startswith("move_slider"):
            return self._slider(1.0 if task.endswith("left") else -1.0)
        if task in ("open_drawer", "close_drawer"):
            return self._drawer(task == "open_drawer")
        if task.startswith("turn_") and task.endswith("led"):
            return self._button()
        if task.startswith("turn_"):
            return self._switch(task.startswith("turn_on"))
        if task == "place_in_slider":
            return self._place_slider()
        if task == "place_in_drawer":
            return self._place_drawer()
        if task == "stack_block":
            return self._stack()
        if task == "unstack_block":
            return self._unstack()
        if task == "push_into_drawer":
            return self._push_into_drawer()
        raise ValueError(f"task: no expert for {task!r}")

    def _grasp(
        self, colour: str, from_front: bool = False, lift: float = 0.10, yaw_bias: float = 0.0
    ) -> list[Waypoint]:
        pos, block_yaw = self._block(colour)
        yaw = self._grasp_yaw(block_yaw, yaw_bias)
        grasp = pos + np.array([0, 0, 0.002])
        plan = []
        if from_front:  # into the cabinet: in front at grasp height, then slide in
            front = np.array([pos[0], -0.10, grasp[2]])
            plan += [
                Waypoint(np.array([pos[0], -0.10, SAFE_Z]), yaw, OPEN, tol=0.02),
                Waypoint(front, yaw, OPEN),
                Waypoint(front, yaw, OPEN, until=self._gripper_open, max_steps=30),
                Waypoint(grasp, yaw, OPEN, speed=0.6),
            ]
        else:
            above = pos + np.array([0, 0, 0.09])
            plan += [
                Waypoint(above, yaw, OPEN, tol=0.01),
                Waypoint(above, yaw, OPEN, until=self._gripper_open, max_steps=30),
                Waypoint(grasp, yaw, OPEN, speed=0.6),
            ]
        plan.append(Waypoint(grasp, yaw, CLOSE, min_steps=10, max_steps=10))
        plan.append(Waypoint(grasp + np.array([0, 0, lift]), yaw, CLOSE, speed=0.5))
        return plan

    def _lift(self, colour: str, surface: str) -> list[Waypoint]:
        if surface == "slider":
            return self._grasp(colour, from_front=True, lift=0.04)
        return self._grasp(colour)

    def _rotate(self, colour: str, sign: float) -> list[Waypoint]:
        plan = self._grasp(colour, lift=0.0, yaw_bias=-sign * 0.6)[:-1]
        grasp = plan[-1].pos
        yaw = plan[-1].yaw + sign * 1.35
        plan.append(Waypoint(grasp + np.array([0, 0, 0.003]), yaw, CLOSE, min_steps=30, max_steps=45))
        plan.append(Waypoint(grasp + np.array([0, 0, 0.003]), yaw, OPEN, min_steps=8, max_steps=8))
        plan.append(Waypoint(grasp + np.array([0, 0, 0.08]), yaw, OPEN))
        return plan

    def _push(self, colour: str, direction: float) -> list[Waypoint]:
        pos, block_yaw = self._block(colour)
        size = self.env.layout.block_sizes[f"block_{colour}"]
        half_x = abs(np.cos(block_yaw)) * size[0] / 2 + abs(np.sin(block_yaw)) * size[1] / 2
        start = np.array([pos[0] - direction * (half_x + 0.022), pos[1], pos[2] + 0.005])
        end = start + np.array([direction * 0.16, 0, 0])
        yaw = self._grasp_yaw(np.pi / 2)
        x0 = pos[0]

        def pushed() -> bool:
            return direction * (self._block(colour)[0][0] - x0) > 0.108

        return [
            Waypoint(start + np.array([0, 0, 0.08]), yaw, CLOSE, tol=0.01),
            Waypoint(start, yaw, CLOSE, speed=0.6),
            Waypoint(end, yaw, CLOSE, until=pushed, speed=0.5, max_steps=60),
            Waypoint(
                lambda: self.env.tcp_pose()[0] + np.array([0, 0, 0.02]), yaw, CLOSE, min_steps=5, max_steps=5
            ),
        ]

    def _slider(self, direction: float) -> list[Waypoint]:
        """direction +1: move the door left (joint up, door moves -x); -1: right."""
        layout, q0 = self.env.layout, self._joint("base__slide")
        handle_x = layout.slide_x + 0.135 - q0
        x = handle_x + direction * 0.028
        yaw = self._grasp_yaw(np.pi / 2)
        p_front = np.array([x, -0.13, 0.54])
        p_at = np.array([x, -0.04, 0.54])
        end_q = layout.slide_range if direction > 0 else 0.0
        p_end = p_at + np.array([-direction * (abs(end_q - q0) + 0.03), 0, 0])

        def moved() -> bool:  # all the way, so the freed slot is fully open for what comes next
            return abs(self._joint("base__slide") - end_q) < 0.01

        return [
            Waypoint(p_front, yaw, CLOSE, tol=0.015),
            Waypoint(p_at, yaw, CLOSE),
            Waypoint(p_end, yaw, CLOSE, until=moved, speed=0.5, max_steps=90),
            Waypoint(
                lambda: self.env.tcp_pose()[0] + np.array([0, -0.03, 0]), yaw, CLOSE, min_steps=5, max_steps=5
            ),
        ]

    def _drawer(self, open_: bool) -> list[Waypoint]:
        """Hook behind the handle bar and pull (open), or push its front (close), all the way."""
        dx, q0 = self.env.layout.drawer_x, self._joint("base__drawer")
        yaw = self._grasp_yaw(np.pi / 2)
        y = (-0.265 if open_ else -0.322) - q0
        above = np.array([dx, y, 0.50])
        at = np.array([dx, y, 0.367])
        travel = (0.22 - q0) if open_ else q0
        end = at + np.array([0, -(travel + 0.02) if open_ else travel + 0.02, 0])
        end_q = 0.22 if open_ else 0.0

        def moved() -> bool:
            return abs(self._joint("base__drawer") - end_q) < 0.008

        release = 0.008 if open_ else -0.01  # step off the bar before rising
        return [
            Waypoint(above, yaw, CLOSE, tol=0.015),
            Waypoint(at, yaw, CLOSE, speed=0.6),
            Waypoint(end, yaw, CLOSE, until=moved, speed=0.5, max_steps=80),
            Waypoint(lambda: self.env.tcp_pose()[0] + np.array([0, release, 0]), yaw, CLOSE, max_steps=5),
            Waypoint(lambda: self.env.tcp_pose()[0] + np.array([0, 0, 0.10]), yaw, CLOSE),
        ]

    def _button(self) -> list[Waypoint]:
        bx = self.env.layout.button_x
        yaw = self._grasp_yaw(np.pi / 2)  # hand's long side along x, clear of the slider's handle
        led0 = self.env.lights["led"]
        above, press = np.array([bx, -0.12, 0.55]), np.array([bx, -0.12, 0.468])
        return [
            Waypoint(above, yaw, CLOSE, tol=0.01),
            Waypoint(press, yaw, CLOSE, until=lambda: self.env.lights["led"] != led0, speed=0.5),
            Waypoint(above, yaw, CLOSE),
        ]

    def _switch(self, on: bool) -> list[Waypoint]:
        sx, q0 = self.env.layout.switch_x, self._joint("base__switch")
        yaw = self._grasp_yaw(0.0)  # hand's long side along y, clear of the cabinet wall
        knob = np.array([sx, 0.036, 0.507]) + q0 * SWITCH_AXIS
        target = 1 if on else 0

        def switched() -> bool:
            return self.env.lights["lightbulb"] == target

        tilt = SWITCH_TILT
        if on:  # finger against the knob's front face, then along the axis, pressing slightly back
            start = knob + np.array([0, -0.032, -0.005])
            plan = [
                Waypoint(start + np.array([0, -0.06, 0.02]), yaw, CLOSE, tol=0.01, tilt=tilt),
                Waypoint(start, yaw, CLOSE, speed=0.5, tilt=tilt),
                Waypoint(
                    start + 0.075 * SWITCH_AXIS + np.array([0, 0.012, 0]),
                    yaw,
                    CLOSE,
                    until=switched,
                    speed=0.4,
                    max_steps=60,
                    tilt=tilt,
                ),
            ]
        else:  # finger on the knob's top, then down the axis
            start = knob + np.array([0, 0, 0.024])
            plan = [
                Waypoint(start + np.array([0, 0, 0.07]), yaw, CLOSE, tol=0.01, tilt=tilt),
                Waypoint(start, yaw, CLOSE, speed=0.5, tilt=tilt),
                Waypoint(
                    start - 0.075 * SWITCH_AXIS - np.array([0, 0, 0.01]),
                    yaw,
                    CLOSE,
                    until=switched,
                    speed=0.4,
                    max_steps=60,
                    tilt=tilt,
                ),
            ]
        plan.append(
            Waypoint(
                lambda: self.env.tcp_pose()[0] + np.array([0, -0.04, 0.03]),
                yaw,
                CLOSE,
                min_steps=5,
                max_steps=5,
                tilt=tilt,
            )
        )
        return plan

    def _open_slot_x(self) -> float:
        """An x on the uncovered half of the plank, as far as possible from blocks already there."""
        layout, q = self.env.layout, self._joint("base__slide")
        door = (layout.slide_x - 0.005 - q, layout.slide_x + 0.285 - q)
        px0, px1 = layout.plank_x
        gaps = [(px0, door[0]), (door[1], px1)]
        lo, hi = max(gaps, key=lambda g: g[1] - g[0])
        snap = self.env.snapshot()
        on_plank = [
            self._block(b)[0][0] for b in BLOCK_NAMES if ("table", "plank_link") in snap.blocks[b].contacts
        ]
        candidates = np.linspace(lo + 0.055, hi - 0.055, 9)
        if not on_plank:
            return float(candidates[len(candidates) // 2])
        return float(max(candidates, key=lambda x: min(abs(x - b) for b in on_plank)))

    def _place_slider(self) -> list[Waypoint]:
        # hand turned so its long side points into the cabinet (it fits beside the door and other blocks)
        x, yaw = self._open_slot_x(), self._grasp_yaw(0.0)
        z, front, inside = 0.49, -0.085, 0.07
        return [
            Waypoint(np.array([x, -0.13, SAFE_Z]), yaw, CLOSE, tol=0.015),  # in front of the door's handle
            Waypoint(np.array([x, front, z]), yaw, CLOSE),
            Waypoint(np.array([x, inside, z]), yaw, CLOSE, speed=0.6),
            Waypoint(np.array([x, inside, z]), yaw, OPEN, min_steps=12, max_steps=12),
            Waypoint(np.array([x, front, z]), yaw, OPEN),
            Waypoint(np.array([x, front, SAFE_Z]), yaw, OPEN),
        ]

    def _place_drawer(self) -> list[Waypoint]:
        dx, q = self.env.layout.drawer_x, self._joint("base__drawer")
        yaw = self._yaw_now()
        spot = np.array([dx, -0.235 - q + 0.06, 0.46])
        return [
            Waypoint(spot + np.array([0, 0, 0.08]), yaw, CLOSE, tol=0.015),
            Waypoint(spot, yaw, CLOSE),
            Waypoint(spot, yaw, OPEN, min_steps=12, max_steps=12),
            Waypoint(spot + np.array([0, 0, 0.10]), yaw, OPEN),
        ]

    def _stack(self) -> list[Waypoint]:
        held = self._held_block()
        others = [b for b in self._on_table_top() if b != held]
        if not others or held is None:
            return []
        pos, block_yaw = self._block(others[0])
        yaw = self._grasp_yaw(block_yaw)

        def drop() -> Vec:  # held block's bottom 3 mm above the lower block's top
            offset = self.env.tcp_pose()[0][2] - self._block(held)[0][2]
            return np.array([pos[0], pos[1], pos[2] + 0.04 + 0.003 + offset])

        return [
            Waypoint(pos + np.array([0, 0, 0.13]), yaw, CLOSE, tol=0.01),
            Waypoint(drop, yaw, CLOSE, speed=0.4),
            Waypoint(lambda: self.env._target_pos.copy(), yaw, OPEN, min_steps=15, max_steps=15),
            Waypoint(pos + np.array([0, 0, 0.14]), yaw, OPEN),
        ]

    def _unstack(self) -> list[Waypoint]:
        top = max(BLOCK_NAMES, key=lambda b: self._block(b)[0][2])
        return self._grasp(top.removeprefix("block_"), lift=0.08)

    def _push_into_drawer(self) -> list[Waypoint]:
        on_table = self._on_table_top()
        if not on_table:
            return []
        name = on_table[0]
        pos, block_yaw = self._block(name)
        size = self.env.layout.block_sizes[name]
        half_y = abs(np.sin(block_yaw)) * size[0] / 2 + abs(np.cos(block_yaw)) * size[1] / 2
        half_x = abs(np.cos(block_yaw)) * size[0] / 2 + abs(np.sin(block_yaw)) * size[1] / 2
        x = pos[0]
        # the finger behind the block must not land on the slider's handle (x +-0.01, y > -0.06, z > 0.50)
        handle_x = self.env.layout.slide_x + 0.135 - self._joint("base__slide")
        if pos[1] + half_y + 0.015 + 0.012 > -0.062 and abs(x - handle_x) < 0.024:
            x = handle_x + np.sign(x - handle_x or 1.0) * 0.024
            x = float(np.clip(x, pos[0] - half_x + 0.004, pos[0] + half_x - 0.004))
        start = np.array([x, pos[1] + half_y + 0.015, pos[2] - 0.003])
        end = np.array([x, -0.25, pos[2] - 0.003])
        yaw = self._grasp_yaw(np.pi / 2)  # hand's long side along x, clear of the cabinet top
        return [
            Waypoint(start + np.array([0, 0, 0.08]), yaw, CLOSE, tol=0.01),
            Waypoint(start, yaw, CLOSE, speed=0.6),
            Waypoint(end, yaw, CLOSE, speed=0.5),
            Waypoint(end + np.array([0, 0.0, 0.10]), yaw, CLOSE),
        ]


def make_expert(env_name: str | None = None) -> CalvinExpert:
    """Factory used by ``EXPERTS`` in envs/registration.py."""
    return CalvinExpert(env_name)


class ExpertAgent:
    """The expert behind the protocol's agent API (``reset()``, ``act(obs)``), bound to one env."""

    def __init__(self, env):
        self.env = env
        self.expert = CalvinExpert()

    def reset(self) -> None:
        self.expert.reset(self.env)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        return self.expert.act(obs)
