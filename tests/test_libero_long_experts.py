"""Scripted experts for LIBERO-Long (``libero_10``): every task's script plans and runs, each completes
its task from a fixed random placement (slow), and a collected demo reads back for training."""

import numpy as np
import pytest

from dfm_vla.envs import make_env
from dfm_vla.envs.libero import suites
from dfm_vla.envs.libero.long_experts import make_long_expert
from dfm_vla.envs.registration import EXPERTS

pytest.importorskip("libero")

TASKS = range(10)
BOOK = 5  # "pick up the book and place it in the back compartment of the caddy": the shortest (~150 steps)


@pytest.fixture(scope="module")
def env():
    """One env for the whole suite: ``reset(options={"task_id": k})`` loads task k's scene."""
    e = make_env("libero_10").unwrapped
    yield e
    e.close()


def test_long_expert_is_registered_for_both_names():
    assert EXPERTS["libero_10"] == EXPERTS["libero_long"]
    assert EXPERTS["libero_10"].endswith("long_experts:make_long_expert")
    make_long_expert("libero_long")
    with pytest.raises(ValueError, match="libero_10"):
        make_long_expert("libero_goal")


@pytest.mark.parametrize("task_id", TASKS)
def test_every_task_plans_and_steps(env, task_id):
    # The script first waits (at most 40 steps) for objects still falling after the env's settling,
    # then plans its first sub-goal from the simulator and names the phase it is in.
    expert = make_long_expert()
    obs, _ = env.reset(seed=3, options={"task_id": task_id})
    expert.reset(env)
    for _ in range(60):
        action = expert.act(obs)
        assert action.shape == (7,) and np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1.0)
        obs, _, terminated, truncated, info = env.step(action)
        assert not truncated and "failure_reason" not in info
        if expert.ctx.phase:
            break
    assert expert.ctx.phase, f"task {task_id}: the script never left its initial wait"


@pytest.mark.slow
@pytest.mark.parametrize("task_id", TASKS)
def test_expert_completes_each_task(env, task_id):
    expert = make_long_expert()
    obs, _ = env.reset(seed=35, options={"task_id": task_id})
    expert.reset(env)
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
    assert info["success"], f"libero_10 task {task_id}: failed in phase {expert.ctx.phase!r}"


def test_collected_demo_reads_back_for_training(tmp_path):
    from dfm_vla.cli import main as cli_main
    from dfm_vla.envs.demo_file import read_demo_file
    from dfm_vla.train.readers import read_episodes

    out = tmp_path / "demos"
    args = ["collect", "--env", "libero_10", "--episodes", "1", "--tasks", str(BOOK), "--out", str(out)]
    assert cli_main(args) == 0
    (path,) = out.glob("*_demo.hdf5")
    attrs, demos = read_demo_file(path)
    assert attrs["env_name"] == "libero_10" and len(demos) == 1 and demos[0].success

    (episode,) = read_episodes(path, obs_keys=["state", "object_state"])
    episode.validate()
    info = suites.task_info("libero_10", BOOK)
    assert episode.language == info.language
    n = len(episode)
    assert episode.actions.shape == (n, 7) and n == demos[0].num_samples
    assert episode.obs["state"].shape == (n, 8)
    assert episode.obs["object_state"].shape == (n, suites.object_state_dim("libero_10"))
    np.testing.assert_array_equal(episode.actions, demos[0].actions.astype(np.float32))
