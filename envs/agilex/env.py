"""The AgileX bimanual table (two PiPER arms) as a gymnasium env; the three tasks subclass it.

Observation (a Dict):
    ``language``  str, the episode's instruction (one of the task's paraphrases).
    ``state``     (14,) float32: [L j1..j6 (rad), L gripper opening (m), R j1..j6, R gripper], left first.
    ``tcp_state`` (6,) float32: [L tool centre xyz, R tool centre xyz] (m, world frame), the forward
                  kinematics of ``state`` (what a real arm's controller reports as its end pose).
    ``object_state`` (14,) float32: privileged object poses for low-dimensional policies, per object of
                  the task (``object_bodies`` order) its world position (m) and quaternion (w, x, y, z),
                  zero-padded to two objects so that one policy serves all three tasks.
    ``images``    {"cam_high", "cam_left_wrist", "cam_right_wrist"}: (H, W, 3) uint8, only when
                  ``camera_mode="every_step"``; with ``"on_demand"`` call ``env.unwrapped.render_images()``.
Action: (14,) float32 absolute joint targets in the same layout as ``state`` (the real robot's convention).
Targets are clipped to the SDK joint limits and the gripper stroke (0..0.07 m); each joint then moves
towards its target at no more than 3 rad/s (the SDK's speed limit). ``info["action_clipped"]`` and
``info["speed_limited"]`` say when either happened.

Control runs at 25 Hz (RDT's "agilex" rate): one ``step`` is 20 physics steps of 2 ms.
Reward 1.0 and ``terminated=True`` on success; ``truncated=True`` at ``max_episode_steps``. An unstable
simulation (MuJoCo warning or non-finite state) ends the episode as a failure with
``info["failure_reason"]``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from dfm_vla.envs.agilex.kinematics import PIPER_GRIPPER_RANGE, PIPER_JOINT_LIMITS, PIPER_MAX_JOINT_SPEED

ARMS: tuple[str, str] = ("left", "right")
CAMERA_NAMES: tuple[str, str, str] = ("cam_high", "cam_left_wrist", "cam_right_wrist")
CAMERA_MODES = ("none", "every_step", "on_demand")
TABLE_TOP_Z = 0.80  # m, world frame
MAX_OBJECTS = 2  # object_state holds 7 numbers per object, zero-padded to this many objects
CONTROL_DT = 0.04  # s (25 Hz)
# Arm pose at reset (rad), per arm j1..j6: tool 0.2 m above the table, 0.2 m ahead of the base, tilted
# 0.6 rad forward from straight down.
HOME_ARM_QPOS = np.array([0.0, 0.82, -0.80, 0.0, 1.04, 0.0])
HOME_GRIPPER_OPENING = 0.06  # m

LANGUAGE_CHARSET = string.ascii_letters + string.digits + " .,;:'-()"


def asset_path(file_name: str) -> str:
    """Absolute path of an MJCF shipped in ``dfm_vla/envs/agilex/assets``."""
    return str(resources.files("dfm_vla.envs.agilex") / "assets" / file_name)


def action_limits() -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (14,) float32: joint limits (rad) and gripper stroke (m), left arm first."""
    lo_arm = np.append(PIPER_JOINT_LIMITS[:, 0], PIPER_GRIPPER_RANGE[0])
    hi_arm = np.append(PIPER_JOINT_LIMITS[:, 1], PIPER_GRIPPER_RANGE[1])
    return np.tile(lo_arm, 2).astype(np.float32), np.tile(hi_arm, 2).astype(np.float32)


@dataclass
class AgileXConfig:
    """Constructor options shared by every AgileX task."""

    camera_mode: str = "none"
    image_size: int | tuple[int, int] = 128  # int -> square; (height, width)
    max_episode_steps: int | None = None  # None -> the task's default
    physics_steps_per_control: int = 20


class AgileXEnv(gym.Env):
    """Base env: loads the task's MJCF, steps joint-target actions, renders the three cameras.

    Subclasses set ``task_xml``, ``instructions``, ``default_max_episode_steps`` and implement
    ``_place_objects(rng)`` (randomised initial layout) and ``_is_success() -> bool``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / CONTROL_DT))}
    task_xml: str = "cobot_magic.xml"
    instructions: tuple[str, ...] = ("do nothing",)
    default_max_episode_steps: int = 300

    def __init__(
        self,
        camera_mode: str = "none",
        image_size: int | tuple[int, int] = 128,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if camera_mode not in CAMERA_MODES:
            raise ValueError(f"camera_mode: expected one of {CAMERA_MODES}, got {camera_mode!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if len(image_size) != 2 or min(image_size) < 8:
            raise ValueError(f"image_size: expected an int or (height, width) >= 8, got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.config = AgileXConfig(camera_mode, tuple(image_size), max_episode_steps)
        self.camera_mode = camera_mode
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps or self.default_max_episode_steps)

        self.model = mujoco.MjModel.from_xml_path(asset_path(self.task_xml))
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, self.image_size[0])
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, self.image_size[1])
        self.data = mujoco.MjData(self.model)
        self._arm_qpos_adr = np.array(
            [self.model.jnt_qposadr[self.model.joint(f"{s}_joint{j}").id] for s in ARMS for j in range(1, 7)]
        ).reshape(2, 6)
        self._finger_qpos_adr = np.array(
            [[self.model.jnt_qposadr[self.model.joint(f"{s}_finger_{f}").id] for f in "ab"] for s in ARMS]
        )
        self._arm_ctrl = np.array(
            [[self.model.actuator(f"{s}_joint{j}").id for j in range(1, 7)] for s in ARMS]
        )
        self._gripper_ctrl = np.array([self.model.actuator(f"{s}_gripper").id for s in ARMS])
        self._pad_geoms = {
            s: {self.model.body_geomadr[self.model.body(f"{s}_finger_{f}").id] for f in "ab"} for s in ARMS
        }
        self.action_low, self.action_high = action_limits()
        self._max_joint_step = PIPER_MAX_JOINT_SPEED * CONTROL_DT

        self.action_space = gym.spaces.Box(self.action_low, self.action_high, dtype=np.float32)
        margin = np.tile(np.append(np.full(6, 0.5), 0.01), 2).astype(np.float32)
        state_low, state_high = self.action_low - margin, self.action_high + margin
        obs_spaces: dict[str, gym.Space] = {
            "language": gym.spaces.Text(max_length=256, charset=LANGUAGE_CHARSET),
            # Joint limits widened by 0.5 rad (MuJoCo limits are soft); gripper opening -0.01..0.08 m.
            "state": gym.spaces.Box(state_low, state_high, dtype=np.float32),
            "tcp_state": gym.spaces.Box(-np.inf, np.inf, (6,), dtype=np.float32),
            "object_state": gym.spaces.Box(-np.inf, np.inf, (7 * MAX_OBJECTS,), dtype=np.float32),
        }
        if camera_mode == "every_step":
            h, w = self.image_size
            obs_spaces["images"] = gym.spaces.Dict(
                {cam: gym.spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8) for cam in CAMERA_NAMES}
            )
        self.observation_space = gym.spaces.Dict(obs_spaces)
        self._renderer: mujoco.Renderer | None = None
        self._target = np.zeros(14)
        self._steps = 0
        self.instruction = self.instructions[0]

    # ----------------------------------------------------------------------------------------- task API
    def _place_objects(self, rng: np.random.Generator) -> None:
        """Set object poses in ``self.data`` (and any per-episode layout); called by ``reset``."""

    def _is_success(self) -> bool:
        return False

    object_bodies: tuple[str, ...] = ()  # free or mocap bodies whose poses ``object_state`` reports

    # ----------------------------------------------------------------------------------- helpers
    def joint_state(self) -> np.ndarray:
        """(14,) float64 measured joint positions, grippers as opening in m, left arm first."""
        q = self.data.qpos
        out = np.empty(14)
        for i in range(2):
            out[7 * i : 7 * i + 6] = q[self._arm_qpos_adr[i]]
            out[7 * i + 6] = q[self._finger_qpos_adr[i]].sum()
        return out

    def tcp_state(self) -> np.ndarray:
        """(6,) float32 world positions (m) of the left and right tool centre points (``<arm>_tcp`` sites)."""
        return np.concatenate([self.data.site(f"{arm}_tcp").xpos for arm in ARMS]).astype(np.float32)

    @property
    def joint_targets(self) -> np.ndarray:
        """(14,) the joint targets the actuators track now (after clipping and speed limiting)."""
        return self._target.copy()

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of body ``name``."""
        b = self.data.body(name)
        return b.xpos.copy(), b.xmat.reshape(3, 3).copy()

    def task_state(self) -> dict[str, np.ndarray]:
        """Privileged object poses for experts and logs: {name: (7,) position + quaternion}."""
        return {
            name: np.concatenate([self.data.body(name).xpos, self.data.body(name).xquat])
            for name in self.object_bodies
        }

    def object_state(self) -> np.ndarray:
        """(7 * MAX_OBJECTS,) float32: ``task_state``'s poses in ``object_bodies`` order, zero-padded."""
        out = np.zeros(7 * MAX_OBJECTS, np.float32)
        poses = list(self.task_state().values())
        if poses:
            out[: 7 * len(poses)] = np.concatenate(poses)
        return out

    def touching(self, geom_ids: set[int], other_geom_ids: set[int]) -> bool:
        """True when any active contact joins a geom of ``geom_ids`` to one of ``other_geom_ids``."""
        for c in self.data.contact[: self.data.ncon]:
            if (c.geom1 in geom_ids and c.geom2 in other_geom_ids) or (
                c.geom2 in geom_ids and c.geom1 in other_geom_ids
            ):
                return True
        return False

    def body_geoms(self, body_name: str) -> set[int]:
        b = self.model.body(body_name)
        return set(range(int(b.geomadr[0]), int(b.geomadr[0] + b.geomnum[0])))

    def pad_geoms(self, arm: str) -> set[int]:
        return self._pad_geoms[arm]

    def get_sim_state(self) -> np.ndarray:
        """Flattened simulator state (mjSTATE_INTEGRATION: time, qpos, qvel, act, ctrl, mocap, ...)."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, state, spec)
        return state

    def set_sim_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_sim_state`` (same task)."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        size = mujoco.mj_stateSize(self.model, spec)
        if np.shape(state) != (size,):
            raise ValueError(f"state: expected shape ({size},), got {np.shape(state)}")
        mujoco.mj_setState(self.model, self.data, np.asarray(state, dtype=np.float64), spec)
        mujoco.mj_forward(self.model, self.data)
        self._target = self.joint_state()

    # ----------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        home = np.concatenate([HOME_ARM_QPOS, [HOME_GRIPPER_OPENING]] * 2)
        self._write_joint_positions(home)
        self._target = home.copy()
        self._apply_ctrl(home)
        self._place_objects(self.np_random)
        mujoco.mj_forward(self.model, self.data)
        # Let objects settle onto the table with the arms holding still.
        for _ in range(50):
            mujoco.mj_step(self.model, self.data)
        self.instruction = str(self.instructions[int(self.np_random.integers(len(self.instructions)))])
        self._steps = 0
        return self._observation(), {"success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (14,):
            raise ValueError(f"action: expected shape (14,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action: expected finite values, got NaN or inf")
        clipped = np.clip(action, self.action_low, self.action_high)
        action_clipped = bool(np.any(np.abs(clipped - action) > 1e-9))
        start = self._target.copy()
        delta = clipped - start
        arm_idx = np.r_[0:6, 7:13]
        limited = np.clip(delta[arm_idx], -self._max_joint_step, self._max_joint_step)
        speed_limited = bool(np.any(np.abs(limited - delta[arm_idx]) > 1e-9))
        delta[arm_idx] = limited
        n = self.config.physics_steps_per_control
        failure_reason = None
        for k in range(1, n + 1):
            self._apply_ctrl(start + delta * (k / n))
            mujoco.mj_step(self.model, self.data)
        self._target = start + delta
        self._steps += 1
        if not np.all(np.isfinite(self.data.qpos)) or not np.all(np.isfinite(self.data.qvel)):
            failure_reason = "non-finite simulator state"
        else:
            for warning in ("mjWARN_BADQPOS", "mjWARN_BADQVEL", "mjWARN_BADQACC"):
                if self.data.warning[getattr(mujoco.mjtWarning, warning)].number > 0:
                    failure_reason = f"MuJoCo warning {warning} (simulation unstable, state was reset)"
                    break
        success = failure_reason is None and bool(self._is_success())
        terminated = success or failure_reason is not None
        truncated = not terminated and self._steps >= self.max_episode_steps
        info: dict[str, Any] = {
            "success": success,
            "action_clipped": action_clipped,
            "speed_limited": speed_limited,
        }
        if failure_reason is not None:
            info["failure_reason"] = failure_reason
        obs = self._observation() if failure_reason is None else self._safe_observation()
        return obs, float(success), terminated, truncated, info

    def render(self):
        """``render_mode="rgb_array"``: the cam_high view at ``image_size``."""
        if self.render_mode != "rgb_array":
            return None
        return self._render_camera("cam_high")

    def hold_action(self, previous: np.ndarray | None = None) -> np.ndarray:
        """(14,) the joint targets the actuators track now: what the robot runs while it waits for a plan
        (``--latency-steps``; absolute targets, so holding them keeps the arms where they are headed)."""
        return self.joint_targets.astype(np.float32)

    def render_images(self) -> dict[str, np.ndarray]:
        """Render the three cameras now: {camera name: (H, W, 3) uint8}."""
        if self.camera_mode == "none":
            raise RuntimeError("render_images: this env was made with camera_mode='none'; use 'on_demand'")
        return {cam: self._render_camera(cam) for cam in CAMERA_NAMES}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ----------------------------------------------------------------------------------- internals
    def _write_joint_positions(self, joints14: np.ndarray) -> None:
        for i in range(2):
            self.data.qpos[self._arm_qpos_adr[i]] = joints14[7 * i : 7 * i + 6]
            self.data.qpos[self._finger_qpos_adr[i]] = joints14[7 * i + 6] / 2
        self.data.qvel[:] = 0

    def _apply_ctrl(self, target14: np.ndarray) -> None:
        for i in range(2):
            self.data.ctrl[self._arm_ctrl[i]] = target14[7 * i : 7 * i + 6]
            self.data.ctrl[self._gripper_ctrl[i]] = target14[7 * i + 6] / 2  # per-finger travel

    def _render_camera(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            h, w = self.image_size
            self._renderer = mujoco.Renderer(self.model, h, w)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {
            "language": self.instruction,
            "state": self.joint_state().astype(np.float32),
            "tcp_state": self.tcp_state(),
            "object_state": self.object_state(),
        }
        if self.camera_mode == "every_step":
            obs["images"] = self.render_images()
        return obs

    def _safe_observation(self) -> dict[str, Any]:
        """A valid observation after a failed (unstable) step: zero state, black images."""
        obs: dict[str, Any] = {
            "language": self.instruction,
            "state": np.zeros(14, dtype=np.float32),
            "tcp_state": np.zeros(6, dtype=np.float32),
            "object_state": np.zeros(7 * MAX_OBJECTS, dtype=np.float32),
        }
        if self.camera_mode == "every_step":
            h, w = self.image_size
            obs["images"] = {cam: np.zeros((h, w, 3), dtype=np.uint8) for cam in CAMERA_NAMES}
        return obs
