"""Real-time execution: planning the next chunk while the current one runs, with the running steps frozen.

``DFMPolicy(inference_delay=d)`` asks for the next chunk when d actions of the current one are left; those
d still run, then the new chunk is served from its step d. With ``freeze_prefix`` the new chunk's first d
steps are fixed to them in every decoder. ``eval --latency-steps K`` simulates the delay on a real env.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_agent import _obs, _save
from test_rollout import _tiny_policy
from test_samplers import VOCAB, DiracOracle, bins_path

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.policy.samplers import ar_sample, dd_sample, dfm_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("realtime")
    return {objective: _save(root / objective, objective) for objective in ("dfm", "dd", "ar")}


def test_frozen_slots_never_change_while_every_decoder_refines_the_rest():
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, 16, (8, 12), generator=gen)  # what the model wants everywhere
    frozen = torch.full((8, 12), -1)
    frozen[:, :4] = (x1[:, :4] + 5) % 16  # the running steps disagree with the model's wish
    fixed = frozen >= 0

    path = bins_path(c=3.0)
    dfm = dfm_sample(DiracOracle(x1), path, 8, 12, frozen=frozen, generator=gen, return_history=True)
    assert (dfm.history[:, :, :4] == frozen[:, None, :4]).all()  # from the start state to the end
    assert torch.equal(dfm.tokens[:, 4:], x1[:, 4:])

    mask = 19
    dd = dd_sample(
        DiracOracle(x1, vocab=VOCAB), mask, 8, 12, steps=4, x0=frozen.where(fixed, mask), return_history=True
    )
    assert (dd.history[:, :, :4] == frozen[:, None, :4]).all()
    assert torch.equal(dd.tokens[:, 4:], x1[:, 4:])

    class Stepper:  # the model's logits favour x1 at every slot
        def __init__(self):
            self.i = 0

        def step(self, prev):
            self.i += 1
            return torch.nn.functional.one_hot(x1[:, self.i - 1], VOCAB).float() * 30

    ar = ar_sample(Stepper(), 8, 12, boa_id=17, prefix=frozen[:, :4], return_history=True)
    assert torch.equal(ar.tokens[:, :4], frozen[:, :4]) and torch.equal(ar.tokens[:, 4:], x1[:, 4:])
    assert (ar.changed_per_step[:, :4] == 0).all()


@pytest.mark.parametrize("objective", ["dfm", "dd", "ar"])
def test_plan_with_frozen_actions_starts_every_chunk_with_them(checkpoints, objective):
    agent = DFMPolicy.from_pretrained(checkpoints[objective], seed=0)
    rng = np.random.default_rng(1)
    observations = [_obs(rng), _obs(rng, "turn on the stove")]
    running = agent.plan(observations)[:, 1:3]  # two actions of earlier chunks, exactly representable
    chunks = agent.plan(observations, frozen_actions=running)
    np.testing.assert_allclose(chunks[:, :2], running, atol=1e-6)
    assert agent.last_plan.frozen_steps == 2
    with pytest.raises(ValueError, match="frozen_actions"):
        agent.plan(observations, frozen_actions=running[:, :, :3])
    with pytest.raises(ValueError, match="frozen_actions"):
        agent.plan(observations, frozen_actions=np.full_like(running, np.nan))


def test_planning_ahead_runs_the_queued_steps_and_freezes_them_in_the_next_chunk(checkpoints):
    # chunks of 6 steps, 4 executed per chunk; the plan takes 2 steps
    agent = DFMPolicy.from_pretrained(checkpoints["dfm"], seed=0, inference_delay=2)
    dim = agent.action_dim
    rng = np.random.default_rng(0)
    planned_at, seams, served, chunks = [], [], [], []
    for step in range(14):
        if agent.needs_plan:
            planned_at.append(step)
        served.append(agent.act(_obs(rng)))
        if agent.started_chunk:
            seams.append(step)
        if planned_at and planned_at[-1] == step:
            chunks.append(agent.last_plan.tokens[0])
    # first plan at 0 (the episode's first chunk, served from its step 0); then each request comes when
    # 2 actions are left: at 2, and every 4 steps after; a new chunk's first action runs 2 steps later
    assert planned_at == [0, 2, 6, 10]
    assert seams == [0, 4, 8, 12]
    # the new chunk's first 2 steps are the previous chunk's steps that ran meanwhile (its 2 and 3, then 4, 5)
    assert np.array_equal(chunks[1][: 2 * dim], chunks[0][2 * dim : 4 * dim])
    assert np.array_equal(chunks[2][: 2 * dim], chunks[1][4 * dim : 6 * dim])
    assert agent.last_plan.frozen_steps == 2
    # the actions served at 4, 5 are the second chunk's steps 2, 3
    decoded = agent.action_tokenizer.decode(chunks[1][None]).actions[0]
    np.testing.assert_allclose(np.stack(served[4:6]), decoded[2:4], atol=1e-6)

    unfrozen = DFMPolicy.from_pretrained(checkpoints["dfm"], seed=0, inference_delay=2, freeze_prefix=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        unfrozen.act(_obs(rng))
    assert unfrozen.last_plan.frozen_steps == 0


def test_a_delay_as_long_as_the_executed_part_plans_with_every_chunks_first_action(tmp_path):
    # chunks of 6, 3 executed, 3 steps to plan: each request goes out as a chunk's first action runs
    directory = _save(tmp_path / "dfm", "dfm")
    agent = DFMPolicy.from_pretrained(directory, seed=0, execute_horizon=3, inference_delay=3)
    rng = np.random.default_rng(0)
    plans, seams = [], []
    for step in range(10):
        before = agent.num_plans
        agent.act(_obs(rng))
        plans.append(agent.num_plans - before)
        if agent.started_chunk:
            seams.append(step)
    assert plans == [2, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # step 0: the first chunk, then the request at once
    assert seams == [0, 3, 6, 9] and agent.last_plan.frozen_steps == 3


def test_inference_delay_is_checked_against_the_chunk(checkpoints):
    with pytest.raises(ValueError, match="inference_delay"):  # 3 + 4 executed > the 6-step chunk
        DFMPolicy.from_pretrained(checkpoints["dfm"], inference_delay=3)
    with pytest.raises(ValueError, match="inference_delay"):
        DFMPolicy.from_pretrained(checkpoints["dfm"], inference_delay=-1)
    assert DFMPolicy.from_pretrained(checkpoints["ar"], inference_delay=2).freeze_prefix


def _eval(policy, out, repo_root, *extra):
    proc = subprocess.run(
        [sys.executable, "cli.py", "eval", "--env", "libero_goal", "--policy", str(policy), "--tasks", "7",
         "--episodes-per-task", "1", "--max-steps", "40", "--num-envs", "1", "--out", str(out), *extra],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def test_latency_zero_reproduces_the_synchronous_run_and_a_delay_changes_it(tmp_path, repo_root):
    policy = _tiny_policy(tmp_path / "policy", state_dim=8)
    base = _eval(policy, tmp_path / "sync", repo_root)["episodes"][0]
    zero = _eval(policy, tmp_path / "zero", repo_root, "--latency-steps", "0", "--execution", "async-frozen")
    same = zero["episodes"][0]
    for key in ("length", "plans", "seam_jump", "step_jump", "model_calls_per_plan"):
        assert same[key] == base[key], key
    # the tiny policy executes its whole 8-step chunk, so a 4-step delay leaves nothing to plan ahead of:
    # synchronous only; the robot holds still 4 steps per plan: 40 steps = 4 holds + 8 actions, 3 times over
    held = _eval(policy, tmp_path / "held", repo_root, "--latency-steps", "4")
    assert held["meta"]["latency_steps"] == 4 and held["meta"]["execution"] == "sync"
    episode = held["episodes"][0]
    assert episode["length"] == 40 and episode["plans"] == 4
