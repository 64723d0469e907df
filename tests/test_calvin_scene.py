"""CALVIN play-table MJCF for scenes A-D: sizes, joint ranges and link naming from the facts."""

import mujoco
import numpy as np
import pytest

from dfm_vla.envs.calvin.scene import SCENES, build_model


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_scene_builds_with_calvin_dimensions(scene):
    layout = SCENES[scene]
    model = build_model(layout)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    ranges = {
        j: tuple(model.joint(j).range)
        for j in ("base__slide", "base__drawer", "base__button", "base__switch")
    }
    assert ranges["base__drawer"] == pytest.approx((0, 0.22)) and ranges["base__button"] == pytest.approx(
        (0, 0.02)
    )
    assert ranges["base__switch"] == pytest.approx((0, 0.088))
    assert ranges["base__slide"] == pytest.approx((0, layout.slide_range))
    for block, size in layout.block_sizes.items():
        np.testing.assert_allclose(2 * model.geom(block).size, size, atol=1e-4)
        assert model.body(block).mass[0] == pytest.approx(1.0)
    top = model.geom("base_link__top")
    assert data.geom_xpos[top.id][2] + top.size[2] == pytest.approx(0.44, abs=1e-4)
    plank = model.geom("plank_link__board")
    assert data.geom_xpos[plank.id][2] + plank.size[2] == pytest.approx(0.441, abs=1e-4)
    assert data.body("drawer_link").xpos[0] == pytest.approx(layout.drawer_x)
    assert data.body("button_link").xpos[0] == pytest.approx(layout.button_x)
    assert model.cam("static").fovy[0] == 10 and model.cam("gripper").fovy[0] == 75


def test_scene_d_numbers():
    d = SCENES["D"]
    assert d.drawer_x == 0.18 and d.slide_x == -0.10 and d.switch_x == 0.30 and d.button_x == -0.12
    left, right = d.slider_slots
    assert left[0] == pytest.approx(-0.240851662) and right[0] == pytest.approx(0.0703416330)
