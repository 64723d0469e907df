"""Refinement from the previous plan (warm start), the sharpened posterior and the greedy steps' time."""

import numpy as np
import pytest
import torch
from _models import small_model_config
from test_agent import _obs, _save
from test_samplers import VOCAB, DiracOracle, bins_path

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.policy.checkpoint import load_pretrained
from dfm_vla.policy.config import ModelConfig
from dfm_vla.policy.samplers import ar_sample, dd_sample, dfm_sample, uniform_time_grid
from dfm_vla.policy.warm_start import shifted_plan, warm_start_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shifted_plan_puts_unexecuted_steps_first_and_repeats_the_last():
    # 2 envs, chunks of 4 steps x 2 dims; token = 10 * step + dim (+ 100 for env 1)
    steps = torch.arange(4)[:, None] * 10 + torch.arange(2)[None, :]
    previous = torch.stack([steps.flatten(), steps.flatten() + 100])
    guess = shifted_plan(previous, action_dim=2, executed=3).reshape(2, 4, 2)
    assert guess[0].tolist() == [[30, 31], [30, 31], [30, 31], [30, 31]]
    guess = shifted_plan(previous, action_dim=2, executed=1).reshape(2, 4, 2)
    assert guess[1].tolist() == [[110, 111], [120, 121], [130, 131], [130, 131]]
    with pytest.raises(ValueError, match="executed"):
        shifted_plan(previous, action_dim=2, executed=4)


def test_warm_start_from_t0_zero_equals_the_cold_decode_for_a_fixed_seed():
    path = bins_path(c=3.0)
    x1 = torch.randint(0, 16, (1, 8), generator=torch.Generator().manual_seed(1))
    guess = torch.full((1, 8), 3)
    cold_gen, warm_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    cold = dfm_sample(DiracOracle(x1), path, 1, 8, steps_fine=6, steps_val=1, generator=cold_gen)
    x0 = warm_start_state(path, guess, 0.0, warm_gen)
    warm = dfm_sample(
        DiracOracle(x1),
        path,
        1,
        8,
        x0=x0,
        time_grid=uniform_time_grid(6, 0.0),
        steps_val=1,
        generator=warm_gen,
    )
    assert torch.equal(cold.tokens, warm.tokens)
    assert torch.equal(cold.changed_per_step, warm.changed_per_step)


def test_warm_start_state_stays_near_the_guess_late_and_spreads_early():
    path = bins_path(c=3.0)
    guess = torch.full((4000, 1), 8)
    gen = torch.Generator().manual_seed(0)
    late = (warm_start_state(path, guess, 0.95, gen) - 8).abs().float().mean()
    early = (warm_start_state(path, guess, 0.05, gen) - 8).abs().float().mean()
    assert late < 0.5 < 2.0 < early


def test_every_decoder_returns_the_target_of_a_point_mass_posterior():
    path = bins_path(c=3.0)
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randint(0, 16, (32, 12), generator=gen)
    decodes = {
        "dfm 14+2": dfm_sample(DiracOracle(x1), path, 32, 12, generator=gen),
        "dfm 2+14": dfm_sample(DiracOracle(x1), path, 32, 12, steps_fine=2, steps_val=14, generator=gen),
        "dfm warm t0=0.5, 3+1": dfm_sample(
            DiracOracle(x1),
            path,
            32,
            12,
            x0=warm_start_state(path, torch.full((32, 12), 5), 0.5, gen),
            time_grid=uniform_time_grid(3, 0.5),
            steps_val=1,
            generator=gen,
        ),
        "dfm sharpened x1 (T = 0.25)": dfm_sample(
            DiracOracle(x1), path, 32, 12, temperature=0.25, t_val=0.5, generator=gen
        ),
        "dd": dd_sample(DiracOracle(x1, vocab=VOCAB), 19, 32, 12, steps=4),
    }

    class Stepper:
        def __init__(self):
            self.i = 0

        def step(self, prev):
            logits = torch.nn.functional.one_hot(x1[:, self.i], VOCAB).float() * 30
            self.i += 1
            return logits

    decodes["ar"] = ar_sample(Stepper(), 32, 12, boa_id=17)
    for name, result in decodes.items():
        assert torch.equal(result.tokens, x1), name


def test_decoding_fields_round_trip_through_save_and_load_and_are_checked(tmp_path):
    directory = _save(tmp_path / "dfm", "dfm")
    bundle = load_pretrained(directory)
    fields = dict(
        val_time=0.5, posterior_temperature=0.25, warm_start=True, warm_start_t0=0.6, warm_start_steps_fine=2
    )
    bundle.model.config = bundle.model.config.replace(**fields)
    bundle.model.save_pretrained(
        tmp_path / "copy", bundle.action_tokenizer, bundle.text_tokenizer, bundle.norm_stats
    )
    again = load_pretrained(tmp_path / "copy").model.config
    assert {k: getattr(again, k) for k in fields} == fields
    with pytest.raises(ValueError, match="warm_start_t0"):
        small_model_config(warm_start_t0=1.0)
    with pytest.raises(ValueError, match="posterior_temperature"):
        small_model_config(posterior_temperature=0.0)
    with pytest.raises(ValueError, match="val_time"):
        ModelConfig(val_time=1.5)


def test_agent_warm_starts_after_the_first_plan_and_off_reproduces_cold_decoding(tmp_path):
    directory = _save(tmp_path / "dfm", "dfm")
    rng = np.random.default_rng(0)
    episode = [_obs(rng) for _ in range(12)]
    cold = DFMPolicy.from_pretrained(directory, seed=2)
    off = DFMPolicy.from_pretrained(directory, seed=2, warm_start=False)
    np.testing.assert_array_equal(
        np.stack([cold.act(o) for o in episode]), np.stack([off.act(o) for o in episode])
    )
    warm = DFMPolicy.from_pretrained(directory, seed=2, warm_start=True)
    calls = []
    for o in episode:
        planned = warm.needs_plan
        warm.act(o)
        if planned:
            calls.append(warm.last_plan.model_calls)
    cfg = warm.config
    assert calls == [16] + [cfg.warm_start_steps_fine + cfg.warm_start_steps_val] * 2
    warm.reset()  # a new episode starts cold again
    warm.act(episode[0])
    assert warm.last_plan.model_calls == 16
    # batched warm decoding equals per-env decoding with the matching seeds
    batch = DFMPolicy.from_pretrained(directory, seed=2, warm_start=True)
    other = [_obs(rng, "turn on the stove") for _ in range(12)]
    batched = np.stack([batch.act_batch([a, b]) for a, b in zip(episode, other, strict=True)])
    single = DFMPolicy.from_pretrained(directory, seed=3, warm_start=True)
    np.testing.assert_allclose(batched[:, 1], np.stack([single.act(o) for o in other]), atol=1e-6)


def test_warm_start_needs_a_bins_tokenizer_and_the_dfm_decoder(tmp_path):
    directory = _save(tmp_path / "dd", "dd")
    with pytest.raises(ValueError, match="warm_start"):
        DFMPolicy.from_pretrained(directory, warm_start=True)
