"""Inverse kinematics for the CALVIN Panda with mink: TCP pose -> 7 arm joint targets.

As CALVIN's null-space IK (facts 6.3): a TCP frame task plus a posture task toward the initial joints,
joint limits respected, result clipped to the real limits.
"""

from __future__ import annotations

import mink
import numpy as np

INITIAL_JOINTS = np.array(
    [-1.21779206, 1.03987646, 2.11978261, -2.34205014, -0.87015947, 1.64119353, 0.55344866]
)
JOINT_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
JOINT_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])


class PandaIK:
    """``solve(joints (7,), pos (3,), quat_wxyz (4,)) -> joint targets (7,)`` on a robot-only model."""

    def __init__(self, robot_model, iterations: int = 3, posture_cost: float = 1e-3):
        self.model = robot_model
        self.configuration = mink.Configuration(robot_model)
        self.tcp_task = mink.FrameTask(
            "tcp", "site", position_cost=1.0, orientation_cost=1.0, lm_damping=1e-6
        )
        self.posture_task = mink.PostureTask(robot_model, cost=posture_cost)
        q0 = np.zeros(robot_model.nq)
        q0[:7] = INITIAL_JOINTS
        q0[7:9] = 0.04
        self.posture_task.set_target(q0)
        self.limits = [mink.ConfigurationLimit(robot_model)]
        self.iterations = iterations

    def solve(self, joints: np.ndarray, pos: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
        q = np.zeros(self.model.nq)
        q[:7] = joints
        q[7:9] = 0.02
        self.configuration.update(q)
        self.tcp_task.set_target(mink.SE3.from_rotation_and_translation(mink.SO3(np.asarray(quat_wxyz)), pos))
        for _ in range(self.iterations):
            vel = mink.solve_ik(
                self.configuration,
                [self.tcp_task, self.posture_task],
                1.0,
                "daqp",
                damping=1e-3,
                limits=self.limits,
            )
            self.configuration.integrate_inplace(vel, 1.0)
        return np.clip(self.configuration.q[:7], JOINT_LOWER, JOINT_UPPER)

    def tcp_pose(self, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics: TCP position (3,) and rotation matrix (3, 3)."""
        q = np.zeros(self.model.nq)
        q[:7] = joints
        self.configuration.update(q)
        pose = self.configuration.get_transform_frame_to_world("tcp", "site")
        return pose.translation(), pose.rotation().as_matrix()
