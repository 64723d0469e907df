"""CALVIN's evaluation chains and initial states against the facts (calvin-facts.md 5.6-5.7)."""

from collections import Counter

import numpy as np
import pytest

from dfm_vla.envs.calvin import chains
from dfm_vla.envs.calvin.tasks import CATEGORIES, INSTRUCTIONS, TASK_NAMES


def _cond(led, bulb, slider, drawer, red, blue, pink):
    return {
        "led": led,
        "lightbulb": bulb,
        "slider": slider,
        "drawer": drawer,
        "red_block": red,
        "blue_block": blue,
        "pink_block": pink,
        "grasped": 0,
    }


FACT_CHAINS = [
    (
        _cond(1, 1, "left", "open", "slider_left", "table", "slider_right"),
        (
            "rotate_blue_block_right",
            "move_slider_right",
            "lift_red_block_slider",
            "place_in_slider",
            "turn_off_lightbulb",
        ),
    ),
    (
        _cond(1, 1, "right", "open", "slider_right", "table", "slider_left"),
        ("turn_off_led", "push_into_drawer", "lift_blue_block_drawer", "place_in_slider", "close_drawer"),
    ),
    (
        _cond(0, 1, "right", "closed", "table", "slider_right", "slider_left"),
        (
            "lift_pink_block_slider",
            "place_in_slider",
            "open_drawer",
            "rotate_red_block_right",
            "lift_red_block_table",
        ),
    ),
]


def test_task_table():
    assert len(TASK_NAMES) == 34 and len(set(TASK_NAMES)) == 34
    assert set(INSTRUCTIONS) == set(TASK_NAMES)
    assert INSTRUCTIONS["lift_red_block_drawer"] == "Take the red block from the drawer"
    assert Counter(CATEGORIES.values()) == {
        1: 12,
        2: 2,
        3: 2,
        4: 3,
        5: 3,
        6: 3,
        7: 2,
        8: 4,
        9: 1,
        10: 1,
        11: 1,
    }


def test_initial_conditions_count():
    states = chains.initial_conditions()
    assert len(states) == 192
    assert list(states[0]) == [
        "led",
        "lightbulb",
        "slider",
        "drawer",
        "red_block",
        "blue_block",
        "pink_block",
        "grasped",
    ]


def test_shipped_chains_match_facts():
    ch = chains.evaluation_chains()
    assert len(ch) == 1000
    for i, (cond, seq) in enumerate(FACT_CHAINS):
        assert ch[i] == (cond, seq), f"chain {i}"
    per_state = Counter(tuple(c.items()) for c, _ in ch)
    assert len(per_state) == 192
    assert sorted(Counter(per_state.values()).items()) == [(5, 152), (6, 40)]
    counts = Counter(t for _, seq in ch for t in seq)
    assert len(counts) == 34 and counts["place_in_slider"] == 398 and counts["open_drawer"] == 379
    assert all(chains.check_sequence(c, s) for c, s in ch)


@pytest.mark.parametrize("state_index", [0, 77, 191])
def test_generator_reproduces_shipped_chains_per_state(state_index):
    """The generator, seeded per state as CALVIN does, gives exactly the shipped chains of that state."""
    states = chains.initial_conditions()
    counts = [len(p) for p in np.array_split(np.arange(1000), 192)]
    state = states[state_index]
    generated = chains._chains_for_state(state, counts[state_index], state_index)
    shipped = [seq for c, seq in chains.evaluation_chains() if c == state]
    assert Counter(generated) == Counter(shipped)


@pytest.mark.slow
def test_full_generator_equals_shipped_file():
    assert chains.generate_evaluation_chains(1000) == chains.evaluation_chains()


def test_fnv_seed_and_chain0_scene_obs():
    assert chains.calvin_fnv1_32("test") == 3910690890
    seeds = [chains.state_seed(c) for c, _ in FACT_CHAINS]
    assert seeds == [2138410836, 2685153213, 4009425464]
    assert str(FACT_CHAINS[0][0].values()) == (
        "dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"
    )
    robot_obs, scene_obs = chains.initial_env_state(FACT_CHAINS[0][0])
    expected = [
        0.28,
        0.22,
        0,
        0.088,
        1,
        1,
        -0.24085,
        0.0924,
        0.46099,
        0,
        0,
        1.88594,
        0.23,
        -0.12,
        0.45999,
        0,
        0,
        1.48814,
        0.07034,
        0.0924,
        0.46099,
        0,
        0,
        1.4684,
    ]
    np.testing.assert_allclose(scene_obs, expected, atol=6e-5)
    assert robot_obs.shape == (15,) and robot_obs[14] == 1.0


def test_initial_env_state_rejects_bad_condition():
    with pytest.raises(ValueError, match="missing keys"):
        chains.initial_env_state({"led": 0})
    bad = dict(FACT_CHAINS[0][0], red_block="drawer")
    with pytest.raises(ValueError, match="red_block"):
        chains.initial_env_state(bad)
