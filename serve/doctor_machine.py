"""Doctor checks of this machine's software and disk: Python and package versions against the
project's requirements, torch (CUDA, bf16, scaled-dot-product attention, flash-attn), free disk."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dfm_vla.serve.doctor_report import FAIL, OK, SKIP, WARN, Check

REPO_ROOT = Path(__file__).resolve().parents[1]

# Extra fix advice for packages whose plain `pip install` is the wrong answer.
PACKAGE_FIXES = {
    "torch": "pip install torch==2.13.0 (CPU build from the local wheel), or a CUDA build for GPUs",
    "flash-attn": "pip install flash-attn --no-build-isolation (needs CUDA and a matching torch)",
}


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
