"""Each of CALVIN's 34 tasks: the scripted expert succeeds (oracle), holding still does not."""

import numpy as np
import pytest

from dfm_vla.envs.calvin.env import CalvinEnv
from dfm_vla.envs.calvin.expert import CalvinExpert
from dfm_vla.envs.calvin.tasks import TASK_NAMES


@pytest.fixture(scope="module")
def env():
    e = CalvinEnv(scene="D")
    yield e
    e.close()


def _run(env, policy, steps):
    obs = env._obs()
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            return bool(info["success"])
    return False


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_succeeds_and_noop_does_not(env, task):
    seed = 7
    env.reset(seed=seed, options={"task": task})
    hold = np.zeros(7)
    hold[6] = env.gripper_action
    assert not _run(env, lambda obs: hold, 30), f"{task}: success without doing anything"
    env.reset(seed=seed, options={"task": task})
    expert = CalvinExpert()
    expert.reset(env)
    assert _run(env, expert.act, 200), f"{task}: expert failed"


def test_symbolic_state_reads_back_the_chain_conditions(env):
    from dfm_vla.envs.calvin import chains
    from dfm_vla.envs.calvin.play import symbolic_state

    for index in (0, 1, 2, 500):
        condition, _ = chains.evaluation_chains()[index]
        env.reset(options={"chain_index": index})
        assert symbolic_state(env) == condition, index


def test_play_episode_chains_feasible_tasks(env, tmp_path):
    from dfm_vla.envs.calvin.play import feasible_tasks, play_episode, symbolic_state

    segments = play_episode(env, CalvinExpert(), np.random.default_rng(3), num_subtasks=3)
    assert 1 <= len(segments) <= 3
    assert all(
        s["actions"].shape[1] == 7 and len(s["obs"]["scene_obs"]) == len(s["actions"]) for s in segments
    )
    assert segments[0]["success"], segments[0]["task"]
    assert len({s["task"] for s in segments}) == len(segments)
    assert feasible_tasks(symbolic_state(env))  # something is always possible next


@pytest.mark.parametrize("scene", ["A", "B", "C"])
def test_chain_states_in_other_scenes_use_their_slots(scene):
    from dfm_vla.envs.calvin import chains
    from dfm_vla.envs.calvin.play import symbolic_state

    e = CalvinEnv(scene=scene)
    for index in (0, 2):
        condition, _ = chains.evaluation_chains()[index]
        e.reset(options={"chain_index": index})
        for _ in range(5):  # blocks must rest where they were put
            e.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
        assert symbolic_state(e) == condition, (scene, index)
    e.close()
