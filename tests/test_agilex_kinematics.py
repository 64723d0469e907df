"""PiPER kinematics: the numpy modified-DH module against the SDK's published numbers, and the MJCF
against the numpy module."""

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dfm_vla.envs.agilex.env import asset_path
from dfm_vla.envs.agilex.kinematics import (
    PIPER_JOINT_LIMITS,
    PIPER_MDH,
    SDK_ZERO_POSE_FLANGE_POS,
    forward_kinematics,
)


def _fk_by_composition(q):
    """The same convention written another way: elementary transforms composed with scipy."""
    T = np.eye(4)
    for qi, (a, alpha, offset, d) in zip(q, PIPER_MDH, strict=True):
        for rot, trans in (
            (Rotation.from_euler("x", alpha), np.zeros(3)),
            (Rotation.identity(), np.array([a, 0.0, 0.0])),
            (Rotation.from_euler("z", qi + offset), np.zeros(3)),
            (Rotation.identity(), np.array([0.0, 0.0, d])),
        ):
            step = np.eye(4)
            step[:3, :3] = rot.as_matrix()
            step[:3, 3] = trans
            T = T @ step
    return T


def test_zero_pose_matches_the_sdk_published_flange_pose():
    T = forward_kinematics(np.zeros(6))
    # piper_sdk init_pos for dh_is_offset=1: [56.128, 0, 213.266] mm, rpy [0, 85 deg, 0].
    np.testing.assert_allclose(T[:3, 3], SDK_ZERO_POSE_FLANGE_POS, atol=2e-5)
    pitch = np.degrees(Rotation.from_matrix(T[:3, :3]).as_euler("xyz")[1])
    assert abs(pitch - 85.0) < 0.01


def test_link_lengths_and_reach_match_the_published_dimensions():
    frames = forward_kinematics(np.array([0.0, 1.0, -1.0, 0.3, 0.2, 0.1]), all_frames=True)
    j2, j3, j5 = frames[1, :3, 3], frames[2, :3, 3], frames[4, :3, 3]
    assert np.linalg.norm(j3 - j2) == pytest.approx(0.28503, abs=1e-6)  # a2
    assert np.linalg.norm(j5 - j3) == pytest.approx(np.hypot(0.25075, 0.02198), abs=1e-6)  # d4, a3
    # Reach J2 -> flange over the J3 range: about 0.625 m (the reference sheet's figure from the menagerie
    # chain, 0.6246 m, uses a slightly different wrist offset; the PiPER is advertised at ~626 mm).
    reach = max(
        np.linalg.norm(forward_kinematics(np.array([0.0, 1.0, q3, 0.0, 0.0, 0.0]))[:3, 3] - j2)
        for q3 in np.linspace(PIPER_JOINT_LIMITS[2, 0], 0.0, 3001)
    )
    assert reach == pytest.approx(0.6246, abs=3e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_fk_agrees_with_elementary_composition(seed):
    rng = np.random.default_rng(seed)
    q = rng.uniform(PIPER_JOINT_LIMITS[:, 0], PIPER_JOINT_LIMITS[:, 1])
    np.testing.assert_allclose(forward_kinematics(q), _fk_by_composition(q), atol=1e-12)


def test_mjcf_arms_follow_the_dh_table():
    model = mujoco.MjModel.from_xml_path(asset_path("cobot_magic.xml"))
    data = mujoco.MjData(model)
    rng = np.random.default_rng(7)
    for arm, base_y in (("left", 0.3), ("right", -0.3)):
        adr = [model.jnt_qposadr[model.joint(f"{arm}_joint{j}").id] for j in range(1, 7)]
        for _ in range(5):
            q = rng.uniform(PIPER_JOINT_LIMITS[:, 0], PIPER_JOINT_LIMITS[:, 1])
            data.qpos[adr] = q
            mujoco.mj_kinematics(model, data)
            T = forward_kinematics(q)
            site = data.site(f"{arm}_flange")
            np.testing.assert_allclose(site.xpos - [0.0, base_y, 0.775], T[:3, 3], atol=1e-6)
            np.testing.assert_allclose(site.xmat.reshape(3, 3), T[:3, :3], atol=1e-6)
        ranges = np.array([model.jnt_range[model.joint(f"{arm}_joint{j}").id] for j in range(1, 7)])
        np.testing.assert_allclose(ranges, PIPER_JOINT_LIMITS)  # radians, not degrees
