"""PiPER arm kinematics from the published modified (Craig) DH parameters, in plain numpy.

Source: AgileX ``piper_sdk`` (kinematics/piper_fk.py, default ``dh_is_offset=1``). Each link transform is
``RotX(alpha_{i-1}) @ TransX(a_{i-1}) @ RotZ(q_i + theta_offset_i) @ TransZ(d_i)``. Lengths in metres,
angles in radians. The MJCF in ``assets/cobot_magic.xml`` is built from the same table, and
``tests/test_agilex_kinematics.py`` checks the simulated arm against this module and against the SDK's
published zero-pose flange position.
"""

from __future__ import annotations

import numpy as np

DEG = np.pi / 180.0

# Rows: (a_{i-1} [m], alpha_{i-1} [rad], theta offset [rad], d_i [m]) for joints 1..6.
PIPER_MDH: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 0.0, 0.123),
    (0.0, -np.pi / 2, -172.22 * DEG, 0.0),
    (0.28503, 0.0, -102.78 * DEG, 0.0),
    (-0.02198, np.pi / 2, 0.0, 0.25075),
    (0.0, -np.pi / 2, 0.0, 0.0),
    (0.0, np.pi / 2, 0.0, 0.091),
)

# SDK joint limits (rad), joints 1..6, and the gripper opening (m).
PIPER_JOINT_LIMITS: np.ndarray = np.array(
    [[-2.6179, 2.6179], [0.0, 3.14], [-2.967, 0.0], [-1.745, 1.745], [-1.22, 1.22], [-2.0944, 2.0944]]
)
PIPER_GRIPPER_RANGE: tuple[float, float] = (0.0, 0.07)
PIPER_MAX_JOINT_SPEED = 3.0  # rad/s, the SDK's speed-limit range upper end
# Distance from the J6 (flange) frame to the fingertips along the flange z axis (m).
PIPER_FINGERTIP_OFFSET = 0.13503

# SDK-published flange position (m) at q = 0 (``init_pos`` for dh_is_offset=1).
SDK_ZERO_POSE_FLANGE_POS = np.array([0.056128, 0.0, 0.213266])


def mdh_transform(a: float, alpha: float, theta: float, d: float) -> np.ndarray:
    """4x4 homogeneous transform RotX(alpha) TransX(a) RotZ(theta) TransZ(d)."""
    ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -sa * d],
            [st * sa, ct * sa, ca, ca * d],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def forward_kinematics(q: np.ndarray, all_frames: bool = False) -> np.ndarray:
    """Flange (J6) pose in the arm base frame.

    q: (6,) joint angles in rad. Returns a (4, 4) transform, or (6, 4, 4) transforms of frames 1..6
    when ``all_frames``.
    """
    q = np.asarray(q, dtype=float)
    if q.shape != (6,):
        raise ValueError(f"q: expected shape (6,), got {q.shape}")
    T = np.eye(4)
    frames = []
    for qi, (a, alpha, offset, d) in zip(q, PIPER_MDH, strict=True):
        T = T @ mdh_transform(a, alpha, qi + offset, d)
        frames.append(T.copy())
    return np.stack(frames) if all_frames else T


def fingertip_position(q: np.ndarray) -> np.ndarray:
    """(3,) point between the fingertips (flange origin + 0.13503 m along the flange z axis), base frame."""
    T = forward_kinematics(q)
    return T[:3, 3] + PIPER_FINGERTIP_OFFSET * T[:3, 2]
