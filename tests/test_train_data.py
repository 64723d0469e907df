"""Chunk data set, episode splits, data fraction, sampler positions and the training config."""

import numpy as np
import pytest

from dfm_vla.policy.bin_tokenizer import BinActionTokenizer
from dfm_vla.train.config import SCALE_DEFAULTS, TrainConfig, load_config, parse_overrides
from dfm_vla.train.dataset import ChunkDataset, EpochSampler, chunk_actions, split_episodes
from dfm_vla.train.readers import Episode


def _episodes(n_per_task=(10, 6), length=12, seed=0):
    rng = np.random.default_rng(seed)
    episodes = []
    for task, n in enumerate(n_per_task):
        for i in range(n):
            actions = rng.uniform(-1, 1, (length + i, 3)).astype(np.float32)
            obs = {
                "state": rng.normal(size=(length + i, 4)).astype(np.float32),
                "extra": np.ones((length + i, 2)),
            }
            episodes.append(Episode(actions, obs, f"task {task}", task, f"t{task}e{i}"))
    return episodes


def test_chunks_pad_by_repeating_the_last_action_and_mask_the_padding():
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    chunk, mask = chunk_actions(actions, 3, horizon=4)
    np.testing.assert_array_equal(chunk, [[6, 7], [8, 9], [8, 9], [8, 9]])
    np.testing.assert_array_equal(mask, [True, True, False, False])
    chunk, mask = chunk_actions(actions, 0, horizon=4)
    np.testing.assert_array_equal(chunk, actions[:4])
    assert mask.all()


def test_split_is_deterministic_per_task_and_fractions_are_nested_whole_episodes():
    episodes = _episodes()
    a = split_episodes(episodes, val_fraction=0.2, data_fraction=1.0, seed=3)
    b = split_episodes(episodes, val_fraction=0.2, data_fraction=1.0, seed=3)
    assert a == b
    assert not set(a.train) & set(a.val)
    assert sorted(a.train + a.val) == list(range(len(episodes)))
    # Every task is represented in validation (2 of 10, 1 of 6).
    assert sorted(episodes[i].task_index for i in a.val) == [0, 0, 1]
    half = split_episodes(episodes, 0.2, 0.5, seed=3)
    tenth = split_episodes(episodes, 0.2, 0.1, seed=3)
    assert half.val == a.val == tenth.val  # the same held-out episodes for every fraction
    assert set(tenth.train) <= set(half.train) <= set(a.train)
    assert len(half.train) == 4 + 3 and len(tenth.train) == 1 + 1  # ceil per task, at least one
    other_seed = split_episodes(episodes, 0.2, 1.0, seed=4)
    assert other_seed.val != a.val
    with pytest.raises(ValueError, match="data_fraction: expected a number in \\(0, 1\\]"):
        split_episodes(episodes, 0.1, 0.0)


def test_dataset_stacks_obs_and_tokenizes_with_a_slot_mask():
    episodes = _episodes((3,), length=5)
    ds = ChunkDataset(episodes, horizon=4, state_keys=["state", "extra"])
    assert len(ds) == 5 + 6 + 7
    assert ds.state_dim == 6
    tok = ds.fit_tokenizer(BinActionTokenizer(num_bins=16))
    ds.attach_tokenizer(tok)
    batch = ds.batch([4, 5])  # last step of episode 0, first of episode 1
    assert batch["actions"].shape == (2, 4, 3)
    assert batch["action_tokens"].shape == (2, 12)
    # Last step of a 5-step episode: one real step, three padded, each padded step masks its 3 slots.
    np.testing.assert_array_equal(batch["slot_mask"][0], [True] * 3 + [False] * 9)
    assert batch["slot_mask"][1].all()
    np.testing.assert_array_equal(batch["action_tokens"][0], tok.encode(batch["actions"][0]))
    np.testing.assert_allclose(batch["state"][1], np.concatenate([episodes[1].obs["state"][0], [1, 1]]))
    assert batch["language"] == ["task 0", "task 0"]
    obs = ds.observation(5)
    assert set(obs) == {"language", "state"} and obs["state"].shape == (6,)
    with pytest.raises(ValueError, match=r"obs\['missing'\] missing"):
        ChunkDataset(episodes, horizon=2, state_keys=["missing"])


def test_sampler_resumes_at_the_same_position_and_shards_ranks():
    full = EpochSampler(50, batch_size=8, seed=1)
    expected = [full.next_indices() for _ in range(20)]  # crosses several epochs
    first = EpochSampler(50, batch_size=8, seed=1)
    got = [first.next_indices() for _ in range(7)]
    resumed = EpochSampler(50, batch_size=8, seed=1)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_indices() for _ in range(13)]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    r0, r1 = (
        EpochSampler(50, 4, seed=1, rank=0, world_size=2),
        EpochSampler(50, 4, seed=1, rank=1, world_size=2),
    )
    both = np.concatenate([r0.next_indices(), r1.next_indices()])
    np.testing.assert_array_equal(np.sort(both), np.sort(expected[0]))


def test_config_precedence_scale_defaults_then_file_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny\nlr: 0.002\nhorizon: 10\nstate_keys: [state, object_state]\n")
    cfg = load_config(path, parse_overrides(["horizon=12", "betas=[0.8, 0.9]", "max-minutes=1.5"]))
    assert cfg.lr == 0.002  # file over scale default
    assert cfg.horizon == 12 and cfg.betas == [0.8, 0.9] and cfg.max_minutes == 1.5  # command line over file
    assert cfg.grad_accum == SCALE_DEFAULTS["tiny"]["grad_accum"]  # scale default over dataclass
    assert cfg.state_keys == ["state", "object_state"]
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    paper = TrainConfig()  # the paper's recipe for the large model
    assert (paper.lr, paper.betas, paper.eps, paper.weight_decay) == (8e-5, [0.9, 0.95], 1e-6, 0.1)
    assert (paper.warmup_steps, paper.grad_clip, paper.grad_accum) == (50, 5.0, 4)
    with pytest.raises(ValueError, match="TrainConfig.horizon: expected int, got 'ten'"):
        load_config(None, {"horizon": "ten"})
    with pytest.raises(ValueError, match="unknown TrainConfig field 'learning_rate'"):
        load_config(None, {"learning_rate": 1})
    with pytest.raises(ValueError, match="TrainConfig.objective: expected one of"):
        load_config(None, {"objective": "mse"})


def test_lr_schedule_warms_up_then_follows_the_cosine_or_the_wall_clock():
    from dfm_vla.train.loop import lr_lambda

    cfg = TrainConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    clock = {"step": 0.0}
    g = lr_lambda(cfg, clock=lambda: clock["step"])
    clock["step"] = 110.0  # the wall-clock budget is spent: the floor, whatever the step count
    assert g(20) == pytest.approx(0.1)
    assert g(5) == pytest.approx(0.6)  # warm-up still counts optimizer steps


def test_effective_batch_is_computed_and_grad_accum_derived_from_a_target():
    from dfm_vla.train.distributed import effective_batch, resolve_grad_accum

    assert effective_batch(8, 4, 8) == 256  # the paper: 8 per GPU x 4 accumulation x 8 GPUs
    assert resolve_grad_accum(8, 1, 8, effective_batch_size=256) == 4
    assert resolve_grad_accum(8, 3, 2, effective_batch_size=0) == 3
    with pytest.raises(ValueError, match="effective_batch_size: 100 is not a multiple of batch_size 8"):
        resolve_grad_accum(8, 1, 2, effective_batch_size=100)
