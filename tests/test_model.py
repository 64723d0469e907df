"""The model: masks, the prefix KV cache, the adaptive cache, sizes, and overfitting with each decoder."""

import numpy as np
import pytest
import torch
from _models import small_model_config

from dfm_vla.policy import attention_mask as masks
from dfm_vla.policy.action_tokenizer import BinActionTokenizer, BinTokenizerConfig
from dfm_vla.policy.config import ModelConfig, get_config
from dfm_vla.policy.losses import ar_inputs, make_objective
from dfm_vla.policy.model import DFMVLA, build_model
from dfm_vla.policy.processor import PolicyProcessor
from dfm_vla.policy.samplers import ar_sample, dd_sample, dfm_sample
from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer

INSTRUCTIONS = [
    "put the bowl on the stove",
    "open the top drawer and put the bowl inside",
    "turn on the stove",
]


@pytest.fixture(scope="module")
def text_tok():
    return tiny_text_tokenizer()


def _tokenizer(horizon=4, dim=3, bins=32, seed=0):
    rng = np.random.default_rng(seed)
    return BinActionTokenizer(BinTokenizerConfig(num_bins=bins)).fit(rng.normal(size=(300, horizon, dim)))


def _model(text_tok, act_tok, views=(), **overrides):
    cfg = small_model_config(
        image_views=views,
        image_size=32,
        patch_size=8,
        **overrides,
    )
    torch.manual_seed(0)
    return build_model(cfg, act_tok, text_tok, state_dim=5).eval()


def _obs(rng, n, views=()):
    return [
        {
            "language": INSTRUCTIONS[i % len(INSTRUCTIONS)],
            "images": {v: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for v in views},
            "state": rng.normal(size=5),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("action_layers", [0, 1])
def test_prefix_cache_logits_equal_uncached_prefix_lm(text_tok, action_layers):
    act_tok = _tokenizer()
    model = _model(text_tok, act_tok, views=("front", "wrist"), num_action_layers=action_layers)
    rng = np.random.default_rng(1)
    prefix = PolicyProcessor(model.config, text_tok)(_obs(rng, 3, ("front", "wrist")))
    assert not bool(prefix.text_valid.all()), "instructions of different lengths must leave padding"
    denoiser = model.make_denoiser(prefix, cache="prefix")
    for step in range(3):  # several calls against one cache, as in decoding
        x = torch.randint(
            0, act_tok.vocab_size, (3, act_tok.num_slots), generator=torch.Generator().manual_seed(step)
        )
        t = torch.rand(3, generator=torch.Generator().manual_seed(10 + step))
        with torch.no_grad():
            full = model(prefix, x, t)
        cached = denoiser(x, t)
        torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert denoiser.num_calls == 3 and denoiser.state.prefix_calls == 1
    # a row decoded alone equals the same row in a padded batch
    with torch.no_grad():
        alone = model(prefix.select([1]), x[1:2], t[1:2])
    torch.testing.assert_close(alone, full[1:2], rtol=1e-5, atol=1e-5)


def test_prefix_lm_prefix_does_not_see_actions_but_bidirectional_does(text_tok):
    act_tok = _tokenizer()
    valid = torch.tensor([[True, True, False]])
    m = masks.full_mask(valid, 2, "prefix_lm")[0, 0]
    assert not m[:3, 3:].any() and m[3:, :2].all() and not m[3:, 2].any() and m[3:, 3:].all()
    assert masks.full_mask(valid, 2, "bidirectional")[0, 0, :2, 3:].all()
    causal = masks.full_mask(valid, 2, "causal_actions")[0, 0]
    assert causal[3, 3] and not causal[3, 4] and causal[4, 3]
    # a bidirectional model's prefix cache goes stale when the actions change: refuse the exact cache
    model = _model(text_tok, act_tok, attention="bidirectional")
    prefix = PolicyProcessor(model.config, text_tok)(_obs(np.random.default_rng(0), 1))
    with pytest.raises(ValueError, match="adaptive"):
        model.make_denoiser(prefix, cache="prefix")


def test_adaptive_cache_is_exact_when_refreshed_every_call_and_measures_its_drift(text_tok):
    act_tok = _tokenizer()
    model = _model(text_tok, act_tok, attention="bidirectional")
    prefix = PolicyProcessor(model.config, text_tok)(_obs(np.random.default_rng(2), 2))
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, 32, (2, act_tok.num_slots), generator=g) for _ in range(4)]
    ts = [torch.full((2,), v) for v in (0.1, 0.3, 0.5, 0.7)]
    exact = model.make_denoiser(prefix, cache="none")
    always = model.make_denoiser(prefix, cache="adaptive", refresh_every=1)
    for x, t in zip(xs, ts, strict=True):
        torch.testing.assert_close(always(x, t), exact(x, t), rtol=1e-5, atol=1e-5)
    assert always.adaptive.num_refreshes == 4
    stale = model.make_denoiser(
        prefix, cache="adaptive", refresh_every=100, refresh_fraction=1.0, measure_drift=True
    )
    for x, t in zip(xs, ts, strict=True):
        stale(x, t)
    summary = stale.adaptive.drift.summary()
    assert stale.adaptive.num_refreshes == 1 and summary["drift_calls"] == 3
    assert summary["drift_max_abs_logprob"] > 0  # the stale prefix really differs ...
    assert 0.0 <= summary["drift_mean_argmax_agreement"] <= 1.0  # ... and its effect is measured


def test_ar_stepper_matches_the_teacher_forced_causal_pass(text_tok):
    act_tok = _tokenizer()
    model = _model(text_tok, act_tok, objective="ar", num_action_layers=1)
    prefix = PolicyProcessor(model.config, text_tok)(_obs(np.random.default_rng(3), 2))
    target = torch.randint(0, 32, (2, act_tok.num_slots), generator=torch.Generator().manual_seed(0))
    inputs = ar_inputs(target, act_tok.boa_id)
    with torch.no_grad():
        full = model(prefix, inputs, None)
    stepper = model.ar_stepper(prefix)
    for i in range(act_tok.num_slots):
        torch.testing.assert_close(stepper.step(inputs[:, i]), full[:, i], rtol=1e-5, atol=1e-5)
    assert stepper.num_calls == act_tok.num_slots


def test_univla_8b_config_builds_on_meta_with_about_8b_parameters():
    config = get_config("univla-8b", action_vocab_size=1028, num_action_slots=64)
    with torch.device("meta"):
        model = DFMVLA(config)
    n = model.num_parameters()
    assert all(p.is_meta for p in model.parameters())
    assert 7.5e9 < n < 8.7e9, n  # 32 x 218M blocks + 756M shared vocabulary + 2 action layers
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (32, 4096, 32, 8)
    assert config.full_vocab_size == 184622 and config.rope_theta == 1e6 and config.num_action_layers == 2


def test_config_errors_name_the_field(text_tok):
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(attention="sideways")
    with pytest.raises(ValueError, match="unknown fields"):
        ModelConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="action_vocab_size"):
        DFMVLA(get_config("tiny", text_vocab_size=10))
    cfg = ModelConfig(objective="ar")
    assert cfg.attention == "causal_actions"


def _train(model, objective, prefix, x1, steps, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = objective.corrupt(x1, gen)
        loss = objective.loss(model(prefix, batch.x_t, batch.t), x1, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


@pytest.mark.parametrize("decoder", ["dfm", "dd", "ar"])
def test_tiny_model_overfits_one_batch_with_each_decoder(text_tok, decoder):
    torch.set_num_threads(1)
    act_tok = _tokenizer(horizon=4, dim=2, bins=16)
    model = _model(text_tok, act_tok, objective=decoder)
    rng = np.random.default_rng(4)
    prefix = PolicyProcessor(model.config, text_tok)(_obs(rng, 3))
    x1 = torch.as_tensor(act_tok.encode(rng.normal(size=(3, 4, 2))))
    if decoder == "dfm":
        path = model.metric_path(act_tok)
        objective = make_objective("dfm", path=path)
    elif decoder == "dd":
        objective = make_objective("dd", mask_id=act_tok.mask_id)
    else:
        objective = make_objective("ar", boa_id=act_tok.boa_id)
    _train(model, objective, prefix, x1, steps=250)
    with torch.no_grad():
        if decoder == "dfm":
            out = dfm_sample(
                model.make_denoiser(prefix),
                model.metric_path(act_tok),
                3,
                x1.shape[1],
                generator=torch.Generator().manual_seed(0),
            )
        elif decoder == "dd":
            out = dd_sample(model.make_denoiser(prefix), act_tok.mask_id, 3, x1.shape[1], steps=8)
        else:
            out = ar_sample(model.ar_stepper(prefix), 3, x1.shape[1], boa_id=act_tok.boa_id)
    accuracy = (out.tokens == x1).float().mean().item()
    assert accuracy >= 0.9, (decoder, accuracy)


def test_vq_image_tokens_go_through_the_shared_vocabulary(text_tok):
    """Full-scale image path: a (tiny, random) transformers Emu3VQVAE -> codes -> shared-table ids + eol."""
    from transformers.models.emu3.configuration_emu3 import Emu3VQVAEConfig
    from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

    from dfm_vla.policy.image_encoder import VQImageTokenizer

    vq_config = Emu3VQVAEConfig(
        codebook_size=64,
        embed_dim=4,
        latent_channels=4,
        base_channels=32,
        channel_multiplier=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        hidden_size=64,
        num_attention_heads=1,
    )
    torch.manual_seed(0)
    vqvae = Emu3VQVAE(vq_config)
    offset, eol = text_tok.vocab_size, text_tok.vocab_size + 64
    act_tok = _tokenizer()
    cfg = small_model_config(
        image_views=("front",),
        image_encoder="vq",
        image_size=32,
        vq_downsample=2,
        vq_token_offset=offset,
        vq_eol_token_id=eol,
        full_vocab_size=eol + 1,
    )
    model = build_model(cfg, act_tok, text_tok, state_dim=5).eval()
    assert cfg.image_tokens_per_view == 16 * 17
    processor = PolicyProcessor(model.config, text_tok, image_tokenizer=VQImageTokenizer(vqvae, model.config))
    prefix = processor(_obs(np.random.default_rng(0), 2, ("front",)))
    ids = prefix.image_tokens
    assert ids.shape == (2, 1, 16 * 17) and prefix.images is None
    grid = ids.view(2, 16, 17)
    assert (grid[..., -1] == eol).all() and (
        (grid[..., :-1] >= offset) & (grid[..., :-1] < offset + 64)
    ).all()
    x = torch.randint(0, act_tok.vocab_size, (2, act_tok.num_slots))
    t = torch.rand(2)
    with torch.no_grad():
        full = model(prefix, x, t)
    torch.testing.assert_close(model.make_denoiser(prefix)(x, t), full, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients(text_tok):
    act_tok = _tokenizer()
    model = _model(text_tok, act_tok, num_action_layers=1).train()
    prefix = PolicyProcessor(model.config, text_tok)(_obs(np.random.default_rng(6), 2))
    x = torch.randint(0, 32, (2, act_tok.num_slots), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.7])
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(prefix, x, t).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)
