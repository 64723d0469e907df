"""The policies that ship in the repository load, are small, and act on a real LIBERO-Goal observation."""

from pathlib import Path

import numpy as np
import pytest

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.evaluation.policies import policy_spec_from_args

SHIPPED = {
    # the default: metric path on the bins' values, 14 + 2 steps, refined from the previous plan
    "default": ("checkpoints/libero_goal_tiny_dfm", "dfm", (14, 2)),
    "dd": ("checkpoints/baselines/libero_goal_tiny_dd", "dd", (14, 2)),  # same demos as the default
    # the first comparison, on the first demo collection (docs/results/libero_goal_tiny)
    "first default (embedding path)": (
        "checkpoints/baselines/first_demos/libero_goal_tiny_dfm_embed",
        "dfm",
        (2, 14),
    ),
    "first dd": ("checkpoints/baselines/first_demos/libero_goal_tiny_dd", "dd", (14, 2)),
    "first ar": ("checkpoints/baselines/first_demos/libero_goal_tiny_ar", "ar", (14, 2)),
}


def test_rollout_without_policy_resolves_to_the_shipped_dfm_checkpoint(repo_root):
    spec = policy_spec_from_args("libero_goal", None, None)
    assert Path(spec.path) == (repo_root / SHIPPED["default"][0]).resolve()
    assert (Path(spec.path) / "MODEL_CARD.md").is_file() and (
        Path(spec.path) / "eval" / "results.json"
    ).is_file()
    with pytest.raises(ValueError, match="no default policy ships for env 'libero_spatial'"):
        policy_spec_from_args("libero_spatial", None, None)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_policy_is_small_and_acts_on_a_libero_goal_observation(name, repo_root):
    pytest.importorskip("libero")
    import gymnasium as gym

    import dfm_vla.envs  # noqa: F401  (registers the envs)

    folder, decoder, steps = SHIPPED[name]
    size = sum(p.stat().st_size for p in (repo_root / folder).rglob("*") if p.is_file())
    assert size < 12e6, f"{folder}: {size / 1e6:.1f} MB"
    agent = DFMPolicy.from_pretrained(repo_root / folder, seed=0)
    assert agent.decoder == decoder and tuple(agent.steps) == steps
    env = gym.make("libero_goal", task_id=8)
    try:
        obs, _ = env.reset(seed=0)
        actions = [agent.act(obs) for _ in range(5)]  # one plan (4 actions executed per plan), then a second
    finally:
        env.close()
    assert agent.num_plans == 2
    assert all(a.shape == (7,) and np.isfinite(a).all() and np.abs(a).max() <= 1.0 for a in actions)
    if agent.warm_start:  # the second plan refined the first: warm_start_steps_fine + _val model calls
        assert (
            agent.last_plan.model_calls
            == agent.config.warm_start_steps_fine + agent.config.warm_start_steps_val
        )


@pytest.mark.parametrize(
    ("folder", "env_name"),
    [
        ("checkpoints/agilex_tiny_dfm", "agilex_place_veg"),
        ("checkpoints/agilex_state_tiny_dfm", "agilex_place_block"),
        ("checkpoints/calvin_d_tiny_dfm", "calvin_d"),
        ("checkpoints/libero_spatial_tiny_dfm", "libero_spatial"),
        ("checkpoints/libero_object_tiny_dfm", "libero_object"),
    ],
)
def test_other_shipped_policies_act_in_their_env_as_evaluation_sets_it_up(folder, env_name, repo_root):
    """The AgileX image policy reads three 64 x 64 cameras (evaluation renders at that size); the AgileX state
    policy, the joints and two object poses; CALVIN's and the LIBERO-Spatial and -Object ones, state (their
    object states have 62 and 70 numbers, Goal's 58)."""
    from dfm_vla.evaluation.policies import PolicySpec
    from dfm_vla.evaluation.runner import RunConfig, setup

    assert (repo_root / folder / "MODEL_CARD.md").is_file()
    env, agent, _ = setup(RunConfig(env_name, PolicySpec("checkpoint", str(repo_root / folder)), "unused"))
    try:
        obs, _ = env.reset(seed=0)
        if agent.uses_images:
            assert agent.image_hw == (64, 64) and env.unwrapped.image_size == (64, 64)
            obs = {**obs, "images": env.unwrapped.render_images()}
        action = agent.act(obs)
    finally:
        env.close()
    low, high = env.action_space.low, env.action_space.high
    assert action.shape == env.action_space.shape and np.isfinite(action).all()
    assert np.all(action >= low - 1e-6) and np.all(action <= high + 1e-6)
