"""CALVIN MuJoCo env: API (check_env in every camera mode), CALVIN's layouts, actions, reset, protocol."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dfm_vla.envs import make_env
from dfm_vla.envs.calvin import chains
from dfm_vla.envs.calvin.env import CalvinEnv
from dfm_vla.envs.calvin.protocol import evaluate, run_chain, summarize


@pytest.fixture(scope="module")
def env():
    e = CalvinEnv(scene="D")
    yield e
    e.close()


@pytest.mark.parametrize("camera_mode", ["none", "on_demand", "every_step"])
def test_check_env(camera_mode):
    e = make_env("calvin_d", camera_mode=camera_mode)
    check_env(e.unwrapped, skip_render_check=True)
    obs, _ = e.reset(seed=0)
    assert ("rgb_static" in obs) == (camera_mode == "every_step")
    if camera_mode == "every_step":
        assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_gripper"].shape == (84, 84, 3)
        assert obs["images"]["static"].std() > 5  # a real picture, not a blank frame
    if camera_mode == "on_demand":
        views = e.unwrapped.render_images()
        assert views["static"].shape == (200, 200, 3) and views["gripper"].shape == (84, 84, 3)
    e.close()


def test_registered_names():
    for scene in "abcd":
        assert f"calvin_{scene}" in gym.registry
    e = gym.make("calvin_b")
    assert e.unwrapped.layout.name == "B"
    e.close()


def test_chain_reset_matches_calvin_initial_state(env):
    obs, info = env.reset(options={"chain_index": 0})
    robot_obs, scene_obs = chains.initial_env_state(chains.evaluation_chains()[0][0])
    assert info["task"] == "rotate_blue_block_right"
    assert obs["language"] == "take the blue block and rotate it to the right"
    assert obs["robot_obs"].shape == (15,) and obs["scene_obs"].shape == (24,)
    np.testing.assert_allclose(obs["robot_obs"][:6], robot_obs[:6], atol=2e-3)
    np.testing.assert_allclose(obs["robot_obs"][7:14], robot_obs[7:14], atol=2e-3)
    np.testing.assert_allclose(obs["scene_obs"][[0, 1, 3, 4, 5]], scene_obs[[0, 1, 3, 4, 5]], atol=2e-3)
    np.testing.assert_allclose(obs["scene_obs"][6:], scene_obs[6:], atol=3e-3)
    assert env.max_episode_steps == 360 and env.instruction == obs["language"]


def test_relative_action_moves_target_and_tcp(env):
    env.reset(options={"chain_index": 2})
    start_tcp = env.tcp_pose()[0]
    start_target = env._target_pos.copy()
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0, 0, 0, 0, 0, -0.3]))
    np.testing.assert_allclose(env._target_pos - start_target, [0.1, 0, 0], atol=1e-9)  # 5 x 0.02 m
    moved = obs["robot_obs"][:3] - start_tcp
    assert 0.07 < moved[0] < 0.11 and abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01
    assert obs["robot_obs"][14] == -1.0  # gripper binarised: <= 0 closes
    assert obs["robot_obs"][6] < 0.03  # and it is closing (from 0.08)
    assert info["success"] is False and reward == 0.0


def test_absolute_actions():
    e = CalvinEnv(action_mode="absolute")
    e.reset(options={"chain_index": 0})
    pos, euler = e.tcp_pose()
    goal = pos + np.array([0.05, 0.03, -0.05])
    for _ in range(20):
        obs, *_ = e.step(np.concatenate([goal, euler, [1.0]]))
    np.testing.assert_allclose(obs["robot_obs"][:3], goal, atol=0.01)
    e.close()


def test_bad_inputs_name_the_field(env):
    env.reset(options={"chain_index": 0})
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="chain_index"):
        env.reset(options={"chain_index": 1000})
    with pytest.raises(ValueError, match="scene_obs"):
        env.reset(options={"robot_obs": np.zeros(15), "scene_obs": np.zeros(23)})
    with pytest.raises(ValueError, match="scene"):
        CalvinEnv(scene="E")


class _Still:
    """An agent that holds still (gripper open) and counts its resets."""

    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1

    def act(self, obs):
        return np.array([0, 0, 0, 0, 0, 0, 1.0])


def test_protocol_with_a_still_agent(env):
    agent = _Still()
    seen = []
    result = evaluate(env, agent, num_chains=2, ep_len=4, on_chain=lambda r, s: seen.append((r.index, s)))
    assert result["lengths"] == [0, 0] and result["avg_len"] == 0.0 and agent.resets == 2
    assert [i for i, _ in seen] == [0, 1]
    assert result["task_counts"]["rotate_blue_block_right"] == {"success": 0, "fail": 1}
    resumed = evaluate(env, agent, num_chains=2, done={0: 3, 1: 5})
    assert resumed["avg_len"] == 4.0 and agent.resets == 2  # nothing re-run


def test_summarize():
    s = summarize([5, 0, 2, 3])
    assert s["avg_len"] == 2.5 and s["sr_1"] == 0.75 and s["sr_3"] == 0.5 and s["sr_5"] == 0.25


def test_expert_runs_chain_zero_through_the_protocol(env):
    from dfm_vla.envs.calvin.expert import CalvinExpert

    class ExpertAgent:
        def __init__(self):
            self.expert = CalvinExpert()

        def reset(self):
            self.expert.reset(env)

        def act(self, obs):
            return self.expert.act(obs)

    condition, tasks = chains.evaluation_chains()[0]
    result = run_chain(env, ExpertAgent(), 0, condition, tasks)
    assert result.length >= 2, result  # rotate blue, then move the slider right at least
