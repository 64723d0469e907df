"""LiberoEnv over the real LIBERO benchmark: spaces, protocol, init states, success, failures, cameras."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dfm_vla.envs import ENV_SPECS, make_env
from dfm_vla.envs.libero import protocol, suites
from dfm_vla.envs.libero.goal_experts import make_goal_expert

pytest.importorskip("libero")

BOWL_SLOT = 0  # akita_black_bowl_1 is the first object of every LIBERO-Goal task


@pytest.fixture(scope="module")
def env():
    """One camera-free LIBERO-Goal env (all tasks) shared by the tests of this module."""
    e = make_env("libero_goal").unwrapped
    yield e
    e.close()


def test_names_registered_and_alias():
    for name in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_long", "libero_90"):
        assert name in ENV_SPECS and name in gym.registry
    assert ENV_SPECS["libero_long"][1]["suite"] == "libero_10"
    with pytest.raises(ValueError, match="unknown env name"):
        make_env("libero_nope")


def test_gym_make_and_check_env_on_demand():
    e = gym.make("libero_goal", task_id=7, camera_mode="on_demand", image_size=32)
    assert e.unwrapped.max_episode_steps == 300 and e.unwrapped.instruction == "turn on the stove"
    check_env(e.unwrapped, skip_render_check=True)
    obs, _ = e.reset(seed=0)
    assert "images" not in obs and "images" not in e.observation_space.spaces
    images = e.unwrapped.render_images()
    assert set(images) == {"agentview", "wrist"} and images["wrist"].shape == (32, 32, 3)
    e.close()


def test_reset_step_shapes(env):
    obs, info = env.reset(seed=0, options={"task_id": 8})
    assert set(obs) == {"language", "state", "object_state"}
    assert obs["language"] == "put the bowl on the plate" == env.instruction
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert obs["object_state"].shape == (58,) == (suites.object_state_dim("libero_goal"),)
    assert obs in env.observation_space
    # state = grip-site position, axis-angle, finger qpos; object slots are relative to the grip site.
    np.testing.assert_allclose(obs["state"][:3], env.sim.data.site_xpos[env._eef_site_id], atol=1e-6)
    bowl = obs["object_state"][BOWL_SLOT * 10 : BOWL_SLOT * 10 + 10]
    np.testing.assert_allclose(bowl[7:10], bowl[:3] - obs["state"][:3], atol=1e-5)
    names = env.object_state_names
    assert len(names) == 58 and names[0] == "akita_black_bowl_1.x" and "wooden_cabinet_1_top_level" in names
    obs, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert obs in env.observation_space and reward == 0.0 and not terminated and not truncated
    assert info["success"] is False and info["steps"] == 1 and info["task_id"] == 8


def test_official_init_states_honoured(env):
    states = suites.init_states("libero_goal", 8)
    assert states.shape[0] == protocol.NUM_INIT_STATES == 50
    for k in (0, 17):
        obs, info = env.reset(seed=1, options={"task_id": 8, "init_state_id": k})
        assert info["init_state_id"] == k
        # qpos layout: robot 0-6, fingers 7-8, bowl free joint 9-15 (objects fall <1 cm in xy while settling)
        np.testing.assert_allclose(obs["object_state"][0:2], states[k][1 + 9 : 1 + 11], atol=0.01)
    a = env.reset(seed=1, options={"task_id": 8, "init_state_id": 0})[0]["object_state"]
    b = env.reset(seed=1, options={"task_id": 8, "init_state_id": 17})[0]["object_state"]
    assert np.abs(a[:2] - b[:2]).max() > 0.003, "two official states should place the bowl differently"


def test_reset_is_seeded_and_leaks_no_state(env):
    first, info = env.reset(seed=5, options={"task_id": 0})
    other, _ = env.reset(seed=6, options={"task_id": 0})
    assert np.abs(first["object_state"] - other["object_state"]).max() > 1e-3, "seeds should change placement"
    # open the drawer partway and move the arm, then reset with the same seed: identical start
    expert = make_goal_expert()
    env.reset(seed=5, options={"task_id": 0})
    expert.reset(env)
    for _ in range(110):
        _, _, terminated, _, _ = env.step(expert.act(None))
        if terminated:
            break
    drawer_index = env.object_state_names.index("wooden_cabinet_1_middle_level")
    assert env._object_state()[drawer_index] < -0.02
    again, info2 = env.reset(seed=5, options={"task_id": 0})
    np.testing.assert_allclose(again["state"], first["state"], atol=1e-6)
    np.testing.assert_allclose(again["object_state"], first["object_state"], atol=1e-6)
    assert again["object_state"][drawer_index] == pytest.approx(0.0, abs=1e-6)
    assert info2["placement_seed"] == info["placement_seed"]


def test_expert_success_and_noop_failure(env):
    expert = make_goal_expert()
    obs, _ = env.reset(seed=3, options={"task_id": 7})
    expert.reset(env)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
    assert info["success"] and terminated and not truncated and reward == 1.0 and env.check_success()
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(np.zeros(7))

    env.reset(seed=3, options={"task_id": 7})
    steps = 0
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(np.zeros(7))
        steps += 1
    assert steps == protocol.MAX_EPISODE_STEPS["libero_goal"] == 300
    assert truncated and not terminated and not info["success"] and reward == 0.0


def test_action_validation_and_clipping(env):
    env.reset(seed=0, options={"task_id": 1})
    with pytest.warns(UserWarning, match="clipped"):
        env._warned_clip = False
        _, _, _, _, info = env.step(np.array([2.0, 0, 0, 0, 0, 0, -1]))
    assert info["n_clipped_actions"] == 1
    _, _, _, _, info = env.step(np.zeros(7))
    assert info["n_clipped_actions"] == 1
    with pytest.raises(ValueError, match=r"action: expected shape \(7,\)"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="init_state_id"):
        env.reset(options={"task_id": 1, "init_state_id": 50})
    with pytest.raises(ValueError, match="unknown keys"):
        env.reset(options={"task": 1})


def test_unstable_simulation_ends_episode_as_failure(env):
    env.reset(seed=0, options={"task_id": 2})
    bottle_qvel = env.sim.model.get_joint_qvel_addr("wine_bottle_1_joint0")
    env.sim.data.qvel[bottle_qvel[0] : bottle_qvel[1]] = 1e12  # blow the simulation up
    obs, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert terminated and not info["success"] and info["failure_reason"].startswith(("unstable", "simulator"))
    assert np.all(np.isfinite(obs["state"])) and np.all(np.isfinite(obs["object_state"]))
    obs, info = env.reset(seed=0, options={"task_id": 2})  # the next episode is clean
    assert np.all(np.isfinite(obs["object_state"])) and "failure_reason" not in info
    _, _, terminated, _, info = env.step(np.zeros(7))
    assert not terminated and "failure_reason" not in info


def test_cameras_every_step():
    e = make_env("libero_goal", task_id=8, camera_mode="every_step", image_size=32).unwrapped
    obs, _ = e.reset(seed=0)
    assert set(obs["images"]) == {"agentview", "wrist"}
    assert obs["images"]["agentview"].shape == (32, 32, 3) and obs["images"]["agentview"].dtype == np.uint8
    assert obs in e.observation_space and obs["images"]["agentview"].std() > 5  # a real picture
    raw = e.sim.render(camera_name="agentview", width=32, height=32)
    np.testing.assert_array_equal(e.render_images()["agentview"], raw[::-1, ::-1])  # the 180-degree flip
    check_env(e, skip_render_check=True)
    e.close()


def test_render_images_needs_a_camera_mode(env):
    with pytest.raises(RuntimeError, match="camera_mode='none'"):
        env.render_images()


@pytest.mark.slow
def test_vector_env_runs_two_processes():
    from dfm_vla.envs.vector import make_vector_env

    envs = make_vector_env("libero_goal", 2, task_id=7)
    obs, info = envs.reset(seed=[1, 2])
    assert obs["state"].shape == (2, 8) and obs["object_state"].shape == (2, 58)
    assert tuple(obs["language"]) == ("turn on the stove", "turn on the stove")
    assert not np.allclose(obs["object_state"][0], obs["object_state"][1])
    obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 7)))
    assert reward.shape == (2,) and not terminated.any()
    envs.close()


@pytest.mark.slow
def test_bench_env_writes_json(tmp_path):
    import json

    from dfm_vla.cli import main as cli_main

    out = tmp_path / "bench.json"
    args = [
        "bench",
        "env",
        "--env",
        "libero_goal",
        "--steps",
        "20",
        "--camera-steps",
        "8",
        "--image-size",
        "32",
    ]
    assert cli_main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("create_first_s", "steps_per_s_no_camera", "steps_per_s_every_step", "steps_per_s_on_demand"):
        assert result[key] > 0 and result[f"{key}_cpu"] > 0
    assert result["views"] == ["agentview", "wrist"]


def test_objects_that_start_on_fixtures_rest_on_them_after_reset():
    """LIBERO-Spatial task 7 puts the bowl on the stove. Soft resets used to count the stove's offset twice:
    the bowl spawned beside the table and fell to the floor (z 0.32). It must rest on the burner (z 0.93)."""
    e = make_env("libero_spatial", task_id=7).unwrapped
    sim = e._inner.env.sim
    bowl = sim.model.body_name2id("akita_black_bowl_1_main")
    for seed in (1, 2):
        e.reset(seed=seed)
        for _ in range(30):
            e.step(np.zeros(7))
        assert sim.data.body_xpos[bowl][2] > 0.9, f"seed {seed}: bowl at {sim.data.body_xpos[bowl].round(3)}"
    e.close()


def test_random_placement_that_throws_an_object_off_the_table_is_drawn_again():
    """LIBERO's sampler keeps footprints apart, not meshes: for this seed LIBERO-Spatial task 8 puts the
    bowl into its neighbour and it is thrown off the table while it settles (z 0.18 after 10 steps). The
    env draws that placement again; a placement that settles is kept as it is."""
    e = make_env("libero_spatial", task_id=8).unwrapped

    def heights(seed):
        _, info = e.reset(seed=seed)
        return e._object_heights(), info

    z, info = heights(500_080_034)
    assert info["placement_redraws"] == 1 and np.all(z > 0.85), (z, info)
    z, info = heights(500_080_033)
    assert info["placement_redraws"] == 0 and np.all(z > 0.85), (z, info)
    e.close()


@pytest.mark.parametrize(
    ("task_id", "seeds"),  # placements (collect --seed 900 and 902) that the previous recipe failed on
    [(4, (900040005, 900040006, 900040008)), (7, (900070000, 900070003, 902070002, 902070007))],
)
def test_spatial_expert_hard_placements(task_id, seeds):
    """The bowl at the far end of the open drawer (task 4: a pinch whose fingers overshot the aperture,
    a drag the bowl did not follow, a grip on the lip only) and wedged on the stove (task 7: lifted 1.3 cm
    when judged at 1.5 cm and not retried; pads that slipped on a straight pull, now peeled off)."""
    from dfm_vla.envs.collect import load_expert, run_expert_episode

    e = make_env("libero_spatial", task_id=task_id)
    expert = load_expert("libero_spatial")
    for seed in seeds:
        _, info = run_expert_episode(e, expert, seed=seed)
        assert info["success"], f"libero_spatial task {task_id}, seed {seed}: the expert failed"
    e.close()


def test_gripper_holds_a_commanded_aperture(env):
    """The pinch narrows the open fingers to an aperture by steering the actuators' target (the fingers
    lag it by 2-3 steps; steering on the measured gap overshot 0.05 m to about 0.012 m)."""
    from dfm_vla.envs.libero.expert_base import OPEN, ScriptContext
    from dfm_vla.envs.libero.spatial_experts import set_aperture

    env.reset(seed=0, options={"task_id": 0})
    c = ScriptContext(env)
    for _ in range(10):
        env.step(np.array([0, 0, 0, 0, 0, 0, OPEN]))
    assert c.finger_gap() > 0.07 and c.finger_gap_target() == pytest.approx(0.08)
    for action in set_aperture(c, c.hold(15), 0.04):
        env.step(action)
    assert c.finger_gap() == pytest.approx(0.04, abs=0.005)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "task_id"), [("libero_object", 0), ("libero_spatial", 0)])
def test_spatial_and_object_experts_succeed(name, task_id):
    from dfm_vla.envs.collect import load_expert

    e = make_env(name, task_id=task_id).unwrapped
    expert = load_expert(name)
    obs, _ = e.reset(seed=1000)
    expert.reset(e)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = e.step(expert.act(obs))
    assert info["success"], f"{name} task {task_id}: the expert failed"
    e.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task_id", "seed"),
    [(3, 110), (3, 117), (5, 5024), (5, 5038)],  # placements the previous recipes failed on
)
def test_goal_expert_hard_placements(env, task_id, seed):
    """Task 3 with the bowl at its +x extreme (under the open drawer's wall) and task 5 with the cream
    cheese next to the plate rim: the leaning bowl grasp and the cheese-aware rim angle succeed."""
    expert = make_goal_expert()
    obs, _ = env.reset(seed=seed, options={"task_id": task_id, "init_state_id": None})
    expert.reset(env)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
    assert info["success"], f"libero_goal task {task_id}, seed {seed}: the expert failed"
