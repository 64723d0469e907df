"""The package installs under one namespace, the CLI answers, and the tree is ruff-clean."""

import shutil
import subprocess
import sys
import tomllib

import dfm_vla
from dfm_vla import cli


def test_folders_install_under_the_dfm_vla_namespace(repo_root):
    listed = set(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"dfm_vla"} | {
        "dfm_vla." + ".".join(p.parent.relative_to(repo_root).parts)
        for p in repo_root.rglob("__init__.py")
        if p.parent != repo_root and not {".venv", "tests", "build"} & set(p.relative_to(repo_root).parts)
    }
    assert on_disk == listed, "pyproject.toml [tool.setuptools] packages must list every package folder"
    assert dfm_vla.__version__


def test_every_command_and_benchmark_answers_help(repo_root):
    out = subprocess.run([sys.executable, "cli.py", "--help"], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in cli.COMMANDS:
        assert name in out.stdout
        res = subprocess.run([sys.executable, "cli.py", name, "--help"], cwd=repo_root, capture_output=True)
        assert res.returncode == 0, (name, res.stderr)
    parser = cli.build_parser()  # imports every command and benchmark module
    assert parser.prog == "dfm-vla"


def test_unknown_command_is_refused_with_the_choices(repo_root):
    out = subprocess.run([sys.executable, "cli.py", "fly"], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode != 0
    assert "invalid choice: 'fly'" in out.stderr


def test_ruff_is_clean(repo_root):
    ruff = shutil.which("ruff") or str(repo_root / ".venv" / "bin" / "ruff")
    out = subprocess.run([ruff, "check", "."], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
