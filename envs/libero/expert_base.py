"""Waypoint + P-control machinery for scripted LIBERO experts (privileged simulator state).

An expert script is a generator that yields 7-d actions; its primitives (``move``, ``hold``, ``grip``)
servo the grip site (``gripper0_grip_site``) to a target position and orientation with a clipped
proportional law on the env's own OSC_POSE delta controller, and read targets from the live simulator
(body, site and geom positions, joint positions). Units: metres, radians, world frame.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import numpy as np
from scipy.spatial.transform import Rotation

OPEN, CLOSE = -1.0, 1.0
# Grip-site frame pointing straight down with the fingers along world y (hand quat_xyzw (1, 0, 0, 0)).
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
POS_GAIN = 25.0  # action per metre of position error (1 action unit ~ 1.2 cm/step achieved)
ROT_GAIN = 4.0  # action per radian of orientation error
ROT_LIMIT = 0.5

Script = Generator[np.ndarray, None, None]
Target = np.ndarray | Callable[[], np.ndarray]


def rot_z(angle: float) -> np.ndarray:
    return Rotation.from_euler("z", angle).as_matrix()


def rot_x(angle: float) -> np.ndarray:
    return Rotation.from_euler("x", angle).as_matrix()


def rot_y(angle: float) -> np.ndarray:
    return Rotation.from_euler("y", angle).as_matrix()


_BOX_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])


def geom_box(c: ScriptContext, geom: int | str) -> tuple[np.ndarray, np.ndarray]:
    """World-frame (low, high) corners of geom ``geom`` (its id or name): its local bounding box, posed."""
    model, data = c.model._model, c.data._data
    g = c.model.geom_name2id(geom) if isinstance(geom, str) else geom
    center, half = model.geom_aabb[g][:3], model.geom_aabb[g][3:]
    corners = data.geom_xpos[g] + (center + _BOX_SIGNS * half) @ data.geom_xmat[g].reshape(3, 3).T
    return corners.min(0), corners.max(0)


def boxes_union(boxes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.min([lo for lo, _ in boxes], axis=0), np.max([hi for _, hi in boxes], axis=0)


def collision_geoms(c: ScriptContext, obj: str) -> list[int]:
    """Ids of the collision geoms of movable object ``obj`` (every body under ``<obj>_main``)."""
    model = c.model._model
    root = model.body_rootid[c.model.body_name2id(f"{obj}_main")]
    return [
        g
        for g in range(model.ngeom)
        if model.body_rootid[model.geom_bodyid[g]] == root
        and model.geom_contype[g] + model.geom_conaffinity[g]
    ]


def world_aabb(c: ScriptContext, obj: str) -> tuple[np.ndarray, np.ndarray]:
    """World-frame (low, high) corners of the collision geoms of ``obj`` (metres)."""
    geoms = collision_geoms(c, obj)
    if not geoms:
        return np.full(3, np.inf), np.full(3, -np.inf)
    return boxes_union([geom_box(c, g) for g in geoms])


class ScriptContext:
    """Privileged reads from the current simulator and the servo primitives an expert script uses."""

    def __init__(self, env) -> None:
        self.env = env.unwrapped
        self.sim = self.env.sim  # re-read per episode: fetched in Expert.reset
        self.model, self.data = self.sim.model, self.sim.data
        self._grip_site = self.model.site_name2id("gripper0_grip_site")
        self.grip = OPEN
        self.R_target = R_DOWN.copy()
        self.rot_limit = ROT_LIMIT  # a script may raise it (up to 1) for fast re-orientations
        # Scale of the DART collection noise at this step: 0 during precise moves (final approach to a
        # grasp, closing, releasing), where a perturbation ruins the episode rather than teaching recovery.
        self.noise_scale = 1.0
        self.phase = ""  # what the script is doing now (a script may name its phases; read on failure)

    # ------------------------------------------------------------------ privileged reads
    def eef(self) -> np.ndarray:
        return np.array(self.data.site_xpos[self._grip_site])

    def eef_R(self) -> np.ndarray:
        return np.array(self.data.site_xmat[self._grip_site]).reshape(3, 3)

    def body(self, name: str) -> np.ndarray:
        return np.array(self.data.body_xpos[self.model.body_name2id(name)])

    def site(self, name: str) -> np.ndarray:
        return np.array(self.data.site_xpos[self.model.site_name2id(name)])

    def geom(self, name: str) -> np.ndarray:
        return np.array(self.data.geom_xpos[self.model.geom_name2id(name)])

    def qpos(self, joint: str) -> float:
        return float(self.data.qpos[self.model.get_joint_qpos_addr(joint)])

    def obj(self, name: str) -> np.ndarray:
        """Position of movable object ``name`` (its ``<name>_main`` body origin)."""
        return self.body(f"{name}_main")

    def finger_gap(self) -> float:
        """Finger opening (m): about 0.078 fully open, < 0.004 closed on nothing."""
        qpos = self.env._state()[6:8]
        return float(qpos[0] - qpos[1])

    def finger_gap_target(self) -> float:
        """Finger opening (m) the gripper's actuators are driving to. robosuite's Panda gripper moves this
        target 1 cm per env step in the sign of the gripper action (0 holds it); the fingers lag it by
        2-3 steps, so stopping on ``finger_gap`` overshoots by 3-4 cm."""
        command = self.env.inner.env.robots[0].gripper.current_action[1]  # -1 open .. +1 closed
        return float(0.04 * (1.0 - command))

    # ------------------------------------------------------------------ control law
    def action(self, target: np.ndarray, vmax: float = 1.0) -> np.ndarray:
        """P-control toward ``target`` (position) and ``self.R_target``; gripper holds ``self.grip``."""
        err = target - self.eef()
        a_pos = POS_GAIN * err
        peak = np.max(np.abs(a_pos))
        if peak > vmax:
            a_pos *= vmax / peak
        rot_err = Rotation.from_matrix(self.R_target @ self.eef_R().T).as_rotvec()
        a_rot = np.clip(ROT_GAIN * rot_err, -self.rot_limit, self.rot_limit)
        return np.concatenate([a_pos, a_rot, [self.grip]])

    def rot_error(self) -> float:
        return float(np.linalg.norm(Rotation.from_matrix(self.R_target @ self.eef_R().T).as_rotvec()))

    # ------------------------------------------------------------------ primitives
    def move(
        self,
        target: Target,
        vmax: float = 1.0,
        tol: float = 0.008,
        rot_tol: float = 0.1,
        max_steps: int = 120,
    ) -> Script:
        """Servo to ``target`` (array or callable re-evaluated each step) until within ``tol`` m."""
        for _ in range(max_steps):
            goal = np.asarray(target() if callable(target) else target, dtype=np.float64)
            if np.linalg.norm(goal - self.eef()) < tol and self.rot_error() < rot_tol:
                return
            yield self.action(goal, vmax)

    def hold(self, steps: int, target: Target | None = None) -> Script:
        """Stay at ``target`` (default: where the grip site is now) for ``steps`` steps."""
        fixed = self.eef() if target is None else None
        for _ in range(steps):
            goal = fixed if target is None else np.asarray(target() if callable(target) else target)
            yield self.action(goal, 0.5)

    def set_grip(self, command: float, steps: int) -> Script:
        """Close (+1) or open (-1) the gripper while holding position for ``steps`` steps (no noise)."""
        self.grip = command
        yield from self.precise(self.hold(steps))

    def precise(self, script: Script) -> Script:
        """Run ``script`` with the collection noise switched off (nests: restores the previous scale)."""
        previous, self.noise_scale = self.noise_scale, 0.0
        yield from script
        self.noise_scale = previous

    def move_above_then_down(
        self, target: Target, clearance: float = 0.08, vmax_down: float = 0.5, tol: float = 0.005
    ) -> Script:
        """Rise to a safe height, go above ``target``, then descend onto it."""

        def goal() -> np.ndarray:
            return np.asarray(target() if callable(target) else target, dtype=np.float64)

        safe_z = max(self.eef()[2], goal()[2] + clearance)  # fixed once: a live value would ratchet up
        start_xy = self.eef()[:2]
        yield from self.move(np.array([*start_xy, safe_z]), tol=0.02, rot_tol=0.3, max_steps=40)
        yield from self.move(lambda: np.array([*goal()[:2], safe_z]), tol=0.015)
        yield from self.move(lambda: goal() + [0, 0, clearance], tol=0.01)
        yield from self.precise(self.move(goal, vmax=vmax_down, tol=tol, max_steps=80))


class ScriptedExpert:
    """``reset(env)`` then ``act(obs) -> action`` (7,) float64; holds still once the script ends."""

    def __init__(self, scripts: dict[int, Callable[[ScriptContext], Script]]) -> None:
        self.scripts = scripts
        self._it: Iterator[np.ndarray] | None = None
        self.ctx: ScriptContext | None = None

    def reset(self, env) -> None:
        task_id = env.unwrapped.task_id
        if task_id not in self.scripts:
            raise ValueError(f"task_id: no scripted expert for task {task_id}; have {sorted(self.scripts)}")
        self.ctx = ScriptContext(env)
        self._it = self.scripts[task_id](self.ctx)
        self.finished = False

    @property
    def noise_scale(self) -> float:
        """How much DART noise ``collect`` may add to the next action (0 in precise phases)."""
        return 1.0 if self.ctx is None else self.ctx.noise_scale

    def act(self, obs=None) -> np.ndarray:
        if self._it is None:
            raise RuntimeError("act: call reset(env) first")
        try:
            return next(self._it)
        except StopIteration:
            self.finished = True
            return self.ctx.action(self.ctx.eef(), 0.5)
