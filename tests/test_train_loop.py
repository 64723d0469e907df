"""Training loop: each objective learns, the output loads as a policy, DDP and kill-and-resume are exact."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dfm_vla.train.loop import PrefixBuilder, train

sys.path.insert(0, str(Path(__file__).parent))
from _train_workers import model_state, small_config, write_demos  # noqa: E402

WORKER = Path(__file__).parent / "_train_workers.py"


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return write_demos(tmp_path_factory.mktemp("demos") / "demos.hdf5")


@pytest.mark.parametrize("objective", ["dfm", "dfm_head", "dd", "ar"])
def test_each_objective_lowers_validation_loss(objective, demos, tmp_path):
    cfg = small_config(demos, tmp_path / objective, objective=objective, max_steps=80, eval_at_start=True)
    result = train(cfg, progress=False)
    val = [v for _, v in result.history["val/loss"]]
    assert len(val) == 2  # step 0 and step 80
    assert val[-1] < 0.92 * val[0], f"{objective}: validation loss {val[0]:.3f} -> {val[-1]:.3f}"
    assert 0.0 <= result.val_token_accuracy <= 1.0
    metrics = json.loads((tmp_path / objective / "metrics.json").read_text())
    assert metrics["steps"] == 80 and metrics["final"]["val/loss"] == pytest.approx(val[-1])


def test_output_folder_is_a_loadable_policy_with_curves_and_config(demos, tmp_path):
    from dfm_vla.agents.dfm_policy import DFMPolicy
    from dfm_vla.train.config import load_config

    out = tmp_path / "run"
    cfg = small_config(demos, out, max_steps=12, eval_every=6, save_every=6, log_every=2, tensorboard=True)
    train(cfg, progress=False)
    for name in ("config.json", "model.safetensors", "curves.png", "train_config.yaml", "run_summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*.pt")) == [
        "step_00000006.pt",
        "step_00000012.pt",
    ]
    assert load_config(out / "train_config.yaml") == cfg
    agent = DFMPolicy.from_pretrained(out, seed=0)
    action = agent.act({"language": "lift the cup", "state": np.zeros(4, np.float32)})
    assert action.shape == (4,) and np.isfinite(action).all()
    # The saved normalisation is the training split's, and the loop's fast prefix path builds exactly
    # what the policy's processor builds from observation dicts.
    from dfm_vla.train.loop import load_training_data

    data = load_training_data(cfg)
    norm = json.loads((out / "normalization.json").read_text())
    np.testing.assert_allclose(norm["state"]["mean"], data.train.states.mean(0), rtol=1e-5, atol=1e-6)
    rows = [0, 5, len(data.train) - 1]
    fast = PrefixBuilder(agent.processor)(data.train.batch(rows))
    slow = agent.processor([data.train.observation(i) for i in rows])
    torch.testing.assert_close(fast.state, slow.state)
    assert torch.equal(fast.text_ids, slow.text_ids) and torch.equal(fast.text_valid, slow.text_valid)


def test_data_fraction_trains_on_whole_episodes(demos, tmp_path):
    cfg = small_config(demos, tmp_path / "frac", data_fraction=0.2, max_steps=2)
    train(cfg, progress=False)
    summary = json.loads((tmp_path / "frac" / "run_summary.json").read_text())
    # 6 episodes per task, 1 held out per task, ceil(0.2 * 5) = 1 kept per task.
    assert summary["episodes"] == {"total": 12, "train": 2, "val": 2}
    assert summary["chunks"]["train"] == 2 * 24


def test_warm_start_continues_from_a_trained_policy(demos, tmp_path):
    first = tmp_path / "first"
    before = train(small_config(demos, first, max_steps=60, eval_at_start=True), progress=False)
    cfg = small_config(demos, tmp_path / "more", max_steps=1, eval_at_start=True, warm_start=str(first))
    after = train(cfg, progress=False)
    # The continued run starts where the first one ended, far below a fresh model's loss.
    fresh_loss, trained_loss = before.history["val/loss"][0][1], before.history["val/loss"][-1][1]
    start_loss = after.history["val/loss"][0][1]
    assert start_loss == pytest.approx(trained_loss, rel=0.05) and start_loss < 0.9 * fresh_loss

    with pytest.raises(ValueError, match="warm_start .*objective"):
        train(small_config(demos, tmp_path / "ar", objective="ar", warm_start=str(first)), progress=False)
    with pytest.raises(FileNotFoundError, match="warm_start"):
        train(small_config(demos, tmp_path / "x", warm_start=str(tmp_path / "missing")), progress=False)


def test_fine_tuning_on_other_demos_keeps_the_policys_tokenizer_and_statistics(demos, tmp_path):
    first = tmp_path / "first"
    train(small_config(demos, first, max_steps=2), progress=False)
    other = write_demos(tmp_path / "other.hdf5", n_per_task=4, seed=5)  # other states and actions
    tuned = tmp_path / "tuned"
    train(small_config(other, tuned, max_steps=2, warm_start=str(first)), progress=False)
    # refitted on the new demos, bin i and the state's units would mean something else to the weights
    for name in ("normalization.json", "action_tokenizer/action_tokenizer.json"):
        assert (tuned / name).read_text() == (first / name).read_text(), name
    fresh = tmp_path / "fresh"
    train(small_config(other, fresh, max_steps=2), progress=False)
    assert (fresh / "normalization.json").read_text() != (first / "normalization.json").read_text()


def test_kill_and_resume_matches_an_uninterrupted_run(demos, tmp_path):
    steps, save_every, kill_at = 8, 3, 6
    whole = small_config(demos, tmp_path / "whole", max_steps=steps, save_every=save_every, eval_every=4)
    train(whole, progress=False)

    killed = small_config(demos, tmp_path / "killed", max_steps=steps, save_every=save_every, eval_every=4)
    killed.save(tmp_path / "killed.yaml")
    proc = subprocess.run(
        [sys.executable, str(WORKER), "kill", str(tmp_path / "killed.yaml"), str(kill_at)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL, mid-run
    pointer = json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == kill_at
    result = train(killed, resume=True, progress=False)
    assert result.steps == steps
    a, b = model_state(tmp_path / "whole"), model_state(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The metric history continues too (evaluations at steps 4 and 8 in both runs).
    hist_a = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"]["val/loss"]
    hist_b = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]["val/loss"]
    assert hist_a == hist_b


def test_ddp_on_two_gloo_processes_ends_with_identical_weights(demos, tmp_path):
    out = tmp_path / "ddp"
    cfg = small_config(demos, out, max_steps=6, batch_size=8, grad_accum=2, save_every=6, eval_batches=1)
    out.mkdir()
    cfg.save(out / "cfg.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as sock:  # a free port for the rendezvous (torchrun's default may be taken)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    proc = subprocess.run(
        cmd + [str(WORKER), "ddp", str(out / "cfg.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "rank0_weights.pt")
    w1 = torch.load(out / "rank1_weights.pt")
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    saved = model_state(out)  # the policy rank 0 wrote
    for key in saved:
        assert torch.equal(saved[key], w0[key].cpu()), key
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"
    assert summary["effective_batch"] == 8 * 2 * 2  # batch x accumulation x processes
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 6
