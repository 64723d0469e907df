"""Demo readers: LIBERO/robomimic HDF5 (ours and the official data sets) and LeRobot v2/v3 data sets.

Every reader returns a list of :class:`Episode`, the one in-memory form the chunk data set uses::

    Episode(actions (T, A) float32, obs {key: (T, ...)}, language str, task_index int, name str)

Low-dimensional observations are float32 arrays (T, D); images are uint8 (T, H, W, 3) under
``<camera>_rgb``. When a file has no ``state`` key but has LIBERO's official ``ee_pos`` (3),
``ee_ori`` (3, axis-angle) and ``gripper_states`` (2), ``state`` is built from them (8 numbers, the
same layout our LIBERO envs write).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Keys concatenated, in this order, into the 8-d `state` of official LIBERO files.
LIBERO_STATE_PARTS: tuple[tuple[str, int], ...] = (("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2))


@dataclass
class Episode:
    """One demonstration: ``actions`` (T, A) float32 and observations ``obs[key]`` with T rows."""

    actions: np.ndarray
    obs: dict[str, np.ndarray]
    language: str
    task_index: int = 0
    name: str = ""
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when shapes or values are inconsistent."""
        if self.actions.ndim != 2 or self.actions.shape[0] == 0:
            raise ValueError(f"{self.name}: actions: expected shape (T>0, A), got {self.actions.shape}")
        if not np.all(np.isfinite(self.actions)):
            raise ValueError(f"{self.name}: actions: contains NaN or inf")
        for key, value in self.obs.items():
            if value.shape[0] != len(self):
                raise ValueError(
                    f"{self.name}: obs[{key!r}]: expected {len(self)} rows like actions, got {value.shape[0]}"
                )


# ----------------------------------------------------------------------------------------------
# HDF5 (robomimic / LIBERO layout, docs/CONTRIBUTING.md)
# ----------------------------------------------------------------------------------------------


def _demo_sort_key(name: str) -> tuple[int, str]:
    match = re.search(r"(\d+)$", name)
    return (int(match.group(1)) if match else 1 << 30, name)


def _language_from_file(data_attrs, path: Path) -> str:
    """Task language from /data attrs (problem_info JSON) or, as official LIBERO names files, the name."""
    info = data_attrs.get("problem_info")
    if info is not None:
        if isinstance(info, bytes):
            info = info.decode()
        try:
            lang = json.loads(info).get("language_instruction")
        except (json.JSONDecodeError, AttributeError):
            lang = None
        if lang:
            return str(lang).strip()
    stem = re.sub(r"_demo$", "", path.stem)
    return stem.replace("_", " ").strip()


def _as_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return str(value)


def read_hdf5_file(
    path: str | Path,
    obs_keys: list[str] | None = None,
    task_index: int | None = None,
    max_episodes: int | None = None,
) -> list[Episode]:
    """Read every ``/data/demo_<i>`` of one file, in numeric order.

    ``obs_keys`` selects observation keys (``None``: every key under ``obs/``); asking for ``state``
    in an official LIBERO file builds it from ``ee_pos``, ``ee_ori``, ``gripper_states``.
    ``task_index`` overrides the per-demo attribute (a directory of one-task files numbers them).
    """
    import h5py

    path = Path(path)
    episodes: list[Episode] = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{path}: expected a /data group (robomimic/LIBERO layout), found {list(f)}")
        data = f["data"]
        file_language = _language_from_file(data.attrs, path)
        names = sorted((k for k in data if k.startswith("demo")), key=_demo_sort_key)
        if not names:
            raise ValueError(f"{path}: /data has no demo_<i> groups")
        for name in names[:max_episodes]:
            demo = data[name]
            if "actions" not in demo:
                raise ValueError(f"{path}:/data/{name}: missing the 'actions' data set")
            actions = np.asarray(demo["actions"][()], dtype=np.float32)
            obs_group = demo["obs"] if "obs" in demo else {}
            available = list(obs_group.keys())
            wanted = list(available) if obs_keys is None else list(obs_keys)
            if obs_keys is None and "state" not in available and _has_libero_parts(available):
                wanted.append("state")
            obs: dict[str, np.ndarray] = {}
            for key in wanted:
                if key in obs_group:
                    obs[key] = _load_obs_array(obs_group[key][()])
                elif key == "state" and _has_libero_parts(available):
                    parts = [np.asarray(obs_group[k][()], np.float32) for k, _ in LIBERO_STATE_PARTS]
                    obs["state"] = np.concatenate(parts, axis=1)
                else:
                    listed = ", ".join(available) or "(none)"
                    raise ValueError(f"{path}:/data/{name}/obs: no key {key!r}; available: {listed}")
            attrs = {k: _attr_value(v) for k, v in demo.attrs.items()}
            language = _as_str(attrs["language"]) if attrs.get("language") else file_language
            index = task_index if task_index is not None else int(attrs.get("task_index", 0))
            episode = Episode(actions, obs, language, index, f"{path.name}:{name}", attrs)
            episode.validate()
            episodes.append(episode)
    return episodes


def _has_libero_parts(keys: list[str]) -> bool:
    return all(k in keys for k, _ in LIBERO_STATE_PARTS)


def _load_obs_array(value: np.ndarray) -> np.ndarray:
    if value.dtype == np.uint8:
        return value
    value = np.asarray(value, dtype=np.float32)
    return value[:, None] if value.ndim == 1 else value


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_hdf5(
    path: str | Path, obs_keys: list[str] | None = None, max_episodes_per_file: int | None = None
) -> list[Episode]:
    """Read one HDF5 file or every ``*.hdf5``/``*.h5`` file in a directory (sorted by name).

    In a directory of official LIBERO files (one task per file, no ``task_index`` attribute) the
    task index is the file's position among tasks sorted by language.
    """
    path = Path(path)
    if path.is_file():
        return read_hdf5_file(path, obs_keys, max_episodes=max_episodes_per_file)
    files = sorted(p for p in path.iterdir() if p.suffix in {".hdf5", ".h5"}) if path.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{path}: expected an HDF5 file or a directory of *.hdf5 files")
    episodes: list[Episode] = []
    for file in files:
        episodes.extend(read_hdf5_file(file, obs_keys, max_episodes=max_episodes_per_file))
    if not any("task_index" in ep.attrs for ep in episodes):
        languages = sorted({ep.language for ep in episodes})
        for ep in episodes:
            ep.task_index = languages.index(ep.language)
    return episodes


# ----------------------------------------------------------------------------------------------
# LeRobot v2.x / v3.0 (parquet episodes + meta/info.json; videos under videos/)
# ----------------------------------------------------------------------------------------------

LEROBOT_ACTION_KEY = "action"
LEROBOT_STATE_KEY = "observation.state"


def _lerobot_tasks(root: Path) -> dict[int, str]:
    jsonl = root / "meta" / "tasks.jsonl"
    if jsonl.exists():  # v2.x: {"task_index": 0, "task": "..."} per line
        tasks = {}
        for line in jsonl.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                tasks[int(row["task_index"])] = str(row["task"])
        return tasks
    table_path = root / "meta" / "tasks.parquet"
    if table_path.exists():  # v3.0: one row per task, the task string as the index column
        import pyarrow.parquet as pq

        table = pq.read_table(table_path).to_pydict()
        text_col = "task" if "task" in table else next(k for k in table if k != "task_index")
        return {int(i): str(t) for i, t in zip(table["task_index"], table[text_col], strict=True)}
    return {}


def _camera_name(feature_key: str) -> str:
    """``observation.images.agentview`` -> ``agentview_rgb`` (our image key convention)."""
    name = feature_key.split(".")[-1]
    return name if name.endswith("_rgb") else f"{name}_rgb"


def _lerobot_episode_meta(root: Path) -> dict[int, dict]:
    """Per-episode rows of v3.0 ``meta/episodes/*/*.parquet`` (video file and time offsets)."""
    import pyarrow.parquet as pq

    rows: dict[int, dict] = {}
    for file in sorted((root / "meta" / "episodes").glob("**/*.parquet")):
        table = pq.read_table(file).to_pylist()
        for row in table:
            rows[int(row["episode_index"])] = row
    return rows


def _read_video_frames(path: Path, frame_indices: np.ndarray) -> np.ndarray:
    """Decode the frames ``frame_indices`` (0-based) of a video file into (N, H, W, 3) uint8."""
    import imageio.v2 as imageio

    if not path.exists():
        raise FileNotFoundError(f"video {path} listed by meta/info.json does not exist")
    wanted = set(int(i) for i in frame_indices)
    last = max(wanted)
    frames: dict[int, np.ndarray] = {}
    reader = imageio.get_reader(path, format="ffmpeg")
    try:
        for i, frame in enumerate(reader):
            if i in wanted:
                frames[i] = np.asarray(frame, dtype=np.uint8)
            if i >= last:
                break
    finally:
        reader.close()
    decoded = len(frames)
    out = []
    for i in frame_indices:
        # A video may hold a frame fewer than the table (encoder rounding); repeat the last one.
        out.append(frames.get(int(i), frames[max(frames)] if decoded else None))
    if not decoded:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(out)


def _decode_image_cell(cell) -> np.ndarray:
    import io

    import imageio.v2 as imageio

    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return np.asarray(imageio.imread(io.BytesIO(cell)), dtype=np.uint8)[..., :3]


def read_lerobot(
    root: str | Path,
    obs_keys: list[str] | None = None,
    load_images: bool = True,
    max_episodes: int | None = None,
) -> list[Episode]:
    """Read a LeRobot data set (codebase v2.x or v3.0) from its root folder.

    Actions come from ``action``; ``observation.state`` becomes ``state``; other
    ``observation.<name>`` vectors keep ``<name>``; image and video features become
    ``<camera>_rgb`` (T, H, W, 3) uint8 when ``load_images``. ``obs_keys`` (our names) selects keys.
    """
    import pyarrow.parquet as pq

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{root}: expected meta/info.json (a LeRobot data set root)")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", "v2.0"))
    if not version.startswith(("v2", "v3")):
        raise ValueError(f"{info_path}: codebase_version: expected v2.x or v3.0, got {version!r}")
    features: dict = info.get("features", {})
    if LEROBOT_ACTION_KEY not in features:
        raise ValueError(f"{info_path}: features: expected an {LEROBOT_ACTION_KEY!r} feature")
    fps = float(info.get("fps", 0) or 0)
    tasks = _lerobot_tasks(root)

    # Our observation key for each LeRobot feature.
    vector_keys: dict[str, str] = {}
    image_keys: dict[str, str] = {}
    for key, spec in features.items():
        if not key.startswith("observation."):
            continue
        if spec.get("dtype") in {"video", "image"}:
            image_keys[key] = _camera_name(key)
        else:
            vector_keys[key] = "state" if key == LEROBOT_STATE_KEY else key[len("observation.") :]
    if obs_keys is not None:
        known = set(vector_keys.values()) | set(image_keys.values())
        missing = [k for k in obs_keys if k not in known]
        if missing:
            raise ValueError(f"{info_path}: no feature for obs keys {missing}; available: {sorted(known)}")
        vector_keys = {k: v for k, v in vector_keys.items() if v in obs_keys}
        image_keys = {k: v for k, v in image_keys.items() if v in obs_keys}
    if not load_images:
        image_keys = {}

    files = sorted((root / "data").glob("**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}/data: no parquet files")
    columns: dict[str, list] = {}
    wanted_cols = ["episode_index", "frame_index", "timestamp", "task_index", LEROBOT_ACTION_KEY]
    wanted_cols += list(vector_keys)
    wanted_cols += [k for k, spec in image_keys.items() if features[k]["dtype"] == "image"]
    for file in files:
        table = pq.read_table(file)
        for col in wanted_cols:
            if col in table.column_names:
                columns.setdefault(col, []).extend(table.column(col).to_pylist())
    if "episode_index" not in columns:
        raise ValueError(f"{root}/data: parquet files have no 'episode_index' column")

    episode_index = np.asarray(columns["episode_index"], dtype=np.int64)
    frame_index = np.asarray(columns.get("frame_index", np.zeros_like(episode_index)), dtype=np.int64)
    timestamps = np.asarray(columns.get("timestamp", frame_index / max(fps, 1.0)), dtype=np.float64)
    episode_meta = _lerobot_episode_meta(root) if version.startswith("v3") else {}
    chunks_size = int(info.get("chunks_size", 1000))

    episodes: list[Episode] = []
    for ep in sorted(set(episode_index.tolist()))[:max_episodes]:
        rows = np.flatnonzero(episode_index == ep)
        rows = rows[np.argsort(frame_index[rows], kind="stable")]
        actions = np.asarray([columns[LEROBOT_ACTION_KEY][i] for i in rows], dtype=np.float32)
        if actions.ndim == 1:
            actions = actions[:, None]
        obs: dict[str, np.ndarray] = {}
        for col, ours in vector_keys.items():
            values = np.asarray([columns[col][i] for i in rows], dtype=np.float32)
            obs[ours] = values[:, None] if values.ndim == 1 else values
        for col, ours in image_keys.items():
            if features[col]["dtype"] == "image":
                obs[ours] = np.stack([_decode_image_cell(columns[col][i]) for i in rows])
            else:
                obs[ours] = _lerobot_video(
                    root, info, col, ep, timestamps[rows], fps, chunks_size, episode_meta
                )
        task = int(columns["task_index"][rows[0]]) if "task_index" in columns else 0
        if task not in tasks and tasks:
            raise ValueError(f"{root}: episode {ep} has task_index {task}, not in meta/tasks")
        episode = Episode(actions, obs, tasks.get(task, ""), task, f"{root.name}:episode_{ep}")
        episode.validate()
        episodes.append(episode)
    return episodes


def _lerobot_video(
    root: Path,
    info: dict,
    key: str,
    episode: int,
    timestamps: np.ndarray,
    fps: float,
    chunks_size: int,
    episode_meta: dict[int, dict],
) -> np.ndarray:
    """Frames of video feature ``key`` at ``timestamps`` (seconds) of ``episode``: (T, H, W, 3) uint8."""
    template = info.get("video_path")
    if not template:
        raise ValueError(f"{root}/meta/info.json: video feature {key!r} but no 'video_path' template")
    if fps <= 0:
        raise ValueError(f"{root}/meta/info.json: fps: expected a positive number for video features")
    offset = 0.0
    if episode_meta:  # v3.0: many episodes per file, located by the episodes table
        meta = episode_meta.get(episode)
        if meta is None:
            raise ValueError(f"{root}/meta/episodes: no row for episode {episode}")
        chunk = int(meta.get(f"videos/{key}/chunk_index", 0))
        file_index = int(meta.get(f"videos/{key}/file_index", 0))
        offset = float(meta.get(f"videos/{key}/from_timestamp", 0.0))
        rel = template.format(video_key=key, chunk_index=chunk, file_index=file_index)
    else:  # v2.x: one file per episode
        rel = template.format(video_key=key, episode_chunk=episode // chunks_size, episode_index=episode)
    frames = np.round((offset + timestamps) * fps).astype(np.int64)
    return _read_video_frames(root / rel, frames)


# ----------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """``"lerobot"`` for a folder with meta/info.json, ``"hdf5"`` for an HDF5 file or folder of them."""
    path = Path(path)
    if (path / "meta" / "info.json").exists():
        return "lerobot"
    if path.is_file() and path.suffix in {".hdf5", ".h5"}:
        return "hdf5"
    if path.is_dir() and any(p.suffix in {".hdf5", ".h5"} for p in path.iterdir()):
        return "hdf5"
    raise FileNotFoundError(
        f"{path}: expected an HDF5 demo file, a folder of *.hdf5 files, or a LeRobot root with meta/info.json"
    )


def read_episodes(
    path: str | Path, obs_keys: list[str] | None = None, fmt: str = "auto", load_images: bool = True
) -> list[Episode]:
    """Read demos from ``path`` in any supported format (``fmt``: auto, hdf5, lerobot)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "hdf5":
        if not load_images and obs_keys is not None:
            obs_keys = [k for k in obs_keys if not k.endswith("_rgb")]
        return read_hdf5(path, obs_keys)
    if fmt == "lerobot":
        return read_lerobot(path, obs_keys, load_images=load_images)
    raise ValueError(f"data format: expected 'auto', 'hdf5' or 'lerobot', got {fmt!r}")
