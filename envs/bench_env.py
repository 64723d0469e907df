"""``python cli.py bench env --env NAME``: how fast a registered env runs, with and without cameras.

Measures, for any env registered in ``ENV_SPECS``: creation time (the first in the process includes
imports and assets), reset time, steps/s with ``camera_mode="none"``, steps/s with ``"every_step"``
rendering, steps/s of a chunked policy that renders on demand once every ``--chunk`` steps
(``"on_demand"``), and render time per multi-camera frame. Actions are small random deltas (gripper
held open), so the robot moves but the scene stays stable. Every rate is given twice: by wall clock and
by this process's CPU time (``time.process_time``, all its threads), because a shared machine's load
changes the wall-clock numbers; the 1-minute load average is recorded with them.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="libero_goal", help="registered env name")
    parser.add_argument("--steps", type=int, default=200, help="env steps per camera-free measurement")
    parser.add_argument("--camera-steps", type=int, default=48, help="env steps per camera measurement")
    parser.add_argument("--chunk", type=int, default=8, help="steps per rendered observation (on demand)")
    parser.add_argument("--image-size", type=int, default=128, help="camera image side in pixels")
    parser.add_argument("--seed", type=int, default=0)


class _Clock:
    """Wall-clock and process-CPU seconds of a block."""

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def _random_actions(env, n: int, rng: np.random.Generator) -> np.ndarray:
    actions = rng.uniform(-0.3, 0.3, size=(n, *env.action_space.shape))
    actions[:, -1] = -1.0  # keep a gripper open (LIBERO: -1 open)
    return actions


def _run_steps(env, actions: np.ndarray, seed: int, render_every: int = 0) -> _Clock:
    """Step through ``actions`` (resetting at episode ends, resets not timed apart)."""
    env.reset(seed=seed)
    with _Clock() as clock:
        for i, action in enumerate(actions):
            if render_every and i % render_every == 0:
                env.unwrapped.render_images()
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset(seed=seed + i + 1)
    return clock


def _timed(fn: Callable[[], Any]) -> tuple[Any, _Clock]:
    with _Clock() as clock:
        out = fn()
    return out, clock


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from dfm_vla.envs import make_env

    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"env": args.env, "image_size": args.image_size, "chunk": args.chunk}
    result["load_avg_1min_start"] = os.getloadavg()[0]

    def row(measure: str, key: str, clock_value: tuple[float, float], unit: str) -> None:
        result[key], result[f"{key}_cpu"] = clock_value
        rows.append({"measure": measure, "wall": clock_value[0], "cpu_time": clock_value[1], "unit": unit})

    env, c = _timed(lambda: make_env(args.env, camera_mode="none"))
    row("env creation (first in process)", "create_first_s", (c.wall, c.cpu), "s")
    _, c = _timed(lambda: [env.reset(seed=args.seed + k) for k in range(5)])
    row("reset (incl. settle steps)", "reset_s", (c.wall / 5, c.cpu / 5), "s")
    c = _run_steps(env, _random_actions(env, args.steps, rng), args.seed)
    row("steps/s, no cameras", "steps_per_s_no_camera", (args.steps / c.wall, args.steps / c.cpu), "steps/s")
    env.close()

    cam_env, c = _timed(lambda: make_env(args.env, camera_mode="every_step", image_size=args.image_size))
    row("env creation (cameras, not first)", "create_camera_s", (c.wall, c.cpu), "s")
    cam_env.reset(seed=args.seed)
    views = cam_env.unwrapped.render_images()  # warm the renderer up
    result["views"] = sorted(views)
    _, c = _timed(lambda: [cam_env.unwrapped.render_images() for _ in range(10)])
    row(
        f"render {len(views)} cameras {args.image_size}px",
        "render_ms_per_frame",
        (c.wall * 100, c.cpu * 100),
        "ms/frame",
    )
    n = args.camera_steps
    c = _run_steps(cam_env, _random_actions(cam_env, n, rng), args.seed)
    row("steps/s, cameras every step", "steps_per_s_every_step", (n / c.wall, n / c.cpu), "steps/s")
    cam_env.close()

    demand_env = make_env(args.env, camera_mode="on_demand", image_size=args.image_size)
    demand_env.reset(seed=args.seed)
    demand_env.unwrapped.render_images()
    n = args.chunk * max(1, args.camera_steps // args.chunk) * 2
    c = _run_steps(demand_env, _random_actions(demand_env, n, rng), args.seed, render_every=args.chunk)
    row(
        f"steps/s, render on demand 1/{args.chunk}",
        "steps_per_s_on_demand",
        (n / c.wall, n / c.cpu),
        "steps/s",
    )
    demand_env.close()
    speedup = (
        result["steps_per_s_on_demand"] / result["steps_per_s_every_step"],
        result["steps_per_s_on_demand_cpu"] / result["steps_per_s_every_step_cpu"],
    )
    row("on-demand speed-up vs every step", "speedup_on_demand", speedup, "x")
    result["load_avg_1min_end"] = os.getloadavg()[0]
    rows.append(
        {
            "measure": "load average (1 min), start / end",
            "wall": result["load_avg_1min_start"],
            "cpu_time": result["load_avg_1min_end"],
            "unit": "",
        }
    )
    result["rows"] = rows
    return result
