"""The calvin_env adapter: snapshot conversion from calvin_env's info format, and the install hint."""

import numpy as np
import pytest

from dfm_vla.envs.calvin.oracle import task_success
from dfm_vla.envs.calvin.original import (
    INSTALL_HINT,
    OriginalCalvinEnv,
    quat_xyzw_from_euler,
    snapshot_from_calvin_info,
)

ROBOT, TABLE, RED, BLUE, PINK = 1, 2, 3, 4, 5
LINKS = {
    "button_link": 0,
    "switch_link": 1,
    "slide_link": 2,
    "drawer_link": 3,
    "led_link": 4,
    "light_link": 5,
    "plank_link": 6,
    "base_link": -1,
}


def contact(other_uid, other_link=-1):
    """A pybullet contact-point tuple; the oracle reads c[2] (other body) and c[4] (its link)."""
    return (0, 0, other_uid, -1, other_link, (0, 0, 0))


def info(red_pos, red_yaw, red_contacts, robot_contacts=(), slide=0.0, bulb=0):
    def block(uid, pos, yaw, contacts):
        return {
            "uid": uid,
            "current_pos": pos,
            "current_orn": quat_xyzw_from_euler([0, 0, yaw]),
            "current_lin_vel": (0, 0, 0),
            "current_ang_vel": (0, 0, 0),
            "contacts": list(contacts),
        }

    return {
        "robot_info": {"uid": ROBOT, "contacts": list(robot_contacts)},
        "scene_info": {
            "fixed_objects": {"table": {"uid": TABLE, "links": LINKS, "contacts": []}},
            "movable_objects": {
                "block_red": block(RED, red_pos, red_yaw, red_contacts),
                "block_blue": block(BLUE, (0.23, -0.12, 0.46), 0.0, [contact(TABLE, -1)]),
                "block_pink": block(PINK, (-0.24, 0.09, 0.46), 0.0, [contact(TABLE, LINKS["plank_link"])]),
            },
            "doors": {"base__slide": {"current_state": slide}, "base__drawer": {"current_state": 0.0}},
            "lights": {"lightbulb": {"logical_state": bulb}, "led": {"logical_state": 0}},
        },
    }


def test_snapshot_conversion_names_bodies_and_links():
    snap = snapshot_from_calvin_info(info((0.05, -0.12, 0.46), 1.5, [contact(TABLE, -1), contact(ROBOT, 10)]))
    assert snap.blocks["block_red"].contacts == {("table", "base_link"), ("robot", "base")}
    assert snap.blocks["block_pink"].contacts == {("table", "plank_link")}
    np.testing.assert_allclose(snap.blocks["block_red"].pos, (0.05, -0.12, 0.46))


def test_oracle_on_converted_calvin_info():
    start = snapshot_from_calvin_info(info((0.05, -0.12, 0.46), 1.5, [contact(TABLE, -1)]))
    pushed = snapshot_from_calvin_info(info((0.17, -0.12, 0.46), 1.5, [contact(TABLE, -1)]))
    lifted = snapshot_from_calvin_info(
        info((0.05, -0.12, 0.52), 1.5, [contact(ROBOT, 10)], robot_contacts=[contact(RED)])
    )
    assert task_success("push_red_block_right", start, pushed)
    assert task_success("lift_red_block_table", start, lifted)
    assert not task_success("lift_red_block_table", start, pushed)
    slid = snapshot_from_calvin_info(info((0.05, -0.12, 0.46), 1.5, [contact(TABLE, -1)], slide=0.2, bulb=1))
    assert task_success("move_slider_left", start, slid) and task_success("turn_on_lightbulb", start, slid)


def test_missing_calvin_env_explains_how_to_install():
    try:
        import calvin_env  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="not on PyPI"):
            OriginalCalvinEnv("/nonexistent/validation")
        assert "mees/calvin" in INSTALL_HINT
    else:
        pytest.skip("calvin_env is installed here")
