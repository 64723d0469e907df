"""``LiberoEnv``: a gymnasium env over the real LIBERO benchmark, with the official evaluation protocol.

Observation (a Dict; the space declares exactly what each ``camera_mode`` returns):

- ``language``: the task instruction (``task.language``, what published LIBERO policies condition on).
- ``state``: float32 (8,) = end-effector (grip site) position (3, m, world frame), end-effector
  orientation as axis-angle (3, rad, of robosuite's ``robot0_eef_quat``), gripper finger qpos (2, m).
  This is the openpi / UniVLA convention, so the official LIBERO data sets map onto it.
- ``object_state``: float32 (D,), see ``object_state_names``: per movable object (BDDL order) its
  position (3), quaternion xyzw (4) and position minus the grip-site position (3); then per articulated
  fixture (cabinet, stove, ...) its body position (3) and up to 3 joint positions (drawer slides in m,
  knob angle in rad). Slots a task does not use are 0. D is fixed per suite (58 for LIBERO-Goal).
- ``images`` (``camera_mode="every_step"`` only): ``agentview`` and ``wrist``, uint8 (S, S, 3),
  rotated 180 degrees as the published pipelines do. With ``camera_mode="on_demand"`` call
  ``env.unwrapped.render_images()`` when a policy needs images.

Action: float (7,) in [-1, 1] = [dx, dy, dz, rx, ry, rz, gripper] for robosuite's OSC_POSE delta
controller (gripper -1 open, +1 close). Out-of-range actions are clipped and counted
(``info["n_clipped_actions"]``, a warning the first time); NaN/inf actions raise.

Reset options: ``task_id`` (when the env serves all tasks of a suite), ``init_state_id`` (0..49, one of
the benchmark's official initial states; None = random placement from the benchmark's own sampler,
seeded from the env's RNG) and ``placement_seed`` (int, overrides the seed of the placement sampler).
A random placement that throws an object off the table while it settles is drawn again from a derived
seed; ``info["placement_seed"]`` is the seed used and ``info["placement_redraws"]`` counts the redraws.
The protocol constants live in ``dfm_vla.envs.libero.protocol``.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dfm_vla.envs.libero import protocol, suites
from dfm_vla.envs.libero.failure_phases import GoalPhaseTracker

CAMERA_MODES = ("none", "every_step", "on_demand")
LANGUAGE_CHARSET = string.ascii_letters + string.digits + " ,.;:'\"-_()/&!?"
LANGUAGE_MAX_LENGTH = 512
_INSTABILITY_WARNINGS = ("mjWARN_BADQACC", "mjWARN_BADQPOS", "mjWARN_BADQVEL")
# A random placement with an object that drops more than FALLEN_DROP m while it settles (thrown off the
# table; LIBERO places objects about 7 cm above their support) is drawn again, up to
# MAX_PLACEMENT_REDRAWS times (see ``LiberoEnv.reset``).
FALLEN_DROP, MAX_PLACEMENT_REDRAWS = 0.15, 10


class LiberoEnv(gym.Env):
    """One LIBERO suite (``task_id`` None = all its tasks, chosen per reset) as a gymnasium env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": protocol.CONTROL_FREQ_HZ}

    def __init__(
        self,
        suite: str = "libero_goal",
        task_id: int | None = None,
        camera_mode: str = "none",
        image_size: int = 128,
        max_episode_steps: int | None = None,
        settle_steps: int = protocol.SETTLE_STEPS,
        render_mode: str | None = None,
    ) -> None:
        self.suite = protocol.canonical_suite(suite)
        self.num_tasks = suites.num_tasks(self.suite)
        if task_id is not None and not (
            isinstance(task_id, (int, np.integer)) and 0 <= task_id < self.num_tasks
        ):
            raise ValueError(f"task_id: expected None or an int in [0, {self.num_tasks}), got {task_id!r}")
        if camera_mode not in CAMERA_MODES:
            raise ValueError(f"camera_mode: expected one of {CAMERA_MODES}, got {camera_mode!r}")
        if not (isinstance(image_size, (int, np.integer)) and image_size >= 8):
            raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.fixed_task_id = None if task_id is None else int(task_id)
        self.num_init_states = protocol.NUM_INIT_STATES  # official initial states per task
        self.camera_mode = camera_mode
        self.image_size = int(image_size)
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps or protocol.MAX_EPISODE_STEPS[self.suite])
        self.settle_steps = int(settle_steps)

        n_objects, n_fixtures = suites.object_slots(self.suite)
        self._n_object_slots, self._n_fixture_slots = n_objects, n_fixtures
        obs_spaces: dict[str, spaces.Space] = {
            "language": spaces.Text(LANGUAGE_MAX_LENGTH, min_length=1, charset=LANGUAGE_CHARSET),
            "state": spaces.Box(-np.inf, np.inf, (8,), np.float32),
            "object_state": spaces.Box(-np.inf, np.inf, (suites.object_state_dim(self.suite),), np.float32),
        }
        if camera_mode == "every_step":
            img = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
            obs_spaces["images"] = spaces.Dict({view: img for view in protocol.CAMERAS})
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (protocol.ACTION_DIM,), np.float32)

        self._inner = None  # libero ControlEnv of the current task
        self._phases: GoalPhaseTracker | None = None  # the current episode's goal predicates, per step
        self.task: suites.TaskInfo | None = None
        self._episode_over = True
        self._warned_clip = False
        self._load_task(self.fixed_task_id if self.fixed_task_id is not None else 0)

    # ----------------------------------------------------------------- simulator plumbing
    @property
    def instruction(self) -> str:
        return self.task.language

    @property
    def inner(self):
        """The LIBERO ``ControlEnv`` of the current task (privileged access for experts and tests)."""
        return self._inner

    @property
    def sim(self):
        """robosuite ``MjSim`` of the current task (fetch it again after ``reset``)."""
        return self._inner.sim

    @property
    def task_id(self) -> int:
        return self.task.task_id

    def _load_task(self, task_id: int) -> None:
        if self.task is not None and self.task.task_id == task_id and self._inner is not None:
            return
        from libero.libero.envs.env_wrapper import ControlEnv

        if self._inner is not None:
            self._inner.close()
            self._inner = None
        info = suites.task_info(self.suite, task_id)
        with contextlib.redirect_stdout(io.StringIO()):
            self._inner = ControlEnv(
                bddl_file_name=info.bddl_file,
                use_camera_obs=False,
                has_offscreen_renderer=self.camera_mode != "none" or self.render_mode == "rgb_array",
                hard_reset=False,  # reuse one MjSim: reset costs 0.01 s instead of 0.6-2.2 s
                ignore_done=True,  # this env truncates at the protocol's limit itself
                horizon=self.settle_steps + self.max_episode_steps + 1000,
                camera_heights=self.image_size,
                camera_widths=self.image_size,
                control_freq=protocol.CONTROL_FREQ_HZ,
            )
        self.task = info
        self._index_task()

    def _index_task(self) -> None:
        """Cache body ids and joint addresses that ``object_state`` reads."""
        base = self._inner.env
        model = self._inner.sim.model
        self._object_body_ids = [base.obj_body_id[name] for name in self.task.objects]
        self._fixture_body_ids = [base.obj_body_id[name] for name in self.task.fixtures]
        self._fixture_qpos_addrs = []
        for name in self.task.fixtures:
            joints = [j for j in base.fixtures_dict[name].joints]
            if len(joints) > suites.FIXTURE_JOINT_SLOTS:
                raise RuntimeError(
                    f"fixture {name}: {len(joints)} joints > {suites.FIXTURE_JOINT_SLOTS} slots"
                )
            self._fixture_qpos_addrs.append([model.get_joint_qpos_addr(j) for j in joints])
        robot = base.robots[0]
        self._eef_site_id = model.site_name2id(robot.gripper.important_sites["grip_site"])
        # robosuite's robot0_eef_quat is the orientation of this body (the hand), not of the grip site
        self._hand_body_id = model.body_name2id(robot.robot_model.eef_name)
        self._gripper_qpos_ids = np.array(robot._ref_gripper_joint_pos_indexes)

    @property
    def object_state_names(self) -> list[str]:
        """A name for every entry of ``obs["object_state"]`` for the current task ('' = unused slot)."""
        names: list[str] = []
        for i in range(self._n_object_slots):
            obj = self.task.objects[i] if i < len(self.task.objects) else ""
            fields = ("x", "y", "z", "qx", "qy", "qz", "qw", "dx_eef", "dy_eef", "dz_eef")
            names += [f"{obj}.{f}" if obj else "" for f in fields]
        for i in range(self._n_fixture_slots):
            fix = self.task.fixtures[i] if i < len(self.task.fixtures) else ""
            joints = list(self._inner.env.fixtures_dict[fix].joints) if fix else []
            names += [f"{fix}.{f}" if fix else "" for f in ("x", "y", "z")]
            names += [joints[j] if j < len(joints) else "" for j in range(suites.FIXTURE_JOINT_SLOTS)]
        return names

    # ----------------------------------------------------------------- observations
    def _state(self) -> np.ndarray:
        import robosuite.utils.transform_utils as T

        data = self._inner.sim.data
        eef_pos = np.array(data.site_xpos[self._eef_site_id])
        hand_quat = T.convert_quat(np.array(data.body_xquat[self._hand_body_id]), to="xyzw")
        gripper = data.qpos[self._gripper_qpos_ids]
        return np.concatenate([eef_pos, T.quat2axisangle(hand_quat.copy()), gripper]).astype(np.float32)

    def _object_state(self) -> np.ndarray:
        data = self._inner.sim.data
        out = np.zeros(self.observation_space["object_state"].shape, np.float64)
        eef = data.site_xpos[self._eef_site_id]
        for i, bid in enumerate(self._object_body_ids):
            pos = data.body_xpos[bid]
            w, x, y, z = data.body_xquat[bid]
            out[i * 10 : i * 10 + 10] = [*pos, x, y, z, w, *(pos - eef)]
        off = self._n_object_slots * suites.OBJECT_SLOT_DIM
        for i, (bid, addrs) in enumerate(zip(self._fixture_body_ids, self._fixture_qpos_addrs, strict=True)):
            start = off + i * suites.FIXTURE_SLOT_DIM
            out[start : start + 3] = data.body_xpos[bid]
            for j, addr in enumerate(addrs):
                out[start + 3 + j] = data.qpos[addr]
        return out.astype(np.float32)

    def hold_action(self, previous: np.ndarray | None = None) -> np.ndarray:
        """(7,) the action that keeps the arm where it is (zero motion) and the gripper as last commanded
        (open before any action): what the robot runs while it waits for a plan (``--latency-steps``)."""
        hold = protocol.SETTLE_ACTION.copy()
        if previous is not None:
            hold[-1] = float(np.asarray(previous).reshape(-1)[-1])
        return hold.astype(np.float32)

    def render_images(self) -> dict[str, np.ndarray]:
        """Render every camera now: {view: uint8 (S, S, 3)}, rotated 180 degrees (protocol)."""
        if self.camera_mode == "none" and self.render_mode != "rgb_array":
            raise RuntimeError("render_images: this env was made with camera_mode='none' (no renderer)")
        images = {}
        for view, camera in protocol.CAMERAS.items():
            img = self._inner.sim.render(camera_name=camera, width=self.image_size, height=self.image_size)
            images[view] = np.ascontiguousarray(img[::-1, ::-1] if protocol.IMAGE_ROTATE_180 else img)
        return images

    def render(self) -> np.ndarray | None:
        """``render_mode="rgb_array"``: the agentview image (uint8, S x S x 3)."""
        if self.render_mode != "rgb_array":
            return None
        return self.render_images()["agentview"]

    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {
            "language": self.instruction,
            "state": self._state(),
            "object_state": self._object_state(),
        }
        if self.camera_mode == "every_step":
            obs["images"] = self.render_images()
        return obs

    def demo_obs_extras(self) -> dict[str, np.ndarray]:
        """LIBERO's demo keys: ee_pos (3), ee_ori (3, axis-angle), gripper_states (2), joint_states (7)."""
        state = self._state()
        joints = self._inner.sim.data.qpos[self._inner.env.robots[0]._ref_joint_pos_indexes]
        return {
            "ee_pos": state[:3].astype(np.float64),
            "ee_ori": state[3:6].astype(np.float64),
            "gripper_states": state[6:8].astype(np.float64),
            "joint_states": np.array(joints, np.float64),
        }

    def problem_info(self) -> dict[str, Any]:
        """File-level attrs for demo files of the current task (LIBERO's ``problem_info`` and BDDL)."""
        return {
            "problem_info": {
                "problem_name": self._inner.problem_name,
                "domain_name": self._inner.domain_name,
                "language_instruction": self.instruction,
                "bddl_language_instruction": self.task.bddl_language,
                "suite": self.suite,
                "task_name": self.task.name,
            },
            "bddl_file_name": os.path.normpath(self.task.bddl_file),
            "file_stem": f"{self.task.name}_demo",
        }

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state [time, qpos, qvel] (float64), as stored in demo files."""
        return np.asarray(self._inner.get_sim_state(), np.float64).copy()

    def failure_phase(self) -> str | None:
        """How far the episode got towards its goal (``envs/libero/failure_phases.py``): ``"not reached"``,
        ``"lost on the way"`` ...; None after a success or before the first step."""
        if self._phases is None or self.check_success():
            return None
        return self._phases.failure_phase()

    def disturbed_objects(self) -> list[str]:
        """Objects and fixture joints outside the task's goal that this episode moved (see
        ``GoalPhaseTracker.disturbed``): on LIBERO-Goal, a sign of the policy going for another task."""
        return [] if self._phases is None else self._phases.disturbed()

    def check_success(self) -> bool:
        """The benchmark's own success test (the BDDL goal predicates) on the current state."""
        return bool(self._inner.check_success())

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"task_id", "init_state_id", "placement_seed"}
        if unknown:
            raise ValueError(
                f"reset options: unknown keys {sorted(unknown)}; "
                "expected task_id, init_state_id, placement_seed"
            )
        task_id = options.get("task_id", self.fixed_task_id)
        if task_id is None:
            task_id = int(self.np_random.integers(self.num_tasks))
        if self.fixed_task_id is not None and int(task_id) != self.fixed_task_id:
            raise ValueError(
                f"options['task_id']: this env serves task {self.fixed_task_id} only, got {task_id}"
            )
        if not 0 <= int(task_id) < self.num_tasks:
            raise ValueError(f"options['task_id']: expected an int in [0, {self.num_tasks}), got {task_id!r}")
        init_state_id = options.get("init_state_id")
        if init_state_id is not None and not 0 <= int(init_state_id) < protocol.NUM_INIT_STATES:
            raise ValueError(
                f"options['init_state_id']: expected None or 0..{protocol.NUM_INIT_STATES - 1}, "
                f"got {init_state_id!r}"
            )
        placement_seed = options.get("placement_seed")
        if placement_seed is None:
            placement_seed = int(self.np_random.integers(2**31 - 1))

        self._load_task(int(task_id))
        # hard_reset=False reuses the sim; robosuite does not reset the gripper's command accumulator
        for robot in self._inner.env.robots:
            if robot.has_gripper:
                robot.gripper.current_action = np.zeros(robot.gripper.dof)
        for redraw in range(MAX_PLACEMENT_REDRAWS + 1):
            # robosuite's placement samplers draw from numpy's global RNG: seed it for this reset only.
            saved_rng = np.random.get_state()
            try:
                np.random.seed(int(placement_seed))
                restore_fixture_poses(self._inner.env)
                self._inner.reset()
            finally:
                np.random.set_state(saved_rng)
            if init_state_id is not None:
                self._inner.set_init_state(suites.init_states(self.suite, int(task_id))[int(init_state_id)])
            placed = self._object_heights()
            for _ in range(self.settle_steps):
                self._inner.step(protocol.SETTLE_ACTION)
            fell = placed - self._object_heights() > FALLEN_DROP
            if init_state_id is not None or not fell.any() or redraw == MAX_PLACEMENT_REDRAWS:
                break
            # LIBERO's sampler keeps objects' footprints apart but not their meshes: now and then an
            # object is placed into another and thrown off the table while it settles. Draw again, from
            # a seed derived from this one (the official initial states never do this).
            placement_seed = int(np.random.SeedSequence([placement_seed, redraw]).generate_state(1)[0] >> 1)
        self._warning_counts = self._instability_counts()
        self._phases = GoalPhaseTracker(self._inner.env, self._eef_site_id)
        self._steps = 0
        self._n_clipped = 0
        self._episode_over = False
        self._last_info = {
            "success": False,
            "task_id": int(task_id),
            "init_state_id": -1 if init_state_id is None else int(init_state_id),
            "placement_seed": int(placement_seed),
            "placement_redraws": int(redraw),
            "n_clipped_actions": 0,
        }
        return self._obs(), dict(self._last_info)

    def step(self, action):
        if self._episode_over:
            raise RuntimeError("step: the episode is over (success, failure or step limit); call reset()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (protocol.ACTION_DIM,):
            raise ValueError(f"action: expected shape ({protocol.ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite values, got {action}")
        clipped = np.clip(action, -1.0, 1.0)
        if not np.array_equal(clipped, action):
            self._n_clipped += 1
            if not self._warned_clip:
                warnings.warn(
                    f"LiberoEnv: action {action} outside [-1, 1] clipped (counted in info)", stacklevel=2
                )
                self._warned_clip = True

        failure_reason = ""
        try:
            self._inner.step(clipped)
        except Exception as err:  # a crashing simulator ends the episode as a failure, evaluation goes on
            failure_reason = f"simulator error: {type(err).__name__}: {err}"
        if not failure_reason:
            failure_reason = self._instability_reason()
        self._steps += 1
        success = not failure_reason and self.check_success()
        terminated = success or bool(failure_reason)
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._episode_over = terminated or truncated
        if not failure_reason:
            self._phases.record()
        self._phases.truncated = truncated
        info = dict(self._last_info, success=success, n_clipped_actions=self._n_clipped, steps=self._steps)
        if failure_reason:
            info["failure_reason"] = failure_reason
        obs = self._obs() if not failure_reason else self._safe_obs()
        return obs, float(success), terminated, truncated, info

    def _object_heights(self) -> np.ndarray:
        """World z (m) of each movable object's body, BDDL order."""
        return np.array([self._inner.sim.data.body_xpos[i][2] for i in self._object_body_ids])

    def _instability_counts(self) -> np.ndarray:
        import mujoco

        warning = self._inner.sim.data._data.warning
        return np.array([warning[getattr(mujoco.mjtWarning, w)].number for w in _INSTABILITY_WARNINGS])

    def _instability_reason(self) -> str:
        data = self._inner.sim.data
        if not (np.all(np.isfinite(data.qpos)) and np.all(np.isfinite(data.qvel))):
            return "unstable simulation: NaN/inf in qpos or qvel"
        counts = self._instability_counts()
        new = [
            w for w, c, c0 in zip(_INSTABILITY_WARNINGS, counts, self._warning_counts, strict=True) if c > c0
        ]
        if new:
            return f"unstable simulation: MuJoCo warning {', '.join(new)}"
        return ""

    def _safe_obs(self) -> dict[str, Any]:
        """An observation that stays inside the space after a crash (non-finite values zeroed)."""
        obs = (
            self._obs()
            if self.camera_mode != "every_step"
            else {**self._obs_without_images(), "images": self._blank_images()}
        )
        for key in ("state", "object_state"):
            obs[key] = np.nan_to_num(obs[key], nan=0.0, posinf=0.0, neginf=0.0)
        return obs

    def _obs_without_images(self) -> dict[str, Any]:
        return {"language": self.instruction, "state": self._state(), "object_state": self._object_state()}

    def _blank_images(self) -> dict[str, np.ndarray]:
        return {v: np.zeros((self.image_size, self.image_size, 3), np.uint8) for v in protocol.CAMERAS}

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        super().close()


def restore_fixture_poses(inner_env: Any) -> None:
    """Put LIBERO's fixtures (cabinet, stove, ...) back at their XML pose before a soft reset.

    With ``hard_reset=False`` the sim is reused, and LIBERO places an object that starts on a fixture
    (a bowl on the stove or in a drawer) at the fixture's new position plus the site's *current* world
    position, which already holds the fixture's previous placement: the offset counts twice and the
    object spawns in the air, beside the table or below it. A hard reset starts from the XML pose
    (origin, identity rotation); so do we. The 50 official initial states are unaffected (they set the
    whole sim state after the reset); random placements (``placement_seed``) of such objects become right.
    """
    model = inner_env.sim.model
    for fixture in inner_env.fixtures_dict.values():
        body = model.body_name2id(fixture.root_body)
        model.body_pos[body] = 0.0
        model.body_quat[body] = (1.0, 0.0, 0.0, 0.0)
