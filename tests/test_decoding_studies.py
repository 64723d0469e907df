"""The tokenizer-ceiling and offline-decoding studies, end to end at toy size (real LIBERO-Goal episodes)."""

import json

import numpy as np
import pytest
from test_studies import TOY_CONFIG, _write_demos

from dfm_vla import cli
from dfm_vla.evaluation.policies import round_trip_action
from dfm_vla.policy.bin_tokenizer import BinActionTokenizer, BinTokenizerConfig
from dfm_vla.studies.offline_decoding import parse_setting
from dfm_vla.studies.tokenizer_ceiling import parse_variant


def test_an_action_through_the_round_trip_lands_on_a_bin_centre_within_half_a_bin():
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, size=(500, 8, 7))
    chunks[..., 6] = np.sign(chunks[..., 6])
    tok = BinActionTokenizer(BinTokenizerConfig(num_bins=16, gripper_dims=(6,), clip_percentile=0)).fit(
        chunks
    )
    action = np.array([0.3, -0.7, 0.05, 0.9, -0.2, 0.0, 1.0], dtype=np.float32)
    out = round_trip_action(tok, action)
    assert out.dtype == np.float32 and out[6] == 1.0
    half_bin = 0.5 * (tok.normalizer.high - tok.normalizer.low) / 16
    assert (np.abs(out - action)[:6] <= half_bin[:6] + 1e-6).all()
    np.testing.assert_array_equal(round_trip_action(tok, out), out)  # a bin centre maps to itself


def test_clip_percentile_sets_the_range_the_bins_cover():
    chunks = np.linspace(-1, 1, 8 * 7 * 1000).reshape(1000, 8, 7)
    clipped = BinActionTokenizer(BinTokenizerConfig(num_bins=64)).fit(chunks)
    full = BinActionTokenizer(BinTokenizerConfig(num_bins=64, clip_percentile=0)).fit(chunks)
    assert full.normalizer.high[0] == pytest.approx(chunks[..., 0].max())
    assert clipped.normalizer.high[0] < full.normalizer.high[0]
    with pytest.raises(ValueError, match="clip_percentile"):
        BinTokenizerConfig(clip_percentile=50)


def test_variant_and_setting_names_parse_and_bad_ones_are_refused():
    assert parse_variant("bins256-clip0") == {
        "name": "bins256-clip0",
        "num_bins": 256,
        "clip_percentile": 0.0,
    }
    assert parse_variant("raw") == {"name": "raw"}
    assert parse_setting("14+2@T0.25@v0.5") == {
        "name": "14+2@T0.25@v0.5",
        "decoder": "dfm",
        "steps": (14, 2),
        "temperature": 0.25,
        "val_time": 0.5,
    }
    assert parse_setting("2+14@warm0.8:3+1")["warm"] == (0.8, 3, 1)
    for bad in ("bins", "fast64"):
        with pytest.raises(Exception, match="bins<N>"):
            parse_variant(bad)
    with pytest.raises(Exception, match="@x"):
        parse_setting("14+2@x1")


def test_tokenizer_ceiling_runs_the_experts_through_each_tokenizer(tmp_path):
    demos, out = tmp_path / "demos.hdf5", tmp_path / "ceiling"
    _write_demos(demos)
    argv = ["study", "tokenizer-ceiling", "--data", str(demos), "--variants", "raw,bins16-clip0"]
    argv += ["--tasks", "0", "--episodes-per-task", "1", "--max-episode-steps", "6", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "tokenizer_ceiling.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["raw", "bins16-clip0"]
    assert all(r["episodes"] == 1 for r in result["rows"])
    raw, binned = result["rows"]
    assert raw["round_trip_mae"] == 0 and binned["round_trip_mae"] > 0
    saved = json.loads((out / "bins16-clip0/action_tokenizer/action_tokenizer.json").read_text())
    assert saved["config"]["num_bins"] == 16 and saved["config"]["clip_percentile"] == 0
    episodes = json.loads((out / "bins16-clip0/results.json").read_text())
    assert "through" in json.dumps(episodes["meta"])


def test_offline_decoding_scores_cold_and_warm_started_decoders(tmp_path):
    demos, config, policy = tmp_path / "demos.hdf5", tmp_path / "toy.yaml", tmp_path / "policy"
    _write_demos(demos, per_task=6)
    config.write_text(TOY_CONFIG + "model_overrides: {execute_horizon: 4}\n")
    assert cli.main(["train", "--config", str(config), "--data", str(demos), "--out", str(policy)]) == 0
    out = tmp_path / "offline"
    argv = ["study", "offline-decoding", "--policy", str(policy), "--settings", "3+0,3+1@warm0.5:1+1,0+2"]
    argv += ["--contexts", "6", "--seeds", "2", "--batch", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    rows = {r["setting"]: r for r in json.loads((out / "offline_decoding.json").read_text())["rows"]}
    assert [rows[s]["calls"] for s in ("3+0", "3+1@warm0.5:1+1", "0+2")] == [3, 2, 2]
    assert rows["3+0"]["spread"] > 0  # stochastic jumps and no greedy step: the seeds disagree
    for r in rows.values():
        assert 0 <= r["acc"] <= 1 and r["l1"] >= 0 and 0 <= r["grip"] <= 1
