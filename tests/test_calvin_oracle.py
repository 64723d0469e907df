"""CALVIN task oracle on hand-built scene snapshots (rules from calvin-facts.md 3.1)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dfm_vla.envs.calvin.oracle import BlockSnapshot, SceneSnapshot, completed_tasks, task_success

TABLE_TOP = frozenset({("table", "base_link")})
HELD = frozenset({("robot", "finger")})


def block(pos, yaw_deg=0.0, contacts=TABLE_TOP, vel=(0, 0, 0), tilt_deg=0.0):
    quat = Rotation.from_euler("xyz", [tilt_deg, 0, yaw_deg], degrees=True).as_quat()
    return BlockSnapshot(np.array(pos, float), quat, np.array(vel, float), np.zeros(3), frozenset(contacts))


def scene(red=None, blue=None, pink=None, slide=0.0, drawer=0.0, bulb=0, led=0, robot=()):
    blocks = {
        "block_red": red or block((0.05, -0.12, 0.46)),
        "block_blue": blue or block((0.23, -0.12, 0.46)),
        "block_pink": pink or block((-0.24, 0.09, 0.46), contacts={("table", "plank_link")}),
    }
    return SceneSnapshot(
        blocks,
        {"base__slide": slide, "base__drawer": drawer},
        {"lightbulb": bulb, "led": led},
        frozenset(robot),
    )


def test_noop_completes_nothing():
    s = scene()
    assert completed_tasks(s, s) == set()


def test_rotate():
    s = scene(red=block((0.05, -0.12, 0.46), yaw_deg=90))
    assert completed_tasks(s, scene(red=block((0.06, -0.12, 0.46), yaw_deg=160))) == {"rotate_red_block_left"}
    assert completed_tasks(s, scene(red=block((0.06, -0.12, 0.46), yaw_deg=20))) == {"rotate_red_block_right"}
    assert completed_tasks(s, scene(red=block((0.06, -0.12, 0.46), yaw_deg=40))) == set()  # only -50 deg
    # tilted, moved too far, or held in the air by the robot only: no success
    assert not task_success(
        "rotate_red_block_left", s, scene(red=block((0.05, -0.12, 0.46), 160, tilt_deg=40))
    )
    assert not task_success("rotate_red_block_left", s, scene(red=block((0.2, -0.12, 0.46), 160)))
    assert not task_success(
        "rotate_red_block_left", s, scene(red=block((0.05, -0.12, 0.5), 160, contacts=HELD))
    )


def test_push():
    s = scene()
    assert completed_tasks(s, scene(red=block((0.16, -0.12, 0.46)))) == {"push_red_block_right"}
    assert completed_tasks(s, scene(red=block((-0.06, -0.12, 0.46)))) == {"push_red_block_left"}
    assert completed_tasks(s, scene(red=block((0.14, -0.12, 0.46)))) == set()
    # a different surface at the end (fell into the drawer): no push
    moved = scene(red=block((0.16, -0.3, 0.36), contacts={("table", "drawer_link")}))
    assert not task_success("push_red_block_right", s, moved)


def test_doors_and_lights():
    s = scene(slide=0.0, drawer=0.22, bulb=1, led=0)
    assert completed_tasks(s, scene(slide=0.16, drawer=0.22, bulb=1)) == {"move_slider_left"}
    assert completed_tasks(s, scene(slide=0.0, drawer=0.05, bulb=1)) == {"close_drawer"}
    assert completed_tasks(s, scene(slide=0.0, drawer=0.22, bulb=0, led=1)) == {
        "turn_off_lightbulb",
        "turn_on_led",
    }
    assert completed_tasks(s, scene(slide=0.14, drawer=0.12, bulb=1)) == set()  # 0.14 < 0.15 and 0.10 < 0.12


@pytest.mark.parametrize(
    ("surface", "link", "z0", "dz", "ok"),
    [
        ("table", "base_link", 0.46, 0.06, True),
        ("table", "base_link", 0.46, 0.04, False),
        ("slider", "plank_link", 0.461, 0.035, True),
        ("drawer", "drawer_link", 0.362, 0.055, True),
    ],
)
def test_lift(surface, link, z0, dz, ok):
    start = scene(red=block((0.05, -0.12, z0), contacts={("table", link), ("robot", "finger")}))
    end = scene(red=block((0.05, -0.12, z0 + dz), contacts=HELD), robot={("block_red", "base")})
    assert task_success(f"lift_red_block_{surface}", start, end) is ok
    touching = scene(red=block((0.05, -0.12, z0 + dz), contacts=HELD | {("block_blue", "base")}))
    assert not task_success(f"lift_red_block_{surface}", start, touching)


def test_place_and_stack():
    holding = scene(red=block((0.0, 0.05, 0.5), contacts=HELD), robot={("block_red", "base")})
    in_slider = scene(red=block((-0.24, 0.09, 0.461), contacts={("table", "plank_link")}))
    assert task_success("place_in_slider", holding, in_slider)
    assert not task_success("place_in_drawer", holding, in_slider)
    still_held = scene(
        red=block((-0.24, 0.09, 0.461), contacts={("table", "plank_link")} | HELD),
        robot={("block_red", "base")},
    )
    assert not task_success("place_in_slider", holding, still_held)
    on_blue = scene(
        red=block((0.23, -0.12, 0.5), contacts={("block_blue", "base")}),
        blue=block((0.23, -0.12, 0.46), contacts=TABLE_TOP | {("block_red", "base")}),
    )
    assert task_success("stack_block", holding, on_blue)
    falling = scene(red=block((0.23, -0.12, 0.5), contacts={("block_blue", "base")}, vel=(0, 0, 1.5)))
    assert not task_success("stack_block", holding, falling)
    assert task_success("unstack_block", on_blue, scene())
    assert not task_success("unstack_block", on_blue, on_blue)


def test_push_into_drawer():
    s = scene()
    fell = scene(blue=block((0.23, -0.3, 0.362), contacts={("table", "drawer_link")}))
    assert completed_tasks(s, fell) == {"push_into_drawer"}
    pushed_by_hand = scene(
        blue=block((0.23, -0.3, 0.362), contacts={("table", "drawer_link"), ("robot", "f")})
    )
    assert not task_success("push_into_drawer", s, pushed_by_hand)


def test_unknown_task_names_the_field():
    with pytest.raises(ValueError, match="unknown CALVIN task"):
        task_success("fly_away", scene(), scene())
