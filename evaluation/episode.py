"""One episode of any registered env with any policy: the loop every rollout and evaluation uses.

A policy is any object with ``reset()`` and ``act(obs) -> np.ndarray (action_dim,)``. Optional:
``needs_plan`` (bool, True when the next ``act`` plans a new chunk: images are rendered only then)
and ``last_plan`` (what the last plan did: ``changed_per_step``, ``total_ms`` ...), which the
dashboard shows. ``DFMPolicy``, the scripted experts and ``RemotePolicy`` all fit.

Simulated inference delay (``latency_steps=K``): a robot does not stop time while its policy plans. A
synchronous policy (one that plans when its chunk ran out) makes the robot wait: after each plan the env
runs K steps of ``env.unwrapped.hold_action(last action)`` (keep still, gripper as it was) before the new
chunk's first action, so the plan was made on an observation K steps old. A policy that plans ahead
(``DFMPolicy(inference_delay=K)``: it asks for the next chunk K actions before the current one runs out and
keeps executing those K meanwhile) waits only for its first chunk of an episode. Hold steps count in the
episode's length and step limit; ``seam_jump`` is measured where a new chunk's first action runs
(``policy.started_chunk`` when the policy tells, else at each plan).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode to run: a task of the suite, an official initial state (or None), a seed."""

    task_id: int
    init_state_id: int | None
    seed: int

    @property
    def key(self) -> str:
        return f"task{self.task_id}/init{self.init_state_id}/seed{self.seed}"


@dataclass
class EpisodeResult:
    spec: EpisodeSpec
    instruction: str
    success: bool
    length: int  # env steps taken (settling no-ops excluded)
    failure_reason: str | None
    seconds: float
    # How far a failed episode got (the env's ``failure_phase()``, e.g. LIBERO's "lost on the way");
    # None after a success or for envs that do not tell.
    failure_phase: str | None = None
    # Objects outside the goal that the episode moved (the env's ``disturbed_objects()``), when it tells.
    disturbed: list[str] | None = None
    policy_ms_per_plan: float | None = None
    plans: int = 0
    # Mean L2 distance (env units, all action dims) between consecutive actions: where a new chunk's first
    # action follows the previous chunk's last (seam_jump) and inside chunks (step_jump); None if none.
    seam_jump: float | None = None
    step_jump: float | None = None
    model_calls_per_plan: float | None = None
    video: str | None = None
    frames: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("frames")
        out["spec"] = asdict(self.spec)
        out["key"] = self.spec.key
        return out


@dataclass
class StepEvent:
    """Progress of a running episode, sent to the dashboard every few steps."""

    spec: EpisodeSpec
    step: int
    max_steps: int
    steps_per_s: float
    policy_ms_per_plan: float | None
    changed_per_step: list[int] | None


def plan_info(policy: Any) -> tuple[float | None, list[int] | None]:
    """(ms of the last plan, tokens changed at each refinement step) when the policy reports them."""
    plan = getattr(policy, "last_plan", None)
    if plan is None:
        return None, None
    get = plan.get if isinstance(plan, dict) else lambda k, d=None: getattr(plan, k, d)
    ms = get("total_ms", None)
    changed = get("changed_per_step", None)
    if changed is not None:
        changed = np.asarray(changed)
        if changed.ndim > 1:  # (B, T) from a batched plan: this env is row 0
            changed = changed[0]
        changed = [int(c) for c in changed]
    return (float(ms) if ms is not None else None), changed


def run_episode(
    env: Any,
    policy: Any,
    spec: EpisodeSpec,
    *,
    record_video: bool = False,
    video_view: str | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    report_every: int = 10,
    latency_steps: int = 0,
) -> EpisodeResult:
    """Reset ``env`` to ``spec``, run ``policy`` until success, failure or the step limit.

    ``env`` follows the toolkit's env conventions (``info["success"]``, ``failure_reason``,
    ``unwrapped.render_images()`` in on-demand camera mode). Frames for the video are taken from
    ``obs["images"][video_view]`` (the env must render every step). ``latency_steps``: the simulated
    inference delay in control steps (module docstring).
    """
    if latency_steps < 0:
        raise ValueError(f"latency_steps: expected >= 0 control steps, got {latency_steps}")
    plans_ahead = bool(getattr(policy, "inference_delay", 0))
    if latency_steps and not hasattr(env.unwrapped, "hold_action"):
        raise ValueError(
            f"latency_steps: env {type(env.unwrapped).__name__} has no hold_action(previous), the action a "
            "waiting robot runs; only envs that define one can simulate an inference delay"
        )
    start = time.perf_counter()
    options = {"task_id": spec.task_id, "init_state_id": spec.init_state_id}
    obs, info = env.reset(seed=spec.seed, options=options)
    base = env.unwrapped
    instruction = str(obs.get("language", getattr(base, "instruction", "")))
    max_steps = int(getattr(base, "max_episode_steps", 0) or 0)
    reset = policy.reset
    try:
        reset(seed=spec.seed)
    except TypeError:
        reset()
    frames: list[np.ndarray] = []
    plan_ms: list[float] = []
    calls: list[int] = []
    jumps: dict[bool, list[float]] = {True: [], False: []}  # a chunk's first action? -> |a_t - a_t-1|
    previous: np.ndarray | None = None
    success = bool(info.get("success", False))
    failure_reason = None
    steps = 0
    loop_start = time.perf_counter()
    on_demand_images = hasattr(base, "render_images") and "images" not in obs
    wants_images = bool(getattr(policy, "uses_images", False))
    pending: list[tuple[np.ndarray, bool | None]] = []  # (action, starts a chunk?) to run; None: a hold
    while not success:
        if record_video:
            frames.append(_frame(obs, video_view))
        if not pending:
            if wants_images and on_demand_images and getattr(policy, "needs_plan", True):
                obs = {**obs, "images": base.render_images()}
            planning = getattr(policy, "needs_plan", False)
            action = policy.act(obs)
            if planning:
                ms, _ = plan_info(policy)
                if ms is not None:
                    plan_ms.append(ms)
                n_calls = _model_calls(policy)
                if n_calls is not None:
                    calls.append(n_calls)
            if latency_steps and planning and (steps == 0 or not plans_ahead):  # the robot waits
                pending += [(base.hold_action(previous), None)] * latency_steps
            pending.append((action, bool(getattr(policy, "started_chunk", planning))))
        action, seam = pending.pop(0)
        current = np.asarray(action, dtype=np.float64).reshape(-1)
        if previous is not None and seam is not None:
            jumps[seam].append(float(np.linalg.norm(current - previous)))
        previous = current
        obs, _reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
        steps += 1
        success = bool(info.get("success", False))
        if on_step is not None and (steps % report_every == 0 or terminated or truncated):
            ms, changed = plan_info(policy)
            rate = steps / max(time.perf_counter() - loop_start, 1e-9)
            on_step(StepEvent(spec, steps, max_steps, rate, ms, changed))
        if terminated or truncated:
            if not success:
                failure_reason = info.get("failure_reason") or ("step limit" if truncated else "terminated")
            break
    if record_video:
        frames.append(_frame(obs, video_view))
    phase = base.failure_phase() if not success and hasattr(base, "failure_phase") else None
    disturbed = base.disturbed_objects() if hasattr(base, "disturbed_objects") else None
    return EpisodeResult(
        spec=spec,
        instruction=instruction,
        success=success,
        length=steps,
        failure_reason=None if success else failure_reason,
        seconds=time.perf_counter() - start,
        failure_phase=phase,
        disturbed=disturbed,
        policy_ms_per_plan=float(np.median(plan_ms)) if plan_ms else None,
        plans=len(plan_ms),
        seam_jump=float(np.mean(jumps[True])) if jumps[True] else None,
        step_jump=float(np.mean(jumps[False])) if jumps[False] else None,
        model_calls_per_plan=float(np.mean(calls)) if calls else None,
        frames=frames,
    )


def _model_calls(policy: Any) -> int | None:
    plan = getattr(policy, "last_plan", None)
    if plan is None:
        return None
    calls = plan.get("model_calls") if isinstance(plan, dict) else getattr(plan, "model_calls", None)
    return int(calls) if calls is not None else None


def _frame(obs: dict[str, Any], view: str | None) -> np.ndarray:
    images = obs.get("images")
    if not images:
        raise ValueError("record_video needs obs['images']: create the env with camera_mode='every_step'")
    view = view or next(iter(images))
    if view not in images:
        raise ValueError(f"video view {view!r} not in obs['images'] (have {sorted(images)})")
    return np.asarray(images[view])
