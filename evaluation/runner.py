"""Run an evaluation protocol: episodes in this process or in parallel worker processes.

Each worker owns one env and its own copy of the policy and runs whole episodes, so envs never
share state and a crash in one episode is recorded as that episode's failure while the rest go on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dfm_vla.evaluation.episode import EpisodeResult, EpisodeSpec, StepEvent, run_episode
from dfm_vla.evaluation.policies import ExpertPolicy, PolicySpec, build_model_policy
from dfm_vla.evaluation.video import video_name, write_mp4

VIDEO_MODES = ("none", "failures", "all")
# `collect` seeds demo i of task t with base * 1e6 + t * 1e4 + i (envs.collect.episode_seed): below 1e9 for
# base seeds under 1000. Evaluation episodes of envs with random placements use seeds from 1e9 on.
HELD_OUT_SEED_OFFSET = 1_000_000_000


@dataclass(frozen=True)
class RunConfig:
    env: str
    policy: PolicySpec
    out_dir: str
    video: str = "none"  # none | failures | all
    video_view: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    torch_threads: int | None = None


@dataclass(frozen=True)
class Protocol:
    """What the env offers: how many tasks, and how many official initial states (None: random)."""

    num_tasks: int
    num_init_states: int | None


def episode_specs(
    protocol: Protocol, tasks: list[int] | None, episodes_per_task: int, seed: int
) -> list[EpisodeSpec]:
    """Episodes in protocol order: task by task, official initial states 0..n-1 (or seeded random)."""
    tasks = list(range(protocol.num_tasks)) if tasks is None else tasks
    for t in tasks:
        if not 0 <= t < protocol.num_tasks:
            raise ValueError(f"--tasks: task {t} out of range, the env has tasks 0..{protocol.num_tasks - 1}")
    if protocol.num_init_states is not None and episodes_per_task > protocol.num_init_states:
        raise ValueError(
            f"--episodes-per-task {episodes_per_task}: the env has {protocol.num_init_states} official "
            "initial states per task"
        )
    # Envs without official initial states place their objects from the episode seed: start those seeds
    # at HELD_OUT_SEED_OFFSET, above every seed `collect` gives a demo, so no evaluation placement is a
    # training placement. (LIBERO's episodes start from the official states; their seeds only drive the
    # policy's sampling and stay as they were.)
    offset = HELD_OUT_SEED_OFFSET if protocol.num_init_states is None else 0
    return [
        EpisodeSpec(
            task_id=t,
            init_state_id=i if protocol.num_init_states is not None else None,
            seed=offset + seed * 1_000_003 + t * 1_000 + i,
        )
        for t in tasks
        for i in range(episodes_per_task)
    ]


def run_protocol(
    cfg: RunConfig,
    results: Any,
    *,
    tasks: list[int] | None,
    episodes_per_task: int | None,
    seed: int,
    num_envs: int = 1,
    on_total: Callable[[int], None] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
) -> Iterator[EpisodeResult]:
    """Run the protocol's episodes that ``results`` (a ``ResultsFile``) lacks; record and yield each.

    episodes_per_task: None runs every official initial state (the full protocol). ``on_total`` gets
    the protocol's episode count (finished ones included) once the env has said how many it has.
    """
    done = results.done_keys

    def make_specs(protocol: Protocol) -> list[EpisodeSpec]:
        n = episodes_per_task or protocol.num_init_states or 50
        specs = episode_specs(protocol, tasks, n, seed)
        if on_total is not None:
            on_total(len(specs))
        return [s for s in specs if s.key not in done]

    if num_envs == 1:
        stream = run_in_process(cfg, make_specs, on_step=on_step)
    else:
        stream = run_parallel(cfg, make_specs, num_envs, on_step=on_step)
    for result in stream:
        results.add(result.to_json())
        yield result


def setup(cfg: RunConfig) -> tuple[Any, Any, Protocol]:
    """Build (env, policy, protocol) for ``cfg`` in the calling process."""
    from dfm_vla.envs import make_env
    from dfm_vla.envs.registration import env_init_parameters

    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    policy = None if cfg.policy.kind == "expert" else build_model_policy(cfg.policy)
    if cfg.video != "none":
        camera_mode = "every_step"
    elif getattr(policy, "uses_images", False):
        camera_mode = "on_demand"
    else:
        camera_mode = "none"
    env_kwargs = dict(cfg.env_kwargs)
    image_hw = getattr(policy, "image_hw", None)
    if image_hw is not None and camera_mode != "none" and "image_size" in env_init_parameters(cfg.env):
        # Render at the training images' size: resizing a larger render is not the same picture.
        env_kwargs.setdefault("image_size", image_hw[0] if image_hw[0] == image_hw[1] else image_hw)
    env = make_env(cfg.env, camera_mode=camera_mode, **env_kwargs)
    if policy is None:
        policy = ExpertPolicy(cfg.env, env, round_trip=cfg.policy.round_trip)
    base = env.unwrapped
    protocol = Protocol(int(getattr(base, "num_tasks", 1)), getattr(base, "num_init_states", None))
    return env, policy, protocol


def run_one(env: Any, policy: Any, spec: EpisodeSpec, cfg: RunConfig, on_step=None) -> EpisodeResult:
    """One episode; a crash becomes a failed episode with the reason; writes its video if asked."""
    try:
        result = run_episode(
            env,
            policy,
            spec,
            record_video=cfg.video != "none",
            video_view=cfg.video_view,
            on_step=on_step,
            latency_steps=cfg.policy.latency_steps,
        )
    except Exception as e:  # the evaluation goes on; the reason is recorded
        reason = f"crash: {type(e).__name__}: {e}"
        traceback.print_exc()
        return EpisodeResult(spec, "", False, 0, reason, 0.0)
    if cfg.video == "all" or (cfg.video == "failures" and not result.success):
        name = video_name(spec.task_id, spec.init_state_id, result.instruction, result.success)
        result.video = str(write_mp4(result.frames, Path(cfg.out_dir) / "videos" / name))
    result.frames = []
    return result


def run_in_process(
    cfg: RunConfig, make_specs: Callable[[Protocol], list[EpisodeSpec]], on_step=None
) -> Iterator[EpisodeResult]:
    env, policy, protocol = setup(cfg)
    try:
        for spec in make_specs(protocol):
            yield run_one(env, policy, spec, cfg, on_step)
    finally:
        env.close()


def _worker(cfg: RunConfig, jobs: mp.Queue, events: mp.Queue) -> None:
    try:
        env, policy, protocol = setup(replace(cfg, torch_threads=cfg.torch_threads or 1))
    except Exception as e:
        events.put(("error", f"{type(e).__name__}: {e}"))
        return
    events.put(("ready", protocol))
    while (spec := jobs.get()) is not None:
        events.put(("done", run_one(env, policy, spec, cfg, on_step=lambda ev: events.put(("step", ev)))))
    env.close()


def run_parallel(
    cfg: RunConfig,
    make_specs: Callable[[Protocol], list[EpisodeSpec]],
    num_envs: int,
    on_step: Callable[[StepEvent], None] | None = None,
) -> Iterator[EpisodeResult]:
    """Run episodes over ``num_envs`` spawned worker processes; yields results as they finish."""
    ctx = mp.get_context("spawn")
    jobs: mp.Queue = ctx.Queue()
    events: mp.Queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(cfg, jobs, events), daemon=True) for _ in range(num_envs)]
    for w in workers:
        w.start()
    try:
        kind, payload = events.get()
        if kind == "error":
            raise RuntimeError(f"env worker failed to start: {payload}")
        specs = make_specs(payload)
        for spec in specs:
            jobs.put(spec)
        for _ in workers:
            jobs.put(None)
        remaining = len(specs)
        while remaining:
            try:
                kind, payload = events.get(timeout=5.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    raise RuntimeError("all env workers exited before the evaluation finished") from None
                continue
            if kind == "step" and on_step is not None:
                on_step(payload)
            elif kind == "done":
                remaining -= 1
                yield payload
            elif kind == "error":
                raise RuntimeError(f"env worker failed to start: {payload}")
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join(timeout=5)
