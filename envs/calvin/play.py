"""CALVIN-style play data: long episodes that chain random feasible tasks, cut into language windows.

CALVIN's data set is teleoperated play with language-annotated windows. Here a play episode starts from
a random CALVIN initial condition (jittered), then repeatedly reads the *physical* symbolic state
(``symbolic_state``: lights, doors, where each block is), picks a random task that CALVIN's rules allow
from it (``chains.apply_task``, categories not repeated back to back), and lets the scripted expert do it.
Each completed subtask is one demo (a language window) in the common HDF5 layout, with attrs
``play_episode`` and ``segment``; a failed subtask ends the episode and is not stored (CALVIN annotates
completed tasks only).

    python cli.py calvin-play --scene D --episodes 20 --subtasks 8 --out data/calvin_play
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.envs.calvin import chains
from dfm_vla.envs.calvin.oracle import BLOCK_NAMES, ROBOT
from dfm_vla.envs.calvin.setups import adapt_to_scene
from dfm_vla.envs.calvin.tasks import CATEGORIES, TASK_ID, TASK_NAMES


def symbolic_state(env) -> dict[str, Any]:
    """CALVIN's symbolic state read from the simulation (keys of ``tasks.POSSIBLE_CONDITIONS``)."""
    snap = env.snapshot()
    state: dict[str, Any] = {
        "led": int(env.lights["led"]),
        "lightbulb": int(env.lights["lightbulb"]),
        "slider": "left" if snap.doors["base__slide"] > env.layout.slide_range / 2 else "right",
        "drawer": "open" if snap.doors["base__drawer"] > 0.11 else "closed",
    }
    plank_mid = sum(env.layout.plank_x) / 2
    grasped = 0
    for name in BLOCK_NAMES:
        block = snap.blocks[name]
        bodies = block.contact_bodies
        key = f"{name.removeprefix('block_')}_block"
        under = [
            b
            for b in BLOCK_NAMES
            if b != name and b in bodies and snap.blocks[b].pos[2] < block.pos[2] - 0.02
        ]
        over = [
            b
            for b in BLOCK_NAMES
            if b != name and b in bodies and snap.blocks[b].pos[2] > block.pos[2] + 0.02
        ]
        if bodies == {ROBOT}:
            state[key], grasped = "grasped", 1
        elif under:
            state[key] = "stacked_top"
        elif over:
            state[key] = "stacked_bottom"
        elif ("table", "plank_link") in block.contacts:
            state[key] = "slider_left" if block.pos[0] < plank_mid else "slider_right"
        elif ("table", "drawer_link") in block.contacts:
            state[key] = "drawer"
        elif ("table", "base_link") in block.contacts:
            state[key] = "table"
        else:
            state[key] = "elsewhere"  # on the floor, or tipped against something: no task uses it
    state["grasped"] = grasped
    return state


def feasible_tasks(state: dict[str, Any], previous: str | None = None) -> list[str]:
    """Tasks CALVIN's rules allow from ``state`` (not the previous task's category again)."""
    tasks = [t for t in TASK_NAMES if chains.apply_task(state, t) is not None]
    if previous is not None:
        tasks = [t for t in tasks if CATEGORIES[t] != CATEGORIES[previous]] or tasks
    return tasks


def random_start(env, rng: np.random.Generator) -> None:
    """A random CALVIN initial condition, blocks jittered (as ``setups.random_task_setup``)."""
    conditions = chains.initial_conditions()
    robot_obs, scene_obs = chains.initial_env_state(conditions[int(rng.integers(len(conditions)))])
    scene_obs = adapt_to_scene(env.layout, scene_obs)
    for k in range(3):
        if scene_obs[7 + 6 * k] < 0:  # on the table top
            scene_obs[6 + 6 * k : 8 + 6 * k] += rng.uniform(-0.015, 0.015, 2)
        scene_obs[11 + 6 * k] += rng.uniform(-0.2, 0.2)
    env.set_state(robot_obs, scene_obs)


def play_episode(
    env, expert, rng: np.random.Generator, num_subtasks: int, max_steps: int = 360, images: bool = False
) -> list[dict[str, Any]]:
    """One play episode -> segments {task, success, actions (T, 7), obs {key: (T, ...)}}."""
    random_start(env, rng)
    segments: list[dict[str, Any]] = []
    previous = None
    for _ in range(num_subtasks):
        options = feasible_tasks(symbolic_state(env), previous)
        if not options:
            break
        task = options[int(rng.integers(len(options)))]
        obs = env.set_task(task)
        expert.reset(env)
        rows: dict[str, list[np.ndarray]] = {}
        actions = []
        success = False
        for _ in range(max_steps):
            for key in ("robot_obs", "scene_obs", "state"):
                rows.setdefault(key, []).append(obs[key])
            if images:
                for view, frame in env.render_images().items():
                    rows.setdefault(f"{view}_rgb", []).append(frame)
            action = expert.act(obs)
            actions.append(action)
            obs, _, terminated, _, info = env.step(action)
            if terminated:
                success = bool(info["success"])
                break
        segments.append(
            {
                "task": task,
                "success": success,
                "actions": np.stack(actions),
                "obs": {k: np.stack(v) for k, v in rows.items()},
            }
        )
        if not success:
            break
        previous = task
    return segments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scene", default="D", choices=("A", "B", "C", "D"), help="CALVIN scene")
    parser.add_argument("--episodes", type=int, default=10, help="play episodes")
    parser.add_argument("--subtasks", type=int, default=8, help="tasks chained per episode (at most)")
    parser.add_argument("--out", required=True, help="output folder (calvin_<scene>_play.hdf5)")
    parser.add_argument("--images", action="store_true", help="also store both camera images (slow on CPU)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from dfm_vla.envs.calvin.env import CalvinEnv
    from dfm_vla.envs.calvin.expert import CalvinExpert
    from dfm_vla.envs.demo_file import Demo, DemoWriter

    env = CalvinEnv(scene=args.scene, camera_mode="on_demand" if args.images else "none")
    expert = CalvinExpert()
    out = Path(args.out)
    writer = DemoWriter(
        out / f"calvin_{args.scene.lower()}_play.hdf5",
        env_name=f"calvin_{args.scene.lower()}",
        env_args={"scene": args.scene},
        problem_info={"language_instruction": "play", "kind": "calvin play"},
    )
    done_seeds = set(writer.seeds())
    counts = {"segments": 0, "success": 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("play episodes", total=args.episodes)
        for e in range(args.episodes):
            seed = args.seed * 1_000_000 + e
            if seed in done_seeds:
                progress.advance(bar)
                continue
            segments = play_episode(
                env, expert, np.random.default_rng(seed), args.subtasks, images=args.images
            )
            for k, seg in enumerate(segments):
                counts["segments"] += 1
                if not seg["success"]:
                    continue  # as CALVIN, only completed tasks get a language window
                counts["success"] += 1
                writer.add(
                    Demo(
                        actions=seg["actions"],
                        obs=seg["obs"],
                        language=env_instruction(seg["task"]),
                        success=seg["success"],
                        seed=seed,
                        task_index=TASK_ID[seg["task"]],
                        attrs={"play_episode": e, "segment": k, "task": seg["task"]},
                    )
                )
            progress.advance(bar)
    path = writer.finalize()
    print(
        f"wrote {path}: {counts['success']} language windows this run ({counts['segments']} subtasks tried)"
    )
    env.close()
    return 0


def env_instruction(task: str) -> str:
    from dfm_vla.envs.calvin.tasks import INSTRUCTIONS

    return INSTRUCTIONS[task]
