"""``python cli.py collect``: record scripted-expert demos for any env with an entry in ``EXPERTS``.

Per task it runs the expert from random initial states (never the evaluation states), keeps the
episodes the benchmark's own success test accepts, counts and discards the failures, and writes the
demos in the common HDF5 layout (``envs/demo_file.py``), one file per task (``<task>_demo.hdf5``).
Resumable: finished demos are safe on disk after each episode and a rerun with the same arguments
continues after them with new seeds. ``--noise`` turns on DART-style perturbations: the executed action
is the expert's action plus Gaussian noise on the motion dims, the recorded action is the clean expert
action, and the closed-loop expert corrects the drift, so the demos cover states off the nominal path.
An expert may scale the noise per step (``expert.noise_scale``, 0 during precise grasps and releases).

``--takeover POLICY_DIR`` collects recovery demos (one DAgger-style round): a learned policy acts for the
first k steps of each episode (k drawn per episode from ``--takeover-steps LO,HI``), then the expert takes
over from the state the policy left and only its part is recorded. The demos then start where the
policy's own mistakes lead, which expert demos from the nominal initial states never visit.

Env hooks used when present (``env.unwrapped``): ``num_tasks`` (reset option ``task_id``),
``problem_info()``, ``demo_obs_extras()``, ``get_sim_state()``, ``render_images()``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_FILE = "collect_summary.json"
FINALIZE_EVERY = 10  # merge finished demos into the task's HDF5 file every this many demos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, help="registered env name, e.g. libero_goal")
    parser.add_argument("--episodes", type=int, default=50, help="successful demos to keep per task")
    parser.add_argument("--out", required=True, help="output folder (one HDF5 file per task)")
    parser.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    parser.add_argument("--images", action="store_true", help="also store camera images (slow on CPU)")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels with --images")
    parser.add_argument("--noise", type=float, default=0.0, help="DART noise std on motion actions (0 = off)")
    parser.add_argument(
        "--noise-fraction", type=float, default=1.0, help="fraction of episodes with noise when --noise > 0"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the random initial states")
    parser.add_argument(
        "--max-attempts", type=int, default=None, help="give up on a task after this many episodes (3x)"
    )
    parser.add_argument(
        "--takeover",
        metavar="POLICY_DIR",
        help="recovery demos: this policy acts first, the expert takes over and is recorded",
    )
    parser.add_argument(
        "--takeover-steps",
        default="10,150",
        metavar="LO,HI",
        help="with --takeover: policy steps before the expert takes over, uniform in [LO, HI] (10,150)",
    )


def load_expert(env_name: str):
    """Build the scripted expert registered for ``env_name`` in ``EXPERTS``."""
    import importlib

    from dfm_vla.envs.registration import EXPERTS

    if env_name not in EXPERTS:
        raise ValueError(f"--env: no scripted expert for {env_name!r}; experts exist for {sorted(EXPERTS)}")
    module, factory = EXPERTS[env_name].split(":")
    return getattr(importlib.import_module(module), factory)(env_name)


def episode_seed(base_seed: int, task_id: int, attempt: int) -> int:
    return base_seed * 1_000_000 + task_id * 10_000 + attempt


def run_expert_episode(
    env,
    expert,
    *,
    seed: int,
    options: dict[str, Any] | None = None,
    noise: float = 0.0,
    images: bool = False,
    image_keys: dict[str, str] | None = None,
    takeover: tuple[Any, int] | None = None,
):
    """One expert episode -> (Demo, final info). ``noise`` > 0 perturbs the executed motion actions.

    takeover: (policy, k): the policy acts for the first k steps and the expert takes over from there; the
    demo holds the expert's part only. Returns (None, info) when the episode ended within the k steps.
    """
    from dfm_vla.envs.demo_file import Demo

    base = env.unwrapped
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options=options or None)
    if takeover is not None:
        policy, policy_steps = takeover
        policy.reset(seed=seed)
        for _ in range(policy_steps):
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            if terminated or truncated or info.get("success", False):
                return None, {**info, "failure_reason": "the policy ended the episode before the takeover"}
    expert.reset(env)
    rows: dict[str, list[np.ndarray]] = {}
    actions, states, rewards = [], [], []

    def record(o: dict[str, Any]) -> None:
        for key, value in o.items():
            if key not in ("language", "images") and isinstance(value, np.ndarray):
                rows.setdefault(key, []).append(value)
        if hasattr(base, "demo_obs_extras"):
            for key, value in base.demo_obs_extras().items():
                rows.setdefault(key, []).append(value)
        if images:
            frames = o["images"] if "images" in o else base.render_images()
            for view, frame in frames.items():
                rows.setdefault((image_keys or {}).get(view, f"{view}_rgb"), []).append(frame)
        if hasattr(base, "get_sim_state"):
            states.append(base.get_sim_state())

    done = False
    while not done:
        record(obs)
        action = np.asarray(expert.act(obs), np.float64)
        executed = action.copy()
        scale = float(getattr(expert, "noise_scale", 1.0))  # experts switch noise off in precise phases
        if noise > 0 and scale > 0:
            # Motion dims only: an expert may name them (``noise_dims``); by default all but the last
            # (the gripper). Clipped to the env's own action bounds (LIBERO: [-1, 1]; AgileX: joint limits).
            dims = np.asarray(getattr(expert, "noise_dims", range(len(executed) - 1)), dtype=int)
            executed[dims] += rng.normal(0.0, noise * scale, len(dims))
            executed = np.clip(executed, env.action_space.low, env.action_space.high)
        obs, reward, terminated, truncated, info = env.step(executed)
        actions.append(action)
        rewards.append(reward)
        done = terminated or truncated
    demo = Demo(
        actions=np.stack(actions),
        obs={key: np.stack(values) for key, values in rows.items()},
        language=str(obs.get("language", getattr(base, "instruction", ""))),
        success=bool(info.get("success", False)),
        seed=int(seed),
        task_index=int(getattr(base, "task_id", 0)),
        states=np.stack(states) if states else None,
        rewards=np.asarray(rewards, np.float64),
        attrs={"noise": float(noise), "takeover_steps": takeover[1] if takeover else 0},
    )
    return demo, info


def _takeover_policy(args: argparse.Namespace) -> tuple[Any, tuple[int, int]]:
    """(policy or None, (lo, hi + 1)) for ``--takeover`` / ``--takeover-steps``."""
    try:
        lo, hi = (int(x) for x in str(args.takeover_steps).split(","))
    except ValueError:
        raise ValueError(
            f"--takeover-steps: expected LO,HI (e.g. 10,150), got {args.takeover_steps!r}"
        ) from None
    if not 0 <= lo <= hi:
        raise ValueError(f"--takeover-steps: expected 0 <= LO <= HI, got {lo},{hi}")
    if not args.takeover:
        return None, (lo, hi + 1)
    if args.images:
        raise ValueError("--takeover: recovery demos with --images are not supported yet")
    from dfm_vla.agents.dfm_policy import DFMPolicy

    policy = DFMPolicy.from_pretrained(args.takeover, seed=args.seed)
    if policy.uses_images:
        raise ValueError(
            f"--takeover {args.takeover}: an image policy; the collector renders no cameras for it"
        )
    return policy, (lo, hi + 1)


def _progress_path(out: Path, task_id: int) -> Path:
    return out / f".collect_task{task_id}.json"


def main(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dfm_vla.envs import make_env
    from dfm_vla.envs.demo_file import DemoWriter
    from dfm_vla.utils.io import atomic_write_json
    from dfm_vla.utils.report import print_table

    if args.episodes < 1:
        raise ValueError(f"--episodes: expected >= 1, got {args.episodes}")
    if args.noise < 0 or not 0.0 <= args.noise_fraction <= 1.0:
        raise ValueError("--noise: expected >= 0 and --noise-fraction in [0, 1]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    expert = load_expert(args.env)
    policy, takeover_range = _takeover_policy(args)
    camera_mode = "on_demand" if args.images else "none"
    env = make_env(args.env, camera_mode=camera_mode, image_size=args.image_size)
    base = env.unwrapped
    num_tasks = int(getattr(base, "num_tasks", 1))
    tasks = list(range(num_tasks)) if args.tasks is None else [int(t) for t in str(args.tasks).split(",")]
    for t in tasks:
        if not 0 <= t < num_tasks:
            raise ValueError(f"--tasks: expected ids in [0, {num_tasks}), got {t}")
    max_attempts = args.max_attempts or 3 * args.episodes
    image_keys = None
    if args.images and base.__class__.__module__.startswith("dfm_vla.envs.libero"):
        from dfm_vla.envs.libero.protocol import DEMO_IMAGE_KEYS as image_keys

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("demos", total=len(tasks) * args.episodes)
        for task_id in tasks:
            options = {"task_id": task_id} if num_tasks > 1 else None
            env.reset(seed=episode_seed(args.seed, task_id, 0), options=options)
            meta = base.problem_info() if hasattr(base, "problem_info") else {}
            stem = meta.get("file_stem", f"{args.env}_task{task_id}_demo")
            writer = DemoWriter(
                out / f"{stem}.hdf5",
                env_name=args.env,
                env_args={"env_name": args.env, "camera_mode": camera_mode, "image_size": args.image_size},
                problem_info=meta.get(
                    "problem_info", {"language_instruction": getattr(base, "instruction", "")}
                ),
                bddl_file_name=meta.get("bddl_file_name", ""),
            )
            state_path = _progress_path(out, task_id)
            state = json.loads(state_path.read_text()) if state_path.exists() else {}
            attempts = int(state.get("attempts", 0))
            seeds = writer.seeds()
            if seeds:  # a crash between a demo write and the progress write: never reuse a seed
                attempts = max(attempts, max(seeds) - episode_seed(args.seed, task_id, 0) + 1)
            failures = Counter(state.get("failure_reasons", {}))
            steps = list(state.get("success_steps", []))
            # attempts and successes without noise (the expert's own success rate) and with noise
            by_noise = state.get("by_noise", {"clean": [0, 0], "noisy": [0, 0]})
            progress.update(bar, advance=min(len(writer), args.episodes))
            progress.update(bar, description=f"task {task_id}")
            started = time.time()
            while len(writer) < args.episodes and attempts < max_attempts:
                seed = episode_seed(args.seed, task_id, attempts)
                noisy = args.noise > 0 and np.random.default_rng(seed + 7).random() < args.noise_fraction
                takeover = None
                if policy is not None:
                    takeover = (policy, int(np.random.default_rng(seed + 11).integers(*takeover_range)))
                demo, info = run_expert_episode(
                    env,
                    expert,
                    seed=seed,
                    options=options,
                    noise=args.noise if noisy else 0.0,
                    images=args.images,
                    image_keys=image_keys,
                    takeover=takeover,
                )
                attempts += 1
                by_noise["noisy" if noisy else "clean"][0] += 1
                by_noise["noisy" if noisy else "clean"][1] += int(demo is not None and demo.success)
                if demo is not None and demo.success:
                    writer.add(demo)
                    steps.append(demo.num_samples)
                    progress.advance(bar)
                    if len(writer) % FINALIZE_EVERY == 0:  # readers see the demos while collection runs
                        writer.finalize()
                else:
                    failures[info.get("failure_reason") or "no success within the step limit"] += 1
                atomic_write_json(
                    state_path,
                    {
                        "task_id": task_id,
                        "instruction": getattr(base, "instruction", ""),
                        "file": writer.path.name,
                        "demos": len(writer),
                        "attempts": attempts,
                        "failures": sum(failures.values()),
                        "failure_reasons": dict(failures),
                        "success_steps": steps,
                        "by_noise": by_noise,
                        "seconds": float(state.get("seconds", 0.0)) + time.time() - started,
                    },
                )
                started = time.time()
                state = json.loads(state_path.read_text())
            writer.finalize()

    summary = write_summary(out, args)
    print_table(f"collect {args.env}: expert success per task", summary["rows"])
    print(f"wrote {out / SUMMARY_FILE}")
    return 0


def _ratio(attempts_successes: list[int]) -> str:
    attempts, successes = attempts_successes
    return f"{successes}/{attempts}" if attempts else "-"


def write_summary(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Merge the per-task progress files in ``out`` into ``collect_summary.json`` (and return it)."""
    from dfm_vla.utils.io import atomic_write_json

    rows = []
    for path in sorted(
        out.glob(".collect_task*.json"), key=lambda p: int(p.stem.removeprefix(".collect_task"))
    ):
        s = json.loads(path.read_text())
        rows.append(
            {
                "task": s["task_id"],
                "instruction": s["instruction"],
                "demos": s["demos"],
                "attempts": s["attempts"],
                "success_rate": s["demos"] / max(1, s["attempts"]) if s["attempts"] else 0.0,
                "clean_success": _ratio(s.get("by_noise", {}).get("clean", [0, 0])),
                "noisy_success": _ratio(s.get("by_noise", {}).get("noisy", [0, 0])),
                "mean_steps": float(np.mean(s["success_steps"])) if s["success_steps"] else 0.0,
                "failure_reasons": "; ".join(f"{k}: {v}" for k, v in s["failure_reasons"].items()),
            }
        )
    summary = {
        "env": args.env,
        "noise": args.noise,
        "noise_fraction": args.noise_fraction,
        "takeover": getattr(args, "takeover", None),
        "takeover_steps": getattr(args, "takeover_steps", None) if getattr(args, "takeover", None) else None,
        "images": bool(args.images),
        "rows": rows,
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
