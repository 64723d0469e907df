"""`cli.py eval` / `cli.py rollout` end to end on real LIBERO-Goal with a tiny (untrained) DFM policy.

Checks the results JSON, the success chart, resuming an interrupted run without recomputing finished
episodes, and that the rollout dashboard falls back to plain lines when output is not a terminal.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from _models import micro_model_config

from dfm_vla.policy.action_tokenizer import BinActionTokenizer, BinTokenizerConfig
from dfm_vla.policy.model import build_model
from dfm_vla.policy.processor import state_statistics
from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer


def _tiny_policy(directory, state_dim):
    """A state-only tiny DFM policy for 7-d actions (random weights), saved in ``directory``."""
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, size=(200, 8, 7))
    chunks[..., 6] = np.sign(chunks[..., 6])
    act_tok = BinActionTokenizer(BinTokenizerConfig(num_bins=16, gripper_dims=(6,))).fit(chunks)
    cfg = micro_model_config(
        state_keys=("state",),
        execute_horizon=8,
    )
    torch.manual_seed(0)
    text_tok = tiny_text_tokenizer()
    model = build_model(cfg, act_tok, text_tok, state_dim=state_dim)
    stats = {"state": state_statistics(rng.normal(size=(50, state_dim)))}
    model.save_pretrained(directory, act_tok, text_tok, stats)
    return directory


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return _tiny_policy(tmp_path_factory.mktemp("policy"), state_dim=8)  # LIBERO state: 8


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "cli.py", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_eval_writes_results_and_rollout_resumes_without_recomputing(tiny_policy, tmp_path, repo_root):
    pytest.importorskip("libero")
    out = tmp_path / "run"
    common = [
        "--env",
        "libero_goal",
        "--policy",
        tiny_policy,
        "--tasks",
        "7",
        "--episodes-per-task",
        "2",
        "--max-steps",
        "24",
        "--num-envs",
        "1",  # episodes finish in protocol order (the default runs one env per core)
        "--out",
        out,
    ]
    first = _cli("eval", *common, cwd=repo_root)
    assert first.returncode == 0, first.stderr[-3000:]
    # the phase the goal got to follows the reason (envs/libero/failure_phases.py)
    assert "[1/2] task 7 init 0: failure (step limit, not reached) in 24 steps" in first.stdout
    results = json.loads((out / "results.json").read_text())
    episodes = results["episodes"]
    assert [(e["spec"]["task_id"], e["spec"]["init_state_id"]) for e in episodes] == [(7, 0), (7, 1)]
    assert all(e["length"] == 24 and e["plans"] == 3 and e["policy_ms_per_plan"] > 0 for e in episodes)
    # 3 plans of 8 actions: 2 seams and 21 steps inside chunks, 16 model calls per DFM plan
    for e in episodes:
        assert e["seam_jump"] > 0 and e["step_jump"] > 0 and e["model_calls_per_plan"] == 16
    overall = results["summary"]["overall"]
    assert overall["mean_seam_jump"] == pytest.approx(np.mean([e["seam_jump"] for e in episodes]))
    assert results["summary"]["per_task"]["7"]["instruction"] == "turn on the stove"
    assert results["meta"]["max_steps"] == 24 and results["meta"]["policy"].startswith("checkpoint:")
    assert (out / "success_by_task.png").read_bytes()[:4] == b"\x89PNG"

    again = _cli("eval", *common, cwd=repo_root)
    assert again.returncode == 2 and "--resume" in again.stderr

    # Interrupt after the first episode: drop the second from the file, then resume with `rollout`.
    results["episodes"] = episodes[:1]
    (out / "results.json").write_text(json.dumps(results))
    resumed = _cli("rollout", *common, "--resume", cwd=repo_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[2/2] task 7 init 1" in resumed.stdout and "[1/2]" not in resumed.stdout
    assert "\x1b[" not in resumed.stdout  # no terminal: plain lines, no live view
    final = json.loads((out / "results.json").read_text())["episodes"]
    assert final[0] == episodes[0]  # the finished episode was kept, not recomputed
    assert final[1]["spec"] == episodes[1]["spec"]


def test_a_first_rollout_prints_no_robosuite_macro_notice(tmp_path, repo_root):
    """A fresh install has no robosuite/macros_private.py; `rollout` must not nag about it (module
    dfm_vla.envs.libero.quiet), neither in the main process nor in the env workers it spawns."""
    pytest.importorskip("libero")
    shown = _cli("rollout", "--help", cwd=repo_root)
    assert shown.returncode == 0 and "--episodes-per-task" in shown.stdout
    args = ["--env", "libero_goal", "--tasks", "0", "--episodes-per-task", "1", "--max-steps", "8"]
    run = _cli("rollout", *args, "--num-envs", "2", "--out", tmp_path / "run", cwd=repo_root)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[1/1] task 0 init 0" in run.stdout
    for out in (shown, run):
        assert "macro" not in out.stdout + out.stderr and "robosuite WARNING" not in out.stderr


def test_other_robosuite_warnings_still_print(caplog):
    import logging

    from dfm_vla.envs.libero.quiet import ROBOSUITE_LOGGER, quiet_macro_notice

    quiet_macro_notice()
    logger = logging.getLogger(ROBOSUITE_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning("No private macro file found!")
        logger.warning("To setup, run: python /x/robosuite/scripts/setup_macros.py")
        logger.warning("Controller config missing: using the default")
        logger.error("MuJoCo simulation unstable")
    assert [r.getMessage() for r in caplog.records] == [
        "Controller config missing: using the default",
        "MuJoCo simulation unstable",
    ]


def test_calvin_chains_are_saved_per_chain_and_resume(tmp_path, repo_root):
    policy = _tiny_policy(tmp_path / "policy", state_dim=15)  # CALVIN state = robot_obs (15)
    out = tmp_path / "calvin"
    first = _cli(
        "eval", "--env", "calvin_d", "--policy", policy, "--chains", "1", "--out", out, cwd=repo_root
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[1/1] chain 0: length 0 | rotate_blue_block_right FAIL" in first.stdout  # untrained: fails
    saved = json.loads((out / "results.json").read_text())
    assert [c["index"] for c in saved["episodes"]] == [0]
    assert saved["summary"]["avg_len"] == 0.0 and saved["meta"]["chains"] == 1
    assert saved["summary"]["task_counts"] == {"rotate_blue_block_right": {"fail": 1}}
    assert (out / "success_by_task.png").stat().st_size > 0  # per task, over the chains that reached it

    more = _cli(
        "eval",
        "--env",
        "calvin_d",
        "--policy",
        policy,
        "--chains",
        "2",
        "--out",
        out,
        "--resume",
        cwd=repo_root,
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "[2/2] chain 1: length" in more.stdout and "chain 0:" not in more.stdout  # chain 0 was kept
    resumed = json.loads((out / "results.json").read_text())["episodes"]
    assert [c["index"] for c in resumed] == [0, 1] and resumed[0] == saved["episodes"][0]
