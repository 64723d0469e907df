"""Demo files in the common HDF5 layout (robomimic / LIBERO style, see docs/CONTRIBUTING.md).

``DemoWriter`` collects demos for one file crash-safely: every finished demo is first written
atomically to its own part file (``<file>.parts/demo_<i>.hdf5``), so a crash loses at most the demo in
progress; ``finalize()`` merges the existing file and the parts into ``<file>`` atomically and removes
the parts. A writer opened on an existing file or parts folder resumes after the demos it finds.
``read_demo_file`` reads a file back (ours or an official LIBERO one).

Layout::

    /data                 attrs: total, env_name, env_args (JSON), problem_info (JSON), bddl_file_name
    /data/demo_<i>        attrs: num_samples, language, success, seed, task_index (+ any extra attrs)
        actions (T, A) float64, states (T, S) float64 (optional), rewards (T,), dones (T,)
        obs/<key> (T, ...): float arrays, images uint8 (T, H, W, 3) under <camera>_rgb
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfm_vla.utils.io import atomic_path

_PART_RE = re.compile(r"^demo_(\d+)\.hdf5$")


@dataclass
class Demo:
    """One demonstration: ``actions`` (T, A), ``obs`` {key: (T, ...)}, optional ``states`` (T, S)."""

    actions: np.ndarray
    obs: dict[str, np.ndarray]
    language: str
    success: bool
    seed: int
    task_index: int
    states: np.ndarray | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, np.float64)
        if self.actions.ndim != 2:
            raise ValueError(f"actions: expected shape (T, A), got {self.actions.shape}")
        n = len(self.actions)
        for key, value in self.obs.items():
            if len(value) != n:
                raise ValueError(f"obs[{key!r}]: expected {n} rows (one per action), got {len(value)}")
        if self.states is not None and len(self.states) != n:
            raise ValueError(f"states: expected {n} rows, got {len(self.states)}")
        if self.rewards is None:
            self.rewards = np.zeros(n)
            if n and self.success:
                self.rewards[-1] = 1.0
        if self.dones is None:
            self.dones = np.zeros(n, np.int64)
            if n:
                self.dones[-1] = 1

    @property
    def num_samples(self) -> int:
        return len(self.actions)


def _write_demo_group(group, demo: Demo) -> None:
    group.attrs["num_samples"] = demo.num_samples
    group.attrs["language"] = demo.language
    group.attrs["success"] = bool(demo.success)
    group.attrs["seed"] = int(demo.seed)
    group.attrs["task_index"] = int(demo.task_index)
    for key, value in demo.attrs.items():
        group.attrs[key] = value
    group.create_dataset("actions", data=demo.actions)
    if demo.states is not None:
        group.create_dataset("states", data=np.asarray(demo.states, np.float64))
    group.create_dataset("rewards", data=np.asarray(demo.rewards))
    group.create_dataset("dones", data=np.asarray(demo.dones))
    obs = group.create_group("obs")
    for key, value in demo.obs.items():
        value = np.asarray(value)
        if value.dtype == np.uint8 and value.ndim == 4:  # images: compress, chunk per frame
            obs.create_dataset(key, data=value, compression="lzf", chunks=(1, *value.shape[1:]))
        else:
            obs.create_dataset(key, data=value)


def _read_demo_group(group) -> Demo:
    known = {"num_samples", "language", "success", "seed", "task_index"}
    attrs = {k: v for k, v in group.attrs.items() if k not in known}
    return Demo(
        actions=group["actions"][()],
        obs={key: group["obs"][key][()] for key in group["obs"]} if "obs" in group else {},
        language=str(group.attrs.get("language", "")),
        success=bool(group.attrs.get("success", True)),
        seed=int(group.attrs.get("seed", -1)),
        task_index=int(group.attrs.get("task_index", -1)),
        states=group["states"][()] if "states" in group else None,
        rewards=group["rewards"][()] if "rewards" in group else None,
        dones=group["dones"][()] if "dones" in group else None,
        attrs=attrs,
    )


def _demo_index(name: str) -> int:
    return int(name.split("_", 1)[1])


class DemoWriter:
    """Append demos to one HDF5 file, crash-safely and resumably (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        env_name: str,
        env_args: dict[str, Any] | None = None,
        problem_info: dict[str, Any] | None = None,
        bddl_file_name: str = "",
    ) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.file_attrs = {
            "env_name": env_name,
            "env_args": json.dumps(env_args or {}),
            "problem_info": json.dumps(problem_info or {}),
            "bddl_file_name": bddl_file_name,
        }
        self._finalized_count = self._count_in_file()
        self._part_indices = sorted(self._scan_parts())

    def _count_in_file(self) -> int:
        if not self.path.exists():
            return 0
        import h5py

        with h5py.File(self.path, "r") as f:
            return len([k for k in f["data"] if k.startswith("demo_")])

    def _scan_parts(self) -> list[int]:
        if not self.parts_dir.is_dir():
            return []
        return [int(m.group(1)) for p in self.parts_dir.iterdir() if (m := _PART_RE.match(p.name))]

    def __len__(self) -> int:
        return self._finalized_count + len(self._part_indices)

    def seeds(self) -> list[int]:
        """Seeds of every demo written so far (file and parts), for resuming without repeats."""
        import h5py

        seeds = []
        sources = ([self.path] if self.path.exists() else []) + [
            self._part_path(i) for i in self._part_indices
        ]
        for src in sources:
            with h5py.File(src, "r") as f:
                seeds += [int(f["data"][k].attrs.get("seed", -1)) for k in f["data"] if k.startswith("demo_")]
        return seeds

    def _part_path(self, index: int) -> Path:
        return self.parts_dir / f"demo_{index}.hdf5"

    def add(self, demo: Demo) -> int:
        """Write ``demo`` atomically as the next demo; return its index."""
        import h5py

        index = len(self)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._part_path(index)) as tmp:
            with h5py.File(tmp, "w") as f:
                data = f.create_group("data")
                _write_demo_group(data.create_group(f"demo_{index}"), demo)
        self._part_indices.append(index)
        return index

    def finalize(self) -> Path:
        """Merge the existing file and all parts into ``path`` (atomic), then delete the parts."""
        import h5py

        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as out:
                data = out.create_group("data")
                for key, value in self.file_attrs.items():
                    data.attrs[key] = value
                total = count = 0
                sources = ([self.path] if self.path.exists() else []) + [
                    self._part_path(i) for i in sorted(self._part_indices)
                ]
                for src in sources:
                    with h5py.File(src, "r") as f:
                        for name in sorted(f["data"], key=_demo_index):
                            f.copy(f["data"][name], data, name=f"demo_{count}")
                            total += int(f["data"][name].attrs["num_samples"])
                            count += 1
                data.attrs["total"] = total
        self._finalized_count = self._count_in_file()
        self._part_indices = []
        if self.parts_dir.is_dir():
            shutil.rmtree(self.parts_dir)
        return self.path


def read_demo_file(path: str | Path) -> tuple[dict[str, Any], list[Demo]]:
    """Read a demo file: (the /data attrs with JSON fields decoded, demos in index order)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ValueError(f"{path}: expected a /data group (robomimic/LIBERO layout)")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["data"].attrs.items()}
        for key in ("env_args", "problem_info"):
            if isinstance(attrs.get(key), str):
                attrs[key] = json.loads(attrs[key])
        names = sorted((k for k in f["data"] if k.startswith("demo_")), key=_demo_index)
        return attrs, [_read_demo_group(f["data"][n]) for n in names]
