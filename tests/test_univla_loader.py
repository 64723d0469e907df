"""The UniVLA/Emu3 loader on a tiny checkpoint written here in Hugging Face layout by transformers itself."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dfm_vla.policy import attention_mask as masks
from dfm_vla.policy.action_tokenizer import BinActionTokenizer, BinTokenizerConfig
from dfm_vla.policy.model import build_model
from dfm_vla.policy.univla_loader import (
    UniVLAActionMapping,
    load_univla_weights,
    univla_model_config,
)

VOCAB, LAST, PAD, BOA, EOA = 300, 250, 251, 290, 291


@pytest.fixture(scope="module")
def univla_dir(tmp_path_factory):
    """An Emu3ForCausalLM saved sharded, plus a shard with UniVLA's action sub-module and its extras."""
    from transformers import Emu3ForCausalLM
    from transformers.models.emu3.configuration_emu3 import Emu3TextConfig

    directory = tmp_path_factory.mktemp("univla")
    hf_config = Emu3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=BOA,
        eos_token_id=EOA,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    hf_model = Emu3ForCausalLM(hf_config).eval()
    hf_model.save_pretrained(directory, max_shard_size="100KB")
    # UniVLA's Emu3MoE adds a 2-layer action sub-module and continuous-action parts to the same layout.
    layer_sd = hf_model.model.layers[0].state_dict()
    extra = {
        f"action_layers.{i}.{k}": v.clone() + 0.01 * (i + 1) for i in range(2) for k, v in layer_sd.items()
    }
    extra["action_projector.weight"] = torch.randn(64, 7)
    save_file({k: v.contiguous() for k, v in extra.items()}, str(directory / "model-extra.safetensors"))
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({k: "model-extra.safetensors" for k in extra})
    config = json.loads((directory / "config.json").read_text())
    config.update(action_experts=True, action_config={"num_hidden_layers": 2})
    (directory / "config.json").write_text(json.dumps(config))
    index_path.write_text(json.dumps(index))
    return directory, hf_model


def _action_tokenizer():
    rng = np.random.default_rng(0)
    return BinActionTokenizer(BinTokenizerConfig(num_bins=32)).fit(rng.normal(size=(100, 4, 2)))


def test_loader_maps_a_sharded_emu3_checkpoint_onto_our_model(univla_dir):
    directory, hf_model = univla_dir
    assert len(list(directory.glob("model-0000*-of-*.safetensors"))) > 1  # really sharded
    act_tok = _action_tokenizer()
    config = univla_model_config(directory, image_views=(), state_dim=3, max_text_tokens=16)
    assert (config.num_layers, config.hidden_size, config.num_action_layers, config.full_vocab_size) == (
        2,
        64,
        2,
        VOCAB,
    )
    model = build_model(config, act_tok).eval()
    mapping = UniVLAActionMapping(last_vocab_idx=LAST, pad_token_id=PAD, boa_token_id=BOA, eoa_token_id=EOA)
    report = load_univla_weights(model, directory, act_tok, mapping)

    assert report.unexpected == ["action_projector.weight"]
    assert "time_embed.mlp.0.weight" in report.missing and "state_encoder.mlp.0.weight" in report.missing
    assert "action_layers.norm.weight" in report.missing
    assert not any(name.startswith(("backbone.", "embed_tokens")) for name in report.missing)
    assert "action_projector.weight" in report.summary()

    emb, head = hf_model.model.embed_tokens.weight, hf_model.lm_head.weight
    torch.testing.assert_close(model.embed_tokens.weight, emb)
    for k in (0, 5, act_tok.num_action_tokens - 1):  # BPE/bin token k is vocabulary id LAST - k
        torch.testing.assert_close(model.action_embed.weight[k], emb[LAST - k])
        torch.testing.assert_close(model.action_head.weight[k], head[LAST - k])
    torch.testing.assert_close(model.action_embed.weight[act_tok.boa_id], emb[BOA])
    torch.testing.assert_close(model.action_embed.weight[act_tok.eoa_id], emb[EOA])
    # without the tokenizer, the layout follows from the model's action vocabulary (K regular + 4 specials)
    again = build_model(config, act_tok)
    assert "action_projector.weight" in str(load_univla_weights(again, directory, mapping=mapping))
    mapped = act_tok.mask_id  # every id before mask has a vocabulary row; mask keeps its fresh output row
    torch.testing.assert_close(again.action_head.weight[:mapped], model.action_head.weight[:mapped])
    torch.testing.assert_close(again.action_embed.weight, model.action_embed.weight)
    torch.testing.assert_close(
        model.action_embed.weight[mapped], model.action_embed.weight[: act_tok.pad_id].mean(0)
    )

    # the loaded blocks compute what transformers' Emu3 computes, given the same causal pattern
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf_model.model(input_ids=ids).last_hidden_state
        positions = torch.arange(9)[None].expand(2, 9)
        causal = masks.full_mask(torch.ones(2, 0, dtype=torch.bool), 9, "causal_actions")
        ours = model.backbone(model.embed_tokens(ids), positions, causal)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_loader_refuses_a_wrong_checkpoint_with_a_readable_message(univla_dir, tmp_path):
    directory, _ = univla_dir
    act_tok = _action_tokenizer()
    wrong = build_model(
        univla_model_config(
            directory, hidden_size=32, num_heads=4, num_kv_heads=2, image_views=(), max_text_tokens=16
        ),
        act_tok,
    )
    with pytest.raises(ValueError, match="hidden_size: checkpoint 64, model 32"):
        load_univla_weights(wrong, directory, act_tok)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_univla_weights(wrong, tmp_path, act_tok)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    (broken / "model.safetensors.index.json").write_text(
        (directory / "model.safetensors.index.json").read_text()
    )
    model = build_model(univla_model_config(directory, image_views=(), max_text_tokens=16), act_tok)
    with pytest.raises(FileNotFoundError, match="shard files named in the index are missing"):
        load_univla_weights(model, broken, act_tok)


def test_action_mapping_follows_univla_convention():
    act_tok = _action_tokenizer()
    ids = UniVLAActionMapping().vocab_ids(act_tok)
    assert ids[0] == 151642 and ids[31] == 151642 - 31
    assert ids[act_tok.boa_id] == 151844 and ids[act_tok.eoa_id] == 151845 and ids[act_tok.pad_id] == 151643
    assert ids[act_tok.mask_id] is None
