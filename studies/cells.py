"""One study cell = train a policy (or reuse a trained one) + evaluate it on an env's protocol.

Layout under a study's ``--out`` folder::

    train/<objective>-frac<f>-seed<s>-<hash>/  one training run (its TrainConfig.out_dir), shared by every
        study_train.json                       cell with the same training identity; written last
    cells/<key>/spec.json                      what the cell is (written when it starts)
    cells/<key>/eval/results.json              per-episode results (ResultsFile: resumable)
    cells/<key>/cell.json                      the cell's result, written last and atomically

A cell whose ``cell.json`` exists is never recomputed: it is read back after checking that it was made
with the same specification (a changed step budget or protocol raises an error naming the field rather
than mixing results). An interrupted cell resumes: training from its latest checkpoint, evaluation
from its last finished episode. One study process per ``--out`` folder at a time.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfm_vla.utils.io import atomic_write_json, to_jsonable

# TrainConfig fields that do not change what is learned (left out of a training run's identity).
BOOKKEEPING_FIELDS = (
    "out_dir",
    "torch_threads",
    "log_every",
    "eval_every",
    "eval_batches",
    "eval_at_start",
    "save_every",
    "keep_checkpoints",
    "tensorboard",
    "max_minutes",
)
TRAIN_DONE_FILE = "study_train.json"


@dataclass
class TrainSpec:
    """A training run: a TrainConfig YAML file (or None) plus field overrides (``{"objective": "dd"}``)."""

    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def resolve(self):
        """The resolved :class:`~dfm_vla.train.config.TrainConfig` (validated)."""
        from dfm_vla.train.config import load_config

        return load_config(self.config, dict(self.overrides))


@dataclass
class EvalSpec:
    """How a cell's policy is evaluated. ``episodes_per_task`` None: the env's full protocol.

    ``steps``: (T_fine, T_val) for DFM; for DD and AR the decoder's own steps (T_fine + T_val for DD).
    ``schedule``: (c, alpha) of beta_t = c (t / (1 - t))^alpha used at decoding time (None: the policy's).
    """

    env: str = "libero_goal"
    decoder: str | None = None
    steps: tuple[int, int] | None = None
    schedule: tuple[float, float] | None = None
    warm_start: bool | None = None  # DFM: refine from the previous plan; None keeps the checkpoint's
    episodes_per_task: int | None = None
    tasks: list[int] | None = None
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


@dataclass
class Cell:
    """One point of a study: ``key`` names its folder, ``labels`` are its table columns."""

    key: str
    labels: dict[str, Any]
    eval: EvalSpec
    train: TrainSpec | None = None
    policy_dir: str | None = None  # evaluate this trained policy instead of training one

    def __post_init__(self) -> None:
        if (self.train is None) == (self.policy_dir is None):
            raise ValueError(f"cell {self.key!r}: give exactly one of train= or policy_dir=")
        if not self.key or "/" in self.key or self.key.startswith("."):
            raise ValueError(f"cell key {self.key!r}: expected a plain folder name")


@dataclass
class RunOptions:
    """How cells run here (not part of their identity): parallel env processes, torch threads, bars."""

    num_envs: int = 1
    torch_threads: int | None = None
    progress: bool = True


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(obj)))


def train_identity(config) -> dict[str, Any]:
    """What a training run learns from: the resolved TrainConfig without bookkeeping fields, and a
    fingerprint of the demo files (so demos collected into the same folder later are noticed)."""
    values = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_FIELDS}
    values["data"] = [str(Path(p).resolve()) for p in values.get("data", [])]
    values["data_fingerprint"] = [data_fingerprint(p) for p in values["data"]]
    return _jsonable(values)


DATA_SUFFIXES = (".hdf5", ".h5", ".hdf", ".parquet", ".mp4", ".json", ".jsonl")


def data_fingerprint(path: str | Path) -> str:
    """``<files>f-<bytes>b-<hash>`` of the names and sizes of the demo files at ``path`` ("missing" if none).

    Counts data files only (HDF5, LeRobot parquet/video/meta), not logs or a collector's ``*.parts``
    work folders, so a collection log growing beside finished demos does not change it.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in DATA_SUFFIXES
            and not any(part.startswith(".") or part.endswith(".parts") for part in p.relative_to(path).parts)
        )
    else:
        return "missing"
    entries = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size) for p in files]
    return f"{len(entries)}f-{sum(size for _, size in entries)}b-{short_hash(entries)}"


def short_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(_jsonable(obj), sort_keys=True).encode()).hexdigest()[:8]


def train_defaults() -> dict[str, Any]:
    """TrainConfig's dataclass defaults, as identity values (``{"lr": 8e-05, ...}``)."""
    from dfm_vla.train.config import TrainConfig

    return train_identity(TrainConfig())


def train_dir_name(identity: dict[str, Any]) -> str:
    """``dfm-frac0.1-seed0-1a2b3c4d``: readable, and distinct for every distinct identity.

    The hash covers the fields that differ from TrainConfig's defaults, so a field added to TrainConfig
    later (at its default) keeps the folder name and a finished run is still found.
    """
    defaults = train_defaults()
    changed = {k: v for k, v in identity.items() if k not in defaults or defaults[k] != v}
    name = f"{identity['objective']}-frac{identity['data_fraction']:g}-seed{identity['seed']}"
    return f"{name}-{short_hash(changed)}"


def cell_identity(cell: Cell) -> dict[str, Any]:
    """Everything that decides a cell's result (compared when a finished cell is reused)."""
    ident: dict[str, Any] = {"eval": asdict(cell.eval)}
    if cell.train is not None:
        ident["train"] = train_identity(cell.train.resolve())
    else:
        ident["policy_dir"] = str(Path(cell.policy_dir).resolve())
    return _jsonable(ident)


def first_difference(
    old: Any, new: Any, path: str = "", new_defaults: dict[str, Any] | None = None
) -> str | None:
    """Dotted path of the first field where ``old`` and ``new`` differ, with both values; None if equal.

    ``new_defaults``: {dotted path: default} of fields that may be absent from ``old`` (added to the code
    since) as long as ``new`` holds their default.
    """
    new_defaults = new_defaults or {}
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            where = f"{path}.{k}" if path else k
            if k not in old and k in new and where in new_defaults and new_defaults[where] == new[k]:
                continue
            if k not in old or k not in new:
                return f"{where}: {old.get(k, '(absent)')!r} vs {new.get(k, '(absent)')!r}"
            diff = first_difference(old[k], new[k], where, new_defaults)
            if diff:
                return diff
        return None
    return None if old == new else f"{path}: {old!r} vs {new!r}"


def _check_same(path: Path, stored: dict[str, Any], ident: dict[str, Any], prefix: str = "train.") -> None:
    defaults = {prefix + k: v for k, v in train_defaults().items()}
    diff = first_difference(stored, ident, new_defaults=defaults)
    if diff:
        raise ValueError(
            f"{path} was made with a different specification ({diff}, stored vs asked); "
            "use another --out, or delete that cell folder to recompute it"
        )


def load_finished(cell: Cell, root: str | Path) -> dict[str, Any] | None:
    """The stored result of ``cell`` under ``root`` if it finished (checked against its spec), else None."""
    path = Path(root) / "cells" / cell.key / "cell.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    _check_same(path, result["spec"], cell_identity(cell))
    result["labels"] = dict(cell.labels)  # labels are table columns, not identity (another study may name it)
    return _jsonable(result)


def run_cell(cell: Cell, root: str | Path, options: RunOptions | None = None, log=print) -> dict[str, Any]:
    """Train (or reuse) and evaluate ``cell`` under ``root``; returns the cell's result dict.

    A finished cell is read back, not recomputed. The result has ``key``, ``labels``, ``spec``,
    ``train`` (dir, steps, minutes, val_loss, val_token_accuracy) and ``eval`` (episodes, successes,
    success_rate, wilson95, mean_task_success_rate, per_task rates, ms_per_chunk, minutes).
    """
    options = options or RunOptions()
    root = Path(root)
    done = load_finished(cell, root)
    if done is not None:
        log(f"cell {cell.key}: finished earlier, reusing {root / 'cells' / cell.key / 'cell.json'}")
        return done
    cell_dir = root / "cells" / cell.key
    ident = cell_identity(cell)
    spec_path = cell_dir / "spec.json"
    if spec_path.exists():
        _check_same(spec_path, json.loads(spec_path.read_text()), ident)
    else:
        atomic_write_json(spec_path, ident)

    if cell.train is not None:
        train_info = train_policy(cell.train, root, options, log)
    else:
        if not Path(cell.policy_dir).is_dir():
            raise FileNotFoundError(f"cell {cell.key}: policy folder {cell.policy_dir} does not exist")
        train_info = {"dir": str(Path(cell.policy_dir).resolve()), "reused": True}
    eval_info = evaluate_policy(cell, train_info["dir"], cell_dir / "eval", options, log)
    result = {
        "key": cell.key,
        "labels": cell.labels,
        "spec": ident,
        "train": train_info,
        "eval": eval_info,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(cell_dir / "cell.json", result)
    return _jsonable(result)


def train_policy(spec: TrainSpec, root: Path, options: RunOptions, log=print) -> dict[str, Any]:
    """Run (or resume, or reuse) the training run of ``spec`` in ``root/train/<name>``; its metrics."""
    config = spec.resolve()
    ident = train_identity(config)
    out_dir = root / "train" / train_dir_name(ident)
    marker = out_dir / TRAIN_DONE_FILE
    if marker.exists():
        info = json.loads(marker.read_text())
        _check_same(marker, info["identity"], ident, prefix="")
        return info["result"]
    from dfm_vla.train.checkpointing import CHECKPOINT_DIR, LATEST_FILE
    from dfm_vla.train.loop import train

    config.out_dir = str(out_dir)
    config.max_minutes = 0.0  # every cell gets the same optimizer-step budget, not the same wall time
    if options.torch_threads:
        config.torch_threads = options.torch_threads
    resume = (out_dir / CHECKPOINT_DIR / LATEST_FILE).exists()
    log(f"training {out_dir.name}: {config.max_steps} steps ({'resuming' if resume else 'new run'})")
    start = time.perf_counter()
    # The trainer shows a bar on a terminal and prints a line every 30 s otherwise (log files).
    result = train(config, resume=resume, progress=True)
    minutes = (time.perf_counter() - start) / 60
    info = {
        "dir": str(Path(result.out_dir).resolve()),
        "steps": int(result.steps),
        "minutes": round(float(result.wall_minutes), 3),
        "minutes_this_process": round(minutes, 3),
        "val_loss": float(result.val_loss),
        "val_token_accuracy": float(result.val_token_accuracy),
        "stopped_by": str(result.stopped_by),
    }
    atomic_write_json(marker, {"identity": ident, "result": info})
    return info


def _policy_spec(cell: Cell, policy_dir: str):
    from dfm_vla.evaluation.policies import PolicySpec

    ev = cell.eval
    return PolicySpec(
        "checkpoint",
        str(Path(policy_dir).resolve()),
        decoder=ev.decoder,
        steps=tuple(ev.steps) if ev.steps else None,
        seed=ev.seed,
        device=ev.device,
        schedule=tuple(ev.schedule) if ev.schedule else None,
        warm_start=ev.warm_start,
    )


def evaluate_policy(
    cell: Cell, policy_dir: str, out_dir: Path, options: RunOptions, log=print
) -> dict[str, Any]:
    """Run the cell's evaluation protocol (resumable ResultsFile in ``out_dir``); its summary."""
    from dfm_vla.evaluation.results import ResultsFile, run_meta
    from dfm_vla.evaluation.runner import RunConfig, run_protocol

    ev = cell.eval
    spec = _policy_spec(cell, policy_dir)
    meta = run_meta(
        ev.env,
        spec,
        seed=ev.seed,
        episodes_per_task=ev.episodes_per_task,
        tasks=ev.tasks,
        study_cell=cell.key,
    )
    results = ResultsFile(out_dir, meta, resume=True)
    cfg = RunConfig(
        env=ev.env,
        policy=spec,
        out_dir=str(out_dir),
        env_kwargs=dict(ev.env_kwargs),
        torch_threads=options.torch_threads,
    )
    total = {"n": 0}
    start = time.perf_counter()
    stream = run_protocol(
        cfg,
        results,
        tasks=ev.tasks,
        episodes_per_task=ev.episodes_per_task,
        seed=ev.seed,
        num_envs=options.num_envs,
        on_total=lambda n: total.update(n=n),
    )
    with _EpisodeProgress(f"eval {cell.key}", len(results.episodes), options.progress, log) as bar:
        for result in stream:
            bar.advance(result.success, total["n"])
    summary = results.summary()
    overall = summary["overall"]
    ms = [e["policy_ms_per_plan"] for e in results.episodes if e.get("policy_ms_per_plan") is not None]
    log(
        f"cell {cell.key}: {overall['successes']}/{overall['episodes']} successes "
        f"({100 * overall['success_rate']:.1f}%)"
    )
    return {
        "dir": str(out_dir),
        "episodes": overall["episodes"],
        "successes": overall["successes"],
        "success_rate": overall["success_rate"],
        "wilson95": list(overall["wilson95"]),
        "mean_task_success_rate": overall["mean_task_success_rate"],
        "per_task": {k: v["success_rate"] for k, v in summary["per_task"].items()},
        "mean_length": (
            sum(e["length"] for e in results.episodes) / len(results.episodes) if results.episodes else None
        ),
        "ms_per_chunk": statistics.median(ms) if ms else None,
        "minutes": round((time.perf_counter() - start) / 60, 3),
    }


class _EpisodeProgress:
    """A cell's episodes: a rich bar on a terminal, else (log files, --no-progress) a line every 30 s."""

    def __init__(self, title: str, already: int, bar: bool, log=print):
        self.title, self.done, self.wins, self.log = title, already, 0, log
        self.bar, self.progress, self.last_line = bar, None, time.monotonic()

    def __enter__(self):
        from rich.console import Console

        if self.bar and Console().is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=None, completed=self.done)
        return self

    def advance(self, success: bool, total: int) -> None:
        self.done += 1
        self.wins += int(success)
        if self.progress is not None:
            desc = f"{self.title} ({self.wins} new successes)"
            self.progress.update(self.task, completed=self.done, total=total or None, description=desc)
        elif time.monotonic() - self.last_line > 30 or self.done == total:
            self.last_line = time.monotonic()
            self.log(f"{self.title}: {self.done}/{total} episodes ({self.wins} new successes)")

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def run_cells(
    cells: list[Cell], root: str | Path, options: RunOptions | None = None, log=print
) -> list[dict]:
    """Run ``cells`` in order (each resumable, finished ones reused); their results in the same order."""
    keys = [c.key for c in cells]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"cell keys must be unique, repeated: {dupes}")
    results = []
    for i, cell in enumerate(cells, 1):
        log(f"[{i}/{len(cells)}] cell {cell.key}")
        results.append(run_cell(cell, root, options, log))
    return results


def cell_status(cell: Cell, root: str | Path) -> str:
    """``finished`` (cell.json exists), ``started`` (spec.json only) or ``new``."""
    cell_dir = Path(root) / "cells" / cell.key
    if (cell_dir / "cell.json").exists():
        return "finished"
    return "started" if (cell_dir / "spec.json").exists() else "new"
