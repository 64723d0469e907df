"""DFMPolicy: act / act_batch / reset / needs_plan, seeding, checkpoint round trip, observation errors."""

import numpy as np
import pytest
import torch
from _models import micro_model_config, small_model_config

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.policy.action_tokenizer import BinActionTokenizer, BinTokenizerConfig
from dfm_vla.policy.checkpoint import load_pretrained
from dfm_vla.policy.model import build_model
from dfm_vla.policy.processor import state_statistics
from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer

HORIZON, DIM, STATE, OBJECT_STATE = 6, 7, 8, 4


def _save(directory, objective, seed=0):
    rng = np.random.default_rng(seed)
    chunks = rng.normal(size=(400, HORIZON, DIM))
    chunks[..., 6] = np.where(chunks[..., 6] > 0, 1.0, -1.0)
    act_tok = BinActionTokenizer(BinTokenizerConfig(num_bins=32, gripper_dims=(6,))).fit(chunks)
    text_tok = tiny_text_tokenizer()
    cfg = small_model_config(
        objective=objective,
        state_keys=("state", "object_state"),
        execute_horizon=4,
    )
    torch.manual_seed(seed)
    model = build_model(cfg, act_tok, text_tok, state_dim=STATE + OBJECT_STATE)
    stats = {"state": state_statistics(rng.normal(size=(100, STATE + OBJECT_STATE)) * 2 + 1)}
    model.save_pretrained(directory, act_tok, text_tok, stats, extra={"note": "test"})
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    return {obj: _save(root / obj, obj) for obj in ("dfm", "dd", "ar", "dfm_head")}


def _obs(rng, text="put the bowl on the stove"):
    return {"language": text, "state": rng.normal(size=STATE), "object_state": rng.normal(size=OBJECT_STATE)}


@pytest.mark.parametrize("objective", ["dfm", "dd", "ar", "dfm_head"])
def test_act_returns_actions_of_the_right_shape_and_range_and_replans(checkpoints, objective):
    agent = DFMPolicy.from_pretrained(checkpoints[objective], seed=0)
    low, high = agent.action_tokenizer.normalizer.low, agent.action_tokenizer.normalizer.high
    rng = np.random.default_rng(0)
    plans = []
    for _ in range(6):
        plans.append(agent.needs_plan)
        action = agent.act(_obs(rng))
        assert action.shape == (DIM,) and action.dtype == np.float32 and np.isfinite(action).all()
        assert (action >= low - 1e-5).all() and (action <= high + 1e-5).all()
        assert action[6] in (np.float32(low[6]), np.float32(high[6]))  # the gripper stays binary
    assert plans == [True, False, False, False, True, False]  # execute horizon 4 of a 6-step chunk
    info = agent.last_plan
    expected_calls = {"dfm": 16, "dfm_head": 16, "dd": 16, "ar": agent.action_tokenizer.num_slots}[objective]
    assert info.model_calls == expected_calls and info.prefix_calls == 1
    assert info.changed_per_step.shape == (1, expected_calls) and info.valid.shape == (1,)
    assert info.prefix_ms > 0 and info.refine_ms > 0
    agent.reset()
    assert agent.needs_plan


@pytest.mark.parametrize("objective", ["dfm", "dfm_head"])
def test_act_batch_equals_repeated_act_for_the_same_seeds(checkpoints, objective):
    rng = np.random.default_rng(5)
    episodes = [
        [_obs(rng, text) for _ in range(5)] for text in ("put the bowl on the stove", "turn on the stove")
    ]
    batch_agent = DFMPolicy.from_pretrained(checkpoints[objective], seed=3)
    batched = np.stack([batch_agent.act_batch([episodes[0][k], episodes[1][k]]) for k in range(5)])
    assert batch_agent.last_plan.env_indices == [0, 1]
    for env in range(2):
        single = DFMPolicy.from_pretrained(checkpoints[objective], seed=3 + env)
        alone = np.stack([single.act(episodes[env][k]) for k in range(5)])
        np.testing.assert_allclose(batched[:, env], alone, atol=1e-6)
    # seed_env re-seeds one env: env 1 re-seeded with 3 + 1 repeats its first action
    batch_agent.seed_env(1, 4)
    assert batch_agent.needs_plan_batch(2) == [batch_agent.needs_plan, True]
    np.testing.assert_allclose(
        batch_agent.act_batch([episodes[0][0], episodes[1][0]])[1], batched[0, 1], atol=1e-6
    )
    # the seed matters (DFM draws its start tokens and jumps at random) and a rollout repeats exactly
    again = DFMPolicy.from_pretrained(checkpoints[objective], seed=3)
    other = DFMPolicy.from_pretrained(checkpoints[objective], seed=99)
    first = [again.act(episodes[0][k]) for k in range(5)]
    np.testing.assert_array_equal(np.stack(first), batched[:, 0])
    assert not np.array_equal(np.stack([other.act(episodes[0][k]) for k in range(5)]), batched[:, 0])


def test_save_load_round_trip_gives_identical_actions(checkpoints, tmp_path):
    bundle = load_pretrained(checkpoints["dfm"])
    bundle.model.save_pretrained(
        tmp_path / "copy", bundle.action_tokenizer, bundle.text_tokenizer, bundle.norm_stats
    )
    again = load_pretrained(tmp_path / "copy")
    for (name, a), (_, b) in zip(
        bundle.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert again.norm_stats["state"] == bundle.norm_stats["state"] and again.extra == {}
    rng = np.random.default_rng(7)
    obs = [_obs(rng) for _ in range(3)]
    a1 = DFMPolicy(bundle, seed=1)
    a2 = DFMPolicy.from_pretrained(tmp_path / "copy", seed=1)
    np.testing.assert_array_equal(np.stack([a1.act(o) for o in obs]), np.stack([a2.act(o) for o in obs]))


def test_bad_observations_raise_errors_that_name_the_key(checkpoints):
    agent = DFMPolicy.from_pretrained(checkpoints["dd"])
    rng = np.random.default_rng(0)
    good = _obs(rng)
    cases = [
        ({k: v for k, v in good.items() if k != "language"}, r"\['language'\]: missing"),
        ({**good, "language": 3}, r"\['language'\]: expected a str"),
        ({**good, "language": "pick " * 40}, r"\['language'\]: instruction is \d+ tokens"),
        ({k: v for k, v in good.items() if k != "object_state"}, r"\['object_state'\]: missing"),
        ({**good, "state": np.zeros((2, 4))}, r"\['state'\]: expected a 1-D float vector"),
        ({**good, "language": ""}, r"obs\['language'\]: empty instruction"),
        ({**good, "language": "  "}, r"obs\['language'\]: empty instruction"),
        ({**good, "state": np.full(STATE, np.nan)}, r"\['state'\]: contains NaN"),
        ({**good, "object_state": np.r_[0.0, np.inf, 0.0, 0.0]}, r"\['object_state'\]: .*inf at index 1"),
        ({**good, "state": np.r_[np.zeros(STATE - 1), 1e30]}, r"\['state'\]\[7\]: 1e\+30 is no plausible"),
        ({**good, "state": np.zeros(STATE - 1)}, r"expected 12 numbers in total, got 11"),
    ]
    for obs, message in cases:
        with pytest.raises(ValueError, match=message):
            agent.act(obs)
    with pytest.raises(ValueError, match=r"obs\[1\]\[state\+object_state\]: expected 12"):
        agent.act_batch([good, {**good, "state": np.zeros(3)}])
    with pytest.raises(ValueError, match="decoder 'ar'"):
        DFMPolicy.from_pretrained(checkpoints["dfm"], decoder="ar")
    with pytest.raises(FileNotFoundError, match="config.json"):
        DFMPolicy.from_pretrained(checkpoints["dfm"] / "action_tokenizer")


def test_image_observations_are_checked_and_used(tmp_path):
    rng = np.random.default_rng(0)
    act_tok = BinActionTokenizer(BinTokenizerConfig(num_bins=16)).fit(rng.normal(size=(100, 4, 2)))
    text_tok = tiny_text_tokenizer()
    cfg = micro_model_config(
        image_views=("agentview", "wrist"),
        image_size=32,
        patch_size=8,
        objective="dd",
    )
    build_model(cfg, act_tok, text_tok).save_pretrained(tmp_path / "img", act_tok, text_tok)
    agent = DFMPolicy.from_pretrained(tmp_path / "img")
    assert agent.uses_images
    images = {v: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for v in ("agentview", "wrist")}
    assert agent.act({"language": "open the drawer", "images": images}).shape == (2,)
    assert not agent.needs_plan
    agent.act({"language": "open the drawer"})  # mid-chunk: observations are read only when planning
    agent.reset()
    with pytest.raises(ValueError, match=r"\['images'\]\['wrist'\]: missing"):
        agent.act({"language": "x", "images": {"agentview": images["agentview"]}})
    assert agent.needs_plan
    with pytest.raises(ValueError, match=r"\['images'\]\['wrist'\]: expected \(H, W, 3\) uint8"):
        agent.act({"language": "x", "images": {**images, "wrist": images["wrist"].astype(np.float32)}})


def test_dfm_decodes_with_the_path_the_checkpoint_was_trained_with(checkpoints, tmp_path):
    import json
    import shutil

    directory = shutil.copytree(checkpoints["dfm"], tmp_path / "c5")
    config = json.loads((directory / "config.json").read_text())
    config["extra"]["metric_path"] = {"distance": "value", "c": 5.0, "alpha": 0.5}
    (directory / "config.json").write_text(json.dumps(config))
    agent = DFMPolicy.from_pretrained(directory)
    assert (agent._path.c, agent._path.alpha) == (5.0, 0.5)
    value_path = agent.model.metric_path(agent.action_tokenizer, {"distance": "value"})
    assert torch.equal(agent._path.distance, value_path.distance)  # value-space, not embedding distances

    agent.set_schedule(c=1.0)  # a decoding ablation changes the schedule only
    assert (agent._path.c, agent._path.alpha) == (1.0, 0.5)
    assert torch.equal(agent._path.distance, value_path.distance)
    overridden = DFMPolicy.from_pretrained(directory, schedule=(3.0, 2.0))
    assert (overridden._path.c, overridden._path.alpha) == (3.0, 2.0)
    with pytest.raises(ValueError, match="schedule alpha: expected a positive number"):
        agent.set_schedule(alpha=0.0)
