"""AgileX tasks: gymnasium API, limits, success tests, scripted experts, grasp holding, demo round-trip."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dfm_vla.envs import make_env
from dfm_vla.envs.agilex.env import CAMERA_NAMES, CONTROL_DT
from dfm_vla.envs.agilex.expert import AgileXExpert
from dfm_vla.envs.agilex.kinematics import PIPER_MAX_JOINT_SPEED
from dfm_vla.envs.agilex.tasks import PotLiftEnv

TASKS = ("agilex_pot_lift", "agilex_place_veg", "agilex_place_block")


@pytest.fixture(scope="module")
def expert():
    return AgileXExpert()


def run_expert(env, expert, seed, on_step=None):
    obs, info = env.reset(seed=seed)
    expert.reset(env)
    for t in range(env.unwrapped.max_episode_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        if on_step is not None:
            on_step(t, env)
        if terminated or truncated:
            return t + 1, reward, info
    raise AssertionError("episode did not end at the step limit")


@pytest.mark.parametrize("name", TASKS)
def test_check_env_passes_with_cameras_every_step(name):
    env = make_env(name, camera_mode="every_step", image_size=(24, 32))
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert set(obs["images"]) == set(CAMERA_NAMES)
    assert obs["images"]["cam_high"].shape == (24, 32, 3) and obs["images"]["cam_high"].dtype == np.uint8
    assert obs["images"]["cam_high"].std() > 0  # a real picture, not a blank buffer
    assert obs["state"].shape == (14,) and obs["language"] in env.unwrapped.instructions
    env.close()


@pytest.mark.parametrize("mode", ["none", "on_demand"])
def test_check_env_passes_without_per_step_images(mode):
    env = gym.make("agilex_place_block", camera_mode=mode)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert "images" not in obs
    if mode == "on_demand":
        images = env.unwrapped.render_images()
        assert set(images) == set(CAMERA_NAMES) and images["cam_left_wrist"].shape == (128, 128, 3)
    else:
        with pytest.raises(RuntimeError, match="camera_mode='none'"):
            env.unwrapped.render_images()
    env.close()


def test_bad_constructor_arguments_and_actions_name_the_field():
    with pytest.raises(ValueError, match="camera_mode"):
        make_env("agilex_pot_lift", camera_mode="sometimes")
    env = make_env("agilex_pot_lift")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: expected shape \(14,\)"):
        env.unwrapped.step(np.zeros(7))


def test_resets_are_randomised_and_reproducible():
    env = make_env("agilex_place_veg").unwrapped
    env.reset(seed=3)
    a = env.task_state()
    env.reset(seed=3)
    b = env.task_state()
    env.reset(seed=4)
    c = env.task_state()
    np.testing.assert_allclose(a["veg"], b["veg"])
    assert np.linalg.norm(a["veg"][:3] - c["veg"][:3]) > 1e-3


@pytest.mark.parametrize("name", TASKS)
def test_object_state_gives_each_object_pose_zero_padded_to_two_objects(name):
    env = make_env(name)
    obs, _ = env.reset(seed=5)
    poses = env.unwrapped.task_state()  # {body: (7,) position + quaternion}
    assert obs["object_state"].shape == (14,) and obs["object_state"].dtype == np.float32
    assert env.observation_space["object_state"].contains(obs["object_state"])
    expected = np.concatenate([*poses.values(), np.zeros(14 - 7 * len(poses))])
    np.testing.assert_allclose(obs["object_state"], expected, atol=1e-6)
    obs, *_ = env.step(obs["state"])  # hold the arms: the objects stay where they were
    np.testing.assert_allclose(obs["object_state"][:3], expected[:3], atol=5e-3)


def test_tcp_state_is_the_forward_kinematics_of_the_joint_state(expert):
    from dfm_vla.envs.agilex.ik import BimanualIK

    env = make_env("agilex_place_veg")
    obs, _ = env.reset(seed=6)
    expert.reset(env)
    for _ in range(40):  # approach the carrot: the right tool moves, the left holds
        obs, *_ = env.step(expert.act(obs))
    assert obs["tcp_state"].shape == (6,) and env.observation_space["tcp_state"].contains(obs["tcp_state"])
    ik = BimanualIK()
    ik.reset(np.stack([obs["state"][0:6], obs["state"][7:13]]))
    expected = np.concatenate([ik.tcp_pose("left")[0], ik.tcp_pose("right")[0]])
    # within 1 mm: MuJoCo's site positions trail the joint positions by one 2 ms physics step
    np.testing.assert_allclose(obs["tcp_state"], expected, atol=1e-3)


def test_actions_are_clipped_to_limits_and_speed_limited():
    env = make_env("agilex_pot_lift").unwrapped
    obs, _ = env.reset(seed=0)
    start = obs["state"].astype(np.float64)
    action = start.copy()
    action[0] = 10.0  # far beyond J1's +2.618 rad
    _, _, _, _, info = env.step(action)
    assert info["action_clipped"] and info["speed_limited"]
    # One step moves J1 by at most 3 rad/s * 0.04 s (plus a little tracking overshoot).
    moved = env.joint_state()[0] - start[0]
    assert 0.05 < moved <= PIPER_MAX_JOINT_SPEED * CONTROL_DT + 0.01
    for _ in range(40):
        _, _, _, _, info = env.step(action)
    assert env.joint_state()[0] <= env.action_high[0] + 0.01
    _, _, _, _, info = env.step(env.joint_state())
    assert not info["action_clipped"]


@pytest.mark.parametrize("name", TASKS)
def test_holding_still_never_succeeds_and_truncates_at_the_step_limit(name):
    env = make_env(name).unwrapped
    obs, _ = env.reset(seed=5)
    hold = obs["state"].copy()
    steps = 0
    truncated = False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(hold)
        steps += 1
        assert not info["success"] and reward == 0.0 and not terminated
    assert steps == env.max_episode_steps


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("seed", [11, 12])
def test_expert_succeeds(name, seed, expert):
    env = make_env(name).unwrapped
    steps, reward, info = run_expert(env, expert, seed)
    assert info["success"] and reward == 1.0 and steps < env.max_episode_steps


def test_the_place_expert_opens_its_fingers_while_still_lowering_the_object(expert):
    """The release belongs to a position on the way down, not to a pause at the place pose."""
    env = make_env("agilex_place_veg").unwrapped
    obs, _ = env.reset(seed=3)
    expert.reset(env)
    grip, tcp_z = [], []
    for _ in range(env.max_episode_steps):
        action = expert.act(obs)
        grip.append(action[13])  # the right arm's gripper command (m)
        obs, reward, terminated, truncated, info = env.step(action)
        tcp_z.append(env.data.site("right_tcp").xpos[2])
        if terminated or truncated:
            break
    assert info["success"]
    closed = int(np.argmax(np.asarray(grip) < 0.01))  # the grasp
    release = closed + int(np.argmax(np.asarray(grip[closed:]) > 0.05))  # first opening command after it
    lowest = min(tcp_z[release:])
    assert tcp_z[release] - lowest > 0.01, "the fingers should open more than 1 cm above the lowest point"
    assert tcp_z[release + 1] < tcp_z[release], "the arm should still be lowering when the fingers open"


def test_a_held_block_stays_in_the_gripper_while_the_arm_swings(expert):
    env = make_env("agilex_place_block").unwrapped
    obs, _ = env.reset(seed=2)
    expert.reset(env)
    for _ in range(72):  # approach, grasp and lift (the plan's first four waypoints)
        obs, *_ = env.step(expert.act(obs))

    def block_in_tool_frame():
        tcp = env.data.site("left_tcp")
        return tcp.xmat.reshape(3, 3).T @ (env.data.body("block").xpos - tcp.xpos)

    tcp_offset = block_in_tool_frame()
    assert env.data.body("block").xpos[2] > 0.80 + 0.05, "the expert should have lifted the block"
    held = env.joint_targets
    for t in range(100):  # swing the base joint and the shoulder back and forth (~1 rad/s), gripper closed
        target = held.copy()
        target[0] += 0.4 * np.sin(2 * np.pi * t / 50)
        target[1] += 0.15 * np.sin(2 * np.pi * t / 25)
        env.step(target)
        assert np.linalg.norm(block_in_tool_frame() - tcp_offset) < 0.003, f"block slipped at step {t}"


def test_a_lifted_pot_stays_level_in_both_grippers_while_carried(expert):
    env = make_env("agilex_pot_lift").unwrapped
    obs, _ = env.reset(seed=4)
    expert.reset(env)
    for _ in range(100):  # approach, grasp, lift 0.09 m and hold still (the whole plan), no early stop
        obs, *_ = env.step(expert.act(obs))
    z0 = env.data.body("pot").xpos[2]
    assert z0 > 0.80 + 0.04
    held = env.joint_targets

    def handles_in_tool_frames():
        """Each handle's centre in its own gripper's tool frame (the pot may pivot about the bars)."""
        out = []
        for arm in ("left", "right"):
            tcp = env.data.site(f"{arm}_tcp")
            handle = env.data.geom(f"pot_handle_{arm}").xpos
            out.append(tcp.xmat.reshape(3, 3).T @ (handle - tcp.xpos))
        return np.concatenate(out)

    start = handles_in_tool_frames()
    for t in range(50):  # raise and lower both shoulders in step, grippers closed
        target = held.copy()
        target[[1, 8]] -= 0.1 * np.sin(np.pi * t / 50)
        env.step(target)
        assert np.abs(handles_in_tool_frames() - start).max() < 0.003, f"a handle slipped at step {t}"
        assert env.data.body("pot").xmat[8] > np.cos(0.15), f"pot tilted at step {t}"
    assert env.data.body("pot").xpos[2] > 0.80 + 0.04


def test_instability_ends_the_episode_as_a_failure():
    env = make_env("agilex_place_block").unwrapped
    obs, _ = env.reset(seed=0)
    env.data.qvel[:] = 1e12
    obs, reward, terminated, truncated, info = env.step(obs["state"])
    assert terminated and not info["success"] and reward == 0.0
    assert "unstable" in info["failure_reason"] or "non-finite" in info["failure_reason"]
    assert env.observation_space.contains(obs)


def test_demo_round_trip_replays_to_the_same_outcome(tmp_path, expert):
    from dfm_vla.envs.demo_file import Demo, DemoWriter, read_demo_file

    env = make_env("agilex_place_block", camera_mode="every_step", image_size=32).unwrapped
    obs, _ = env.reset(seed=21)
    expert.reset(env)
    actions, states, rows = [], [], {"state": [], **{f"{c}_rgb": [] for c in CAMERA_NAMES}}
    while True:
        rows["state"].append(obs["state"])
        for cam in CAMERA_NAMES:
            rows[f"{cam}_rgb"].append(obs["images"][cam])
        states.append(env.get_sim_state())
        actions.append(expert.act(obs))
        obs, reward, terminated, truncated, info = env.step(actions[-1])
        if terminated or truncated:
            break
    assert info["success"]
    writer = DemoWriter(tmp_path / "agilex.hdf5", env_name="agilex_place_block")
    writer.add(
        Demo(
            actions=np.array(actions),
            obs={k: np.array(v) for k, v in rows.items()},
            language=env.instruction,
            success=True,
            seed=21,
            task_index=0,
            states=np.array(states),
        )
    )
    writer.finalize()
    _, demos = read_demo_file(tmp_path / "agilex.hdf5")
    demo = demos[0]
    assert demo.obs["cam_high_rgb"].shape == (len(actions), 32, 32, 3)
    replay = make_env("agilex_place_block").unwrapped
    replay.reset(seed=demo.seed)
    np.testing.assert_allclose(replay.get_sim_state(), demo.states[0])
    for action in demo.actions:
        _, _, terminated, _, info = replay.step(action)
    assert terminated and info["success"]


def test_collect_command_writes_agilex_demos_with_images(tmp_path):
    from dfm_vla import cli
    from dfm_vla.envs.demo_file import read_demo_file

    out = tmp_path / "demos"
    args = ["collect", "--env", "agilex_pot_lift", "--episodes", "2", "--out", str(out)]
    assert cli.main([*args, "--images", "--image-size", "32"]) == 0
    (path,) = out.glob("*.hdf5")
    attrs, demos = read_demo_file(path)
    assert attrs["env_name"] == "agilex_pot_lift" and len(demos) == 2
    for demo in demos:
        assert demo.success and demo.actions.shape[1] == 14
        assert demo.obs["state"].shape == (demo.num_samples, 14)
        assert demo.obs["object_state"].shape == (demo.num_samples, 14)  # the pot, then zero padding
        assert np.all(demo.obs["object_state"][:, 7:] == 0)
        assert demo.obs["tcp_state"].shape == (demo.num_samples, 6)
        assert demo.obs["cam_high_rgb"].shape == (demo.num_samples, 32, 32, 3)
        assert demo.language in PotLiftEnv.instructions


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_expert_success_rate_over_50_seeds_is_at_least_90_percent(name, expert):
    env = make_env(name).unwrapped
    successes = sum(run_expert(env, expert, seed)[2]["success"] for seed in range(1000, 1050))
    assert successes >= 45, f"{name}: expert succeeded in {successes}/50"


def test_image_policy_trained_on_agilex_demos_is_evaluated_at_the_demo_image_size(tmp_path, repo_root):
    """collect (32 x 32 images) -> train an image policy for 2 steps -> eval renders at 32 x 32."""
    import json

    from _models import MICRO

    from dfm_vla import cli
    from dfm_vla.agents.dfm_policy import DFMPolicy
    from dfm_vla.evaluation.policies import PolicySpec
    from dfm_vla.evaluation.runner import RunConfig, setup

    demos, policy_dir = tmp_path / "demos", tmp_path / "policy"
    collect = ["collect", "--env", "agilex_place_block", "--episodes", "2", "--images", "--image-size", "32"]
    assert cli.main([*collect, "--out", str(demos)]) == 0
    train = ["train", "--config", str(repo_root / "configs/tiny_agilex.yaml"), "--data", str(demos)]
    model = json.dumps({**MICRO, "image_size": 32, "patch_size": 8, "execute_horizon": 4})
    for override in ("val_fraction=0", "batch_size=4", f"model_overrides={model}"):
        train += ["--set", override]
    assert cli.main([*train, "--out", str(policy_dir), "--max-steps", "2"]) == 0
    policy = DFMPolicy.from_pretrained(policy_dir)
    assert policy.uses_images and policy.image_hw == (32, 32) and policy.action_dim == 14

    spec = PolicySpec("checkpoint", str(policy_dir))
    env, policy, _ = setup(RunConfig("agilex_place_block", spec, tmp_path / "x"))
    assert env.unwrapped.image_size == (32, 32) and env.unwrapped.camera_mode == "on_demand"
    obs, _ = env.reset(seed=0)
    obs = {**obs, "images": env.unwrapped.render_images()}
    action = policy.act(obs)
    assert action.shape == (14,) and np.isfinite(action).all()
    env.close()

    out = tmp_path / "eval"
    args = ["eval", "--env", "agilex_place_block", "--policy", str(policy_dir), "--episodes-per-task", "1"]
    assert cli.main([*args, "--max-steps", "8", "--num-envs", "1", "--out", str(out)]) == 0
    (episode,) = json.loads((out / "results.json").read_text())["episodes"]
    assert episode["length"] == 8 and episode["plans"] == 2 and not episode["success"]


def test_failure_phase_says_how_far_a_failed_pick_and_place_got(expert):
    env = make_env("agilex_place_veg", max_episode_steps=150)
    base = env.unwrapped

    def run(expert_steps: int) -> tuple[bool, str | None]:
        obs, _ = env.reset(seed=21)
        expert.reset(env)
        for t in range(150):
            # the expert until `expert_steps`, then hold the arms where they are headed
            action = expert.act(obs) if t < expert_steps else base.hold_action()
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        return info["success"], base.failure_phase()

    assert run(150) == (True, None)
    assert run(0) == (False, "no grasp")
    # 110 steps: the carrot is grasped, carried and lowered over the pot; the release comes at 117
    assert run(110) == (False, "held, not released")
