"""Record one scripted-expert episode per AgileX task as a small MP4 (cam_high above, wrist views below).

    MUJOCO_GL=egl python -m dfm_vla.envs.agilex.record_video --out docs/media --seed 0

Writes ``agilex_<task>.mp4`` per task (256x288 pixels, 25 fps, H.264) and prints each file's size.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

TASKS = ("pot_lift", "place_veg", "place_block")


def frame(env, width: int = 256) -> np.ndarray:
    """(H, W, 3) uint8: cam_high (width x 3/4 width) over the two wrist views side by side."""
    import mujoco

    base = env.unwrapped
    h = width * 3 // 4
    big = mujoco.Renderer(base.model, h, width) if not hasattr(base, "_video_big") else base._video_big
    small = (
        mujoco.Renderer(base.model, h // 2, width // 2)
        if not hasattr(base, "_video_small")
        else base._video_small
    )
    base._video_big, base._video_small = big, small
    big.update_scene(base.data, camera="cam_high")
    top = big.render().copy()
    wrists = []
    for cam in ("cam_left_wrist", "cam_right_wrist"):
        small.update_scene(base.data, camera=cam)
        wrists.append(small.render().copy())
    return np.concatenate([top, np.concatenate(wrists, axis=1)], axis=0)


def record(task: str, out_dir: Path, seed: int, fps: int = 25) -> Path:
    import imageio.v2 as imageio

    from dfm_vla.envs import make_env
    from dfm_vla.envs.agilex.expert import AgileXExpert

    env = make_env(f"agilex_{task}")
    expert = AgileXExpert()
    obs, _ = env.reset(seed=seed)
    expert.reset(env)
    frames = [frame(env)]
    info = {"success": False}
    for _ in range(env.unwrapped.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        frames.append(frame(env))
        if terminated or truncated:
            break
    frames += [frames[-1]] * (fps // 2)  # hold the final frame for half a second
    for renderer in (env.unwrapped._video_big, env.unwrapped._video_small):
        renderer.close()
    env.close()
    path = out_dir / f"agilex_{task}.mp4"
    out_dir.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, codec="libx264", quality=6, macro_block_size=16)
    print(f"{path}: {len(frames)} frames, success={info['success']}, {path.stat().st_size / 1e3:.0f} kB")
    return path


def main() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/media", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {TASKS}")
    args = parser.parse_args()
    for task in args.tasks.split(","):
        if task not in TASKS:
            raise ValueError(f"--tasks: expected names from {TASKS}, got {task!r}")
        record(task, Path(args.out), args.seed)


if __name__ == "__main__":
    main()
