"""Rollout videos as MP4 (imageio + ffmpeg), named by task, initial state, instruction and outcome."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dfm_vla.utils.io import atomic_path


def video_name(task_id: int, init_state_id: int | None, instruction: str, success: bool) -> str:
    """E.g. ``task03_init07_open-the-top-drawer-and-put-the-bowl-inside_success.mp4``."""
    slug = re.sub(r"[^a-z0-9]+", "-", instruction.lower()).strip("-")[:60] or "episode"
    init = "random" if init_state_id is None else f"{init_state_id:02d}"
    return f"task{task_id:02d}_init{init}_{slug}_{'success' if success else 'failure'}.mp4"


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: int = 20) -> Path:
    """Write (H, W, 3) uint8 frames to ``path`` atomically; returns the path."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("write_mp4: no frames to write")
    path = Path(path)
    with atomic_path(path) as tmp:
        # imageio picks the writer from the extension, so the temporary file keeps ".mp4".
        tmp_mp4 = tmp.with_suffix(".mp4")
        with imageio.get_writer(tmp_mp4, fps=fps, codec="libx264", quality=6, macro_block_size=1) as w:
            for frame in frames:
                w.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        tmp_mp4.replace(tmp)
    return path
