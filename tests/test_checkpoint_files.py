"""Broken copies of a shipped policy fail to load with an error that names the file and the bad field.

Each case copies ``checkpoints/libero_goal_tiny_dfm`` into tmp_path, breaks one file the way a bad
download, a half-finished copy or a hand edit would, and loads it as a user does.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.policy.checkpoint import load_pretrained

sys.path.insert(0, str(Path(__file__).parent))
from _train_workers import small_config, write_demos  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "libero_goal_tiny_dfm"


@pytest.fixture
def policy(tmp_path):
    """A fresh copy of the shipped LIBERO-Goal policy (weights, config, tokenizers, statistics)."""
    return Path(
        shutil.copytree(SHIPPED, tmp_path / "policy", ignore=shutil.ignore_patterns("eval*", "*.png"))
    )


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _nan_everywhere(node):
    if isinstance(node, dict):
        return {k: _nan_everywhere(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_nan_everywhere(v) for v in node]
    return float("nan") if isinstance(node, float | int) and not isinstance(node, bool) else node


def test_the_intact_copy_loads_and_acts(policy):
    agent = DFMPolicy.from_pretrained(policy, seed=0)
    obs = {"language": "open the top drawer of the cabinet", "state": [0.0] * 8, "object_state": [0.0] * 58}
    assert agent.act(obs).shape == (7,)


# ---- normalization.json ----------------------------------------------------------------------------
def test_statistics_that_are_all_nan_are_rejected(policy):
    path = policy / "normalization.json"
    path.write_text(json.dumps(_nan_everywhere(json.loads(path.read_text()))))
    with pytest.raises(
        ValueError, match=r"normalization\.json: 'state\.mean\[0\]' is nan, expected a finite"
    ):
        DFMPolicy.from_pretrained(policy)


def test_statistics_of_the_wrong_length_are_rejected(policy):
    _edit_json(policy / "normalization.json", lambda d: d["state"]["std"].pop())
    with pytest.raises(ValueError, match=r"normalization\.json: 'state\.std' expected 66 numbers, got 65"):
        load_pretrained(policy)


def test_missing_statistics_are_refused_for_a_model_that_reads_state(policy):
    (policy / "normalization.json").unlink()  # it would otherwise see unscaled states and act on them
    with pytest.raises(FileNotFoundError, match=r"normalization\.json: missing; the model reads a 66-d"):
        DFMPolicy.from_pretrained(policy)


def test_statistics_without_their_state_block_are_refused(policy):
    _edit_json(policy / "normalization.json", lambda d: d.pop("state"))
    with pytest.raises(ValueError, match=r"normalization\.json.*'state'"):
        load_pretrained(policy)


# ---- model.safetensors -----------------------------------------------------------------------------
def test_a_weight_holding_nan_is_named(policy):
    path = policy / "model.safetensors"
    tensors = load_file(path)
    tensors["action_head.weight"][3, 5] = float("nan")
    tensors["action_head.weight"][0, 0] = float("inf")
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"tensor 'action_head\.weight' holds 2 NaN or inf value\(s\)"):
        DFMPolicy.from_pretrained(policy)


def test_truncated_weights_are_called_corrupt_with_their_size(policy):
    path = policy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated .*\(100 bytes\)"):
        DFMPolicy.from_pretrained(policy)


def test_weights_cut_in_the_middle_are_called_corrupt(policy):
    path = policy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated"):
        load_pretrained(policy)


def test_a_weight_of_the_wrong_shape_is_named_with_both_shapes(policy):
    path = policy / "model.safetensors"
    tensors = load_file(path)
    tensors["action_head.weight"] = torch.zeros(10, 192)
    save_file(tensors, path)
    with pytest.raises(
        ValueError, match=r"tensor 'action_head\.weight' has shape \(10, 192\), .* expects \(68, 192\)"
    ):
        load_pretrained(policy)


def test_a_missing_weight_is_named(policy):
    path = policy / "model.safetensors"
    tensors = load_file(path)
    del tensors["action_head.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'action_head\.weight' .* is missing"):
        load_pretrained(policy)


# ---- config.json -----------------------------------------------------------------------------------
def _truncate(path):
    path.write_text(path.read_text()[:50])


CONFIG_CASES = {
    "invalid JSON": (_truncate, r"config\.json: corrupt or truncated \(50 bytes\): invalid JSON"),
    "unknown format": (lambda p: _edit_json(p, lambda d: d.update(format="hf")), r"'format' is 'hf'"),
    "unknown version": (
        lambda p: _edit_json(p, lambda d: d.update(version=2)),
        r"'version' is 2, expected 1",
    ),
    "wrong field type": (
        lambda p: _edit_json(p, lambda d: d["model"].update(hidden_size="192")),
        r"config\.json: 'model\.hidden_size' expected int, got str '192'",
    ),
    "unknown field": (
        lambda p: _edit_json(p, lambda d: d["model"].update(hiden_size=192)),
        r"config\.json: 'model': model config: unknown fields \['hiden_size'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_broken_config_is_rejected_by_name(policy, case):
    breaks, message = CONFIG_CASES[case]
    breaks(policy / "config.json")
    with pytest.raises(ValueError, match=message):
        load_pretrained(policy)


# ---- action_tokenizer/action_tokenizer.json --------------------------------------------------------
ACTION_CASES = {
    "invalid JSON": (_truncate, r"action_tokenizer\.json: corrupt or truncated \(50 bytes\)"),
    "NaN bound": (
        lambda p: _edit_json(p, lambda d: d["normalizer"]["low"].__setitem__(2, float("nan"))),
        r"action_tokenizer\.json: 'normalizer\.low\[2\]' is nan",
    ),
    "wrong field type": (
        lambda p: _edit_json(p, lambda d: d.update(num_slots="56")),
        r"action_tokenizer\.json: 'num_slots' expected int, got str",
    ),
    "sizes of another tokenizer": (
        lambda p: _edit_json(p, lambda d: d.update(num_action_tokens=32, config={"num_bins": 32})),
        r"action_tokenizer\.json: gives action_vocab_size 36, but .*config\.json says 'model\.action_vocab",
    ),
}


@pytest.mark.parametrize("case", sorted(ACTION_CASES))
def test_a_broken_action_tokenizer_is_rejected_by_name(policy, case):
    breaks, message = ACTION_CASES[case]
    breaks(policy / "action_tokenizer" / "action_tokenizer.json")
    with pytest.raises(ValueError, match=message):
        load_pretrained(policy)


# ---- text_tokenizer/ -------------------------------------------------------------------------------
def _vocab_line(folder, line):
    path = folder / "text.tiktoken"
    lines = path.read_text().splitlines()
    lines[3] = line
    path.write_text("\n".join(lines) + "\n")


TEXT_CASES = {
    "invalid JSON": (
        lambda f: _truncate(f / "text_tokenizer.json"),
        r"text_tokenizer\.json: corrupt or truncated \(50 bytes\)",
    ),
    "wrong field type": (
        lambda f: _edit_json(f / "text_tokenizer.json", lambda d: d.update(special_tokens=["<|pad|>"])),
        r"text_tokenizer\.json: 'special_tokens' expected dict, got list",
    ),
    "special id of a regular token": (
        lambda f: _edit_json(f / "text_tokenizer.json", lambda d: d["special_tokens"].update({"<|pad|>": 3})),
        r"text_tokenizer\.json: 'special_tokens' reuse id 3",
    ),
    "garbled vocabulary line": (
        lambda f: _vocab_line(f, "QQ=="),
        r"text\.tiktoken:4: expected 'base64token rank'",
    ),
    "repeated vocabulary token": (
        lambda f: _vocab_line(f, "AA== 3"),
        r"text\.tiktoken:4: token repeated or rank negative",
    ),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_a_broken_text_tokenizer_is_rejected_by_name(policy, case):
    breaks, message = TEXT_CASES[case]
    breaks(policy / "text_tokenizer")
    with pytest.raises(ValueError, match=message):
        load_pretrained(policy)


# ---- training: warm_start and --resume -------------------------------------------------------------
@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return write_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5")


def test_warm_start_from_truncated_weights_names_the_file(policy, demos, tmp_path):
    from dfm_vla.train.loop import train

    weights = policy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cfg = small_config(demos, tmp_path / "run", max_steps=1, warm_start=str(policy))
    with pytest.raises(ValueError, match=r"warm_start: .*model\.safetensors: corrupt or truncated"):
        train(cfg, progress=False)


def test_resume_from_a_truncated_or_unreadable_checkpoint_names_the_file(demos, tmp_path):
    from dfm_vla.train.loop import train

    cfg = small_config(demos, tmp_path / "run", max_steps=2, save_every=2)
    train(cfg, progress=False)
    step = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    step.write_bytes(step.read_bytes()[:100])
    cfg.max_steps = 4
    with pytest.raises(
        ValueError, match=r"step_00000002\.pt: corrupt or truncated training checkpoint \(100"
    ):
        train(cfg, resume=True, progress=False)
    (step.parent / "latest.json").write_text('{"step": 2, "fi')
    with pytest.raises(ValueError, match=r"latest\.json: corrupt or truncated"):
        train(cfg, resume=True, progress=False)


def test_resume_into_a_model_of_another_shape_names_the_tensor(tmp_path):
    from dfm_vla.train.checkpointing import load_checkpoint, save_checkpoint

    saved = torch.nn.Linear(3, 4)
    save_checkpoint(tmp_path, 1, saved, torch.optim.AdamW(saved.parameters()), None, {"epoch": 0})
    other = torch.nn.Linear(3, 5)
    with pytest.raises(
        ValueError, match=r"step_00000001\.pt: tensor 'weight' has shape \(4, 3\), .*\(5, 3\)"
    ):
        load_checkpoint(
            tmp_path / "checkpoints" / "step_00000001.pt", other, torch.optim.AdamW(other.parameters()), None
        )
