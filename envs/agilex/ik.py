"""Bimanual inverse kinematics for the PiPER pair with ``mink`` (tool-centre-point poses -> joint angles).

The solver runs on the robot-only MJCF (``assets/cobot_magic.xml``, no objects), so its configuration
holds only the two arms and their fingers. Poses are in the world frame; the tool frame ``<arm>_tcp``
sits between the finger pads (0.115 m along the flange z axis), z pointing out of the gripper, y along
the fingers' closing direction.
"""

from __future__ import annotations

import mink
import mujoco
import numpy as np

from dfm_vla.envs.agilex.env import ARMS, asset_path


class BimanualIK:
    """Differential IK (mink + daqp) for both tool frames at once, warm-started from the last solution.

    ``solve(targets)`` takes {arm: (position (3,), rotation (3, 3))} for any subset of arms (the others
    keep their current pose) and returns (2, 6) joint angles (rad), left arm first.
    """

    def __init__(self, iterations: int = 8, dt: float = 0.04, tolerance: float = 1e-3) -> None:
        self.model = mujoco.MjModel.from_xml_path(asset_path("cobot_magic.xml"))
        self.configuration = mink.Configuration(self.model)
        self.tasks = {
            arm: mink.FrameTask(f"{arm}_tcp", "site", position_cost=1.0, orientation_cost=0.5, lm_damping=1.0)
            for arm in ARMS
        }
        self.posture = mink.PostureTask(self.model, cost=1e-3)
        self.limits = [mink.ConfigurationLimit(self.model)]
        self.iterations = iterations
        self.dt = dt
        self.tolerance = tolerance
        self._qadr = np.array(
            [
                [self.model.jnt_qposadr[self.model.joint(f"{s}_joint{j}").id] for j in range(1, 7)]
                for s in ARMS
            ]
        )

    def reset(self, arm_qpos: np.ndarray) -> None:
        """Start from (2, 6) joint angles; the posture task pulls gently towards them."""
        q = self.configuration.q.copy()
        q[self._qadr.ravel()] = np.asarray(arm_qpos).ravel()
        self.configuration.update(q)
        self.posture.set_target(q)
        for arm in ARMS:
            self.tasks[arm].set_target_from_configuration(self.configuration)

    def tcp_pose(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Current solver pose of ``arm``'s tool frame: position (3,), rotation (3, 3)."""
        T = self.configuration.get_transform_frame_to_world(f"{arm}_tcp", "site")
        return T.translation().copy(), T.rotation().as_matrix().copy()

    def solve(self, targets: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        for arm, (pos, rot) in targets.items():
            self.tasks[arm].set_target(
                mink.SE3.from_rotation_and_translation(mink.SO3.from_matrix(np.asarray(rot)), np.asarray(pos))
            )
        tasks = [self.tasks["left"], self.tasks["right"], self.posture]
        for _ in range(self.iterations):
            vel = mink.solve_ik(self.configuration, tasks, self.dt, "daqp", damping=1e-3, limits=self.limits)
            self.configuration.integrate_inplace(vel, self.dt)
            err = max(np.linalg.norm(self.tasks[a].compute_error(self.configuration)[:3]) for a in ARMS)
            if err < self.tolerance:
                break
        return self.configuration.q[self._qadr].copy()

    def position_error(self, arm: str) -> float:
        """Remaining position error (m) of ``arm``'s tool frame against its target."""
        return float(np.linalg.norm(self.tasks[arm].compute_error(self.configuration)[:3]))


def grasp_rotation(object_axis: np.ndarray, approach_dir: np.ndarray, tilt: float) -> np.ndarray:
    """(3, 3) tool rotation for a grasp across the horizontal ``object_axis``.

    The fingers close horizontally, perpendicular to ``object_axis``; the tool z axis points down, tilted
    by ``tilt`` rad along ``object_axis``, on the side facing away from the arm (``approach_dir``, the
    horizontal direction from the arm base towards the object, picks the sign).
    """
    a = np.array([object_axis[0], object_axis[1], 0.0])
    a /= np.linalg.norm(a)
    if a[:2] @ np.asarray(approach_dir)[:2] < 0:
        a = -a
    z = np.cos(tilt) * np.array([0.0, 0.0, -1.0]) + np.sin(tilt) * a
    y = np.cross(a, z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    return np.column_stack([x, y, z])
