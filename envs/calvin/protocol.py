"""CALVIN's long-horizon evaluation (LH-MTLC, facts 5.2-5.3) over any env that speaks our CALVIN API.

For each of the chains: reset to the chain's initial state, then for each of its 5 subtasks: set the
subtask (new instruction, the oracle's start snapshot taken now; no sim reset), ``agent.reset()``, then
up to ``EP_LEN`` = 360 steps of ``agent.act(obs)``; the chain stops at the first failed subtask. Its
result is the number of consecutive successes (0..5). Average length = mean result; SR_i = fraction of
chains with result >= i.

The env is either our ``CalvinEnv`` or ``original.OriginalCalvinEnv`` (calvin_env); both provide
``reset(options={"chain_index": i})`` / ``reset(options={"robot_obs", "scene_obs", "task"})``,
``unwrapped.set_task(task) -> obs`` and ``step`` with ``info["success"]``. Results can be resumed:
pass ``done`` (chain index -> result) from a previous run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dfm_vla.envs.calvin.chains import evaluation_chains, initial_env_state

EP_LEN = 360
CHAIN_LENGTH = 5


class Agent(Protocol):
    def reset(self) -> None: ...
    def act(self, obs: dict[str, Any]) -> np.ndarray: ...


@dataclass
class ChainResult:
    """One chain: index, its tasks, how many succeeded in a row, and the steps each subtask took."""

    index: int
    tasks: tuple[str, ...]
    length: int
    steps: list[int] = field(default_factory=list)
    failure_reason: str = ""


def run_chain(
    env,
    agent: Agent,
    index: int,
    condition: dict[str, Any],
    tasks: Iterable[str],
    ep_len: int = EP_LEN,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> ChainResult:
    """Run one chain; ``on_step`` (optional) gets {"chain", "subtask", "step", "task"} after each step."""
    tasks = tuple(tasks)
    robot_obs, scene_obs = initial_env_state(condition)
    env.reset(options={"robot_obs": robot_obs, "scene_obs": scene_obs, "task": tasks[0]})
    result = ChainResult(index, tasks, 0)
    base = env.unwrapped
    for k, task in enumerate(tasks):
        obs = base.set_task(task)
        agent.reset()  # CALVIN calls model.reset() before every subtask
        success = False
        for step in range(ep_len):
            obs, _, _, _, info = env.step(agent.act(obs))
            if on_step is not None:
                on_step({"chain": index, "subtask": k, "step": step, "task": task})
            if info.get("failure_reason"):
                result.failure_reason = str(info["failure_reason"])
                break
            if info.get("success"):
                success = True
                break
        result.steps.append(step + 1)
        if not success:
            return result
        result.length += 1
    return result


def summarize(lengths: list[int]) -> dict[str, Any]:
    """Average length and SR_1..SR_5 (fractions) over chain results."""
    arr = np.asarray(lengths, float)
    if arr.size == 0:
        return {"num_chains": 0, "avg_len": 0.0, **{f"sr_{i}": 0.0 for i in range(1, CHAIN_LENGTH + 1)}}
    return {
        "num_chains": int(arr.size),
        "avg_len": float(arr.mean()),
        **{f"sr_{i}": float(np.mean(arr >= i)) for i in range(1, CHAIN_LENGTH + 1)},
    }


def evaluate(
    env,
    agent: Agent,
    num_chains: int = 1000,
    done: dict[int, int] | None = None,
    on_chain: Callable[[ChainResult, dict[str, Any]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    ep_len: int = EP_LEN,
) -> dict[str, Any]:
    """Run the first ``num_chains`` of CALVIN's 1000 chains (skipping those in ``done``).

    ``on_chain(result, running_summary)`` is called after each chain (for dashboards and resumable
    result files). Returns the summary plus per-task success/failure counts and per-chain lengths.
    """
    chains = evaluation_chains()
    if not 1 <= num_chains <= len(chains):
        raise ValueError(f"num_chains: expected 1..{len(chains)}, got {num_chains}")
    lengths: dict[int, int] = dict(done or {})
    task_stats: dict[str, list[int]] = {}
    for index in range(num_chains):
        if index in lengths:
            continue
        condition, tasks = chains[index]
        result = run_chain(env, agent, index, condition, tasks, ep_len=ep_len, on_step=on_step)
        lengths[index] = result.length
        for k, task in enumerate(tasks[: result.length + 1]):
            ok, fail = task_stats.setdefault(task, [0, 0])
            task_stats[task] = [ok + (k < result.length), fail + (k == result.length)]
        if on_chain is not None:
            on_chain(result, summarize(list(lengths.values())))
    summary = summarize([lengths[i] for i in range(num_chains)])
    summary["task_counts"] = {t: {"success": s, "fail": f} for t, (s, f) in sorted(task_stats.items())}
    summary["lengths"] = [lengths[i] for i in range(num_chains)]
    return summary
