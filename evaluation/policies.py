"""Turn what a user names (`--policy DIR`, `--policy expert`, `--remote HOST:PORT`) into a policy.

Specs are small picklable dataclasses so parallel workers can build their own copy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import dfm_vla

# The checkpoints that ship in the repository, per env name (`rollout --env NAME` with no --policy).
DEFAULT_POLICIES: dict[str, str] = {
    "libero_goal": "checkpoints/libero_goal_tiny_dfm",
}


# How an in-process agent plans under a simulated inference delay: wait for each plan (sync), plan the
# next chunk while the current one runs (async), and also freeze the steps that run meanwhile.
EXECUTION_MODES = ("sync", "async", "async-frozen")


@dataclass(frozen=True)
class PolicySpec:
    kind: str  # "checkpoint", "expert" or "remote"
    path: str | None = None  # checkpoint folder, or "HOST:PORT" for remote
    decoder: str | None = None  # dfm | dd | ar; None keeps the checkpoint's own
    steps: tuple[int, int] | None = None  # (T_fine, T_val) for DFM
    schedule: tuple[float, float] | None = None  # DFM (c, alpha) of beta_t; None keeps the checkpoint's
    seed: int = 0
    device: str = "cpu"
    round_trip: str | None = None  # experts: an action tokenizer folder every action passes through
    warm_start: bool | None = None  # DFM: refine from the previous plan; None keeps the checkpoint's
    execute_horizon: int | None = None  # actions of each chunk run before re-planning; None: checkpoint's
    latency_steps: int = 0  # simulated inference delay in control steps (evaluation/episode.py)
    execution: str = "sync"  # sync | async | async-frozen: how a checkpoint's agent plans under that delay

    def __post_init__(self) -> None:
        if self.execution not in EXECUTION_MODES:
            raise ValueError(f"execution: expected one of {EXECUTION_MODES}, got {self.execution!r}")
        if self.latency_steps < 0:
            raise ValueError(f"latency_steps: expected >= 0 control steps, got {self.latency_steps}")
        if self.latency_steps and self.kind == "remote":
            raise ValueError(
                "--latency-steps simulates a delay for an in-process policy; a --remote policy has its real "
                "one (use RemotePolicy(asynchronous=True) to plan ahead of it)"
            )

    def describe(self) -> str:
        if self.kind == "expert":
            name = f"expert through {self.round_trip}" if self.round_trip else "expert"
        else:
            name = f"{self.kind}:{self.path}"
        if self.latency_steps:
            name += f" (latency {self.latency_steps} steps, {self.execution})"
        return name


def policy_spec_from_args(env: str, policy: str | None, remote: str | None, **kw: Any) -> PolicySpec:
    """Resolve the CLI's --policy/--remote into a spec; a missing default names what to pass."""
    if remote:
        if policy:
            raise ValueError("pass either --policy or --remote, not both")
        return PolicySpec("remote", remote, **kw)
    if kw.get("round_trip") and policy != "expert":
        raise ValueError("--round-trip: only the scripted experts' actions can be sent through a tokenizer")
    if policy == "expert":
        return PolicySpec("expert", None, **kw)
    if policy is None:
        if env not in DEFAULT_POLICIES:
            raise ValueError(
                f"no default policy ships for env {env!r} (defaults exist for {sorted(DEFAULT_POLICIES)}); "
                "pass --policy DIR, --policy expert or --remote HOST:PORT"
            )
        policy = str(Path(dfm_vla.__file__).parent / DEFAULT_POLICIES[env])
    if not Path(policy).is_dir():
        raise FileNotFoundError(f"--policy {policy}: no such checkpoint folder")
    return PolicySpec("checkpoint", str(Path(policy).resolve()), **kw)


class ExpertPolicy:
    """A scripted expert behind the policy interface; it reads privileged state from its env.

    round_trip: an action tokenizer folder (``action_tokenizer.json``, as in a policy checkpoint); every
    action is encoded and decoded by it before the env runs it, so the success rate is the most a policy
    with that tokenizer can reach (the tokenizer's ceiling). Per-step tokenizers (bins) only: the action
    is tiled over the chunk and step 0 of the decoded chunk is executed.
    """

    needs_plan = False
    uses_images = False

    def __init__(self, env_name: str, env: Any, round_trip: str | None = None):
        from dfm_vla.envs.registration import EXPERTS

        if env_name not in EXPERTS:
            raise ValueError(f"no scripted expert for env {env_name!r}; experts exist for {sorted(EXPERTS)}")
        module, factory = EXPERTS[env_name].split(":")
        self.expert = getattr(importlib.import_module(module), factory)(env_name)
        self.env = env
        self.tokenizer = None
        if round_trip:
            from dfm_vla.policy.action_tokenizer import load_action_tokenizer

            self.tokenizer = load_action_tokenizer(round_trip)
            if self.tokenizer.kind != "bins":
                raise ValueError(
                    f"--round-trip {round_trip}: a {self.tokenizer.kind!r} tokenizer codes whole chunks; "
                    "an expert acting step by step can only be sent through a per-step (bins) tokenizer"
                )

    def reset(self, seed: int | None = None) -> None:
        self.expert.reset(self.env)

    def act(self, obs: dict[str, Any]):
        action = self.expert.act(obs)
        return action if self.tokenizer is None else round_trip_action(self.tokenizer, action)


def round_trip_action(tokenizer: Any, action: np.ndarray) -> np.ndarray:
    """One action (D,) through a per-step tokenizer: tiled over its chunk, encoded, decoded, step 0 back."""
    action = np.asarray(action)
    chunk = np.repeat(action.astype(np.float64)[None, None], tokenizer.horizon, axis=1)
    return tokenizer.decode(tokenizer.encode(chunk)).actions[0, 0].astype(action.dtype)


def build_model_policy(spec: PolicySpec) -> Any:
    """The policy for a checkpoint or a remote server (experts need their env: `ExpertPolicy`)."""
    if spec.kind == "remote":
        from dfm_vla.serve.client import RemotePolicy

        host, _, port = spec.path.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--remote {spec.path!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
        return RemotePolicy(host, int(port))
    if spec.kind == "checkpoint":
        from dfm_vla.agents.dfm_policy import DFMPolicy

        kwargs: dict[str, Any] = {"device": spec.device, "seed": spec.seed}
        if spec.decoder:
            kwargs["decoder"] = spec.decoder
        if spec.steps:
            kwargs["steps"] = spec.steps
        if spec.schedule:
            kwargs["schedule"] = spec.schedule
        if spec.warm_start is not None:
            kwargs["warm_start"] = spec.warm_start
        if spec.execute_horizon:
            kwargs["execute_horizon"] = spec.execute_horizon
        if spec.latency_steps:
            plans_ahead = spec.execution != "sync"
            kwargs["inference_delay"] = spec.latency_steps if plans_ahead else 0
            kwargs["freeze_prefix"] = spec.execution == "async-frozen"
        return DFMPolicy.from_pretrained(spec.path, **kwargs)
    raise ValueError(f"policy kind {spec.kind!r} is built with its env (ExpertPolicy)")
