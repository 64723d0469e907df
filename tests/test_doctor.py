"""`doctor`: each check passes on a working set-up and fails, with a fix, on a broken one."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from dfm_vla.policy.config import ModelConfig
from dfm_vla.serve import doctor
from dfm_vla.serve.doctor import FAIL, OK, WARN


def test_requirements_are_compared_with_installed_versions():
    ok = doctor.check_requirement("numpy>=1.0")
    assert ok.status == OK and np.__version__ in ok.detail
    old = doctor.check_requirement("numpy>=999")
    assert old.status == FAIL and old.failed and "needs >=999" in old.detail
    assert "pip install 'numpy>=999'" in old.fix
    missing = doctor.check_requirement("surely-not-installed-dfm-pkg>=1")
    assert missing.status == FAIL and "not installed" in missing.detail
    optional = doctor.check_requirement("surely-not-installed-dfm-pkg>=1", required=False)
    assert optional.status == WARN and not optional.failed
    assert doctor.check_requirement("numpy>=1; platform_system == 'NoSuchOS'") is None  # marker excludes it


def test_every_project_requirement_is_satisfied_in_this_venv():
    rows = doctor.check_packages()
    names = {r.name for r in rows}
    assert {"python", "torch", "numpy", "msgpack", "websockets"} <= names
    assert not [r for r in rows if r.failed], [r for r in rows if r.failed]


def test_rendering_finds_the_working_backend_and_explains_a_broken_one(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    results = {b: doctor.render_one_frame(b) for b in ("egl", "no-such-gl")}  # real frames, fresh processes
    assert results["egl"][0] and "64x64 frame" in results["egl"][1]
    assert not results["no-such-gl"][0] and results["no-such-gl"][1]

    rows = {r.name: r for r in doctor.rendering_rows(results, chosen="egl")}
    assert rows["MuJoCo egl"].status == OK and rows["MUJOCO_GL"].status == OK
    broken = rows["MuJoCo no-such-gl"]
    assert broken.status == WARN and not broken.failed  # EGL works, so this one is optional

    only_broken = doctor.rendering_rows({"no-such-gl": results["no-such-gl"]}, chosen="egl")
    assert only_broken[0].status == FAIL and only_broken[0].failed

    # MUJOCO_GL pointing at a back-end that fails: a failure, with the working one as the fix.
    rows = {r.name: r for r in doctor.rendering_rows(results, chosen="no-such-gl")}
    assert rows["MUJOCO_GL"].failed and rows["MUJOCO_GL"].fix == "export MUJOCO_GL=egl"
    unset = {r.name: r for r in doctor.rendering_rows(results, chosen=None)}["MUJOCO_GL"]
    assert unset.status == WARN and unset.fix == "export MUJOCO_GL=egl"


def test_libero_assets_and_initial_states_are_found():
    rows = doctor.check_libero(("libero_goal",))
    by_name = {r.name: r for r in rows}
    assert by_name["assets"].status == OK
    assert by_name["libero_goal"].status == OK and "10 tasks" in by_name["libero_goal"].detail


def test_torch_rows_on_this_machine():
    rows = {r.name: r for r in doctor.check_torch()}
    assert rows["torch"].status == OK and rows["cpu bf16 + sdpa"].status == OK
    assert not any(r.failed for r in rows.values())


def _write_checkpoint_files(folder, state_std):
    folder.mkdir()
    model = ModelConfig(action_dim=7, num_action_slots=56).to_dict()
    (folder / "config.json").write_text(
        json.dumps({"format": "dfm_vla.policy", "version": 1, "model": model})
    )
    for name in ("action_tokenizer", "text_tokenizer"):
        (folder / name).mkdir()
        (folder / name / "tokenizer.json").write_text("{}")
    save_file({"w": np.zeros((4, 4), np.float32)}, str(folder / "model.safetensors"))
    (folder / "normalization.json").write_text(json.dumps({"state": {"mean": [0.0, 1.0], "std": state_std}}))


def test_checkpoint_files_and_statistics(tmp_path):
    good = tmp_path / "good"
    _write_checkpoint_files(good, [1.0, 2.0])
    rows = {r.name: r for r in doctor.check_checkpoint(good, load=False)}
    assert [r.status for r in rows.values()] == [OK, OK, OK, OK], rows
    assert "1 tensors" in rows["weights"].detail

    nan = tmp_path / "nan"
    _write_checkpoint_files(nan, [1.0, float("nan")])
    stats = {r.name: r for r in doctor.check_checkpoint(nan, load=False)}["normalisation stats"]
    assert stats.failed and "state.std has NaN" in stats.detail and stats.fix

    negative = tmp_path / "negative"
    _write_checkpoint_files(negative, [1.0, -0.5])
    stats = {r.name: r for r in doctor.check_checkpoint(negative, load=False)}["normalisation stats"]
    assert stats.failed and "state.std has negative values" in stats.detail

    # a state feature that never moved in the demos (a fixed fixture) has std 0: fine, and said so
    zero = tmp_path / "zero"
    _write_checkpoint_files(zero, [1.0, 0.0])
    stats = {r.name: r for r in doctor.check_checkpoint(zero, load=False)}["normalisation stats"]
    assert stats.status == OK and "1 constant features" in stats.detail

    truncated = tmp_path / "truncated"
    _write_checkpoint_files(truncated, [1.0, 1.0])
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    weights = {r.name: r for r in doctor.check_checkpoint(truncated, load=False)}["weights"]
    assert weights.failed and "model.safetensors" in weights.detail

    (good / "config.json").write_text(json.dumps({"format": "dfm_vla.policy", "model": {"hidden": 3}}))
    config = doctor.check_checkpoint(good, load=False)[0]
    assert config.failed and "unknown fields ['hidden']" in config.detail
    (good / "config.json").unlink()
    config = doctor.check_checkpoint(good, load=False)[0]
    assert config.name == "config.json" and config.failed and "missing" in config.detail
    import shutil

    shutil.rmtree(good / "text_tokenizer")
    tokenizers = {r.name: r for r in doctor.check_checkpoint(good, load=False)}["tokenizers"]
    assert tokenizers.failed and "text_tokenizer" in tokenizers.detail


def test_disk_threshold(tmp_path):
    assert doctor.check_disk(tmp_path, min_free_gb=0.0, want_free_gb=0.0).status == OK
    full = doctor.check_disk(tmp_path / "not" / "made" / "yet", min_free_gb=1e9)
    assert full.failed and "GiB free" in full.detail and full.fix


@pytest.mark.parametrize("broken", [False, True])
def test_doctor_command_exit_status(tmp_path, broken, capsys, monkeypatch):
    from dfm_vla import cli

    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "doctor.json"
    argv = ["doctor", "--json", str(out)]
    if broken:
        argv += ["--no-render", "--no-libero", "--policy", str(tmp_path / "missing")]
    code = cli.main(argv)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    if broken:
        assert code == 1 and not report["ok"]
        assert "is not a folder" in printed and "required check(s) failed" in printed
    else:
        assert code == 0 and report["ok"], printed
        assert "all required checks pass" in printed
        groups = {c["group"] for c in report["checks"]}
        assert {"python", "packages", "render", "libero", "torch", "disk"} <= groups


def test_a_real_checkpoint_loads_and_plans(tmp_path):
    from dfm_vla.serve.bench_serve import write_random_checkpoint

    small = dict(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    folder = write_random_checkpoint(tmp_path / "tiny", horizon=4, **small)
    rows = {r.name: r for r in doctor.check_checkpoint(folder)}
    assert all(r.status == OK for r in rows.values()), rows
    assert "1 layers, hidden 32" in rows["config.json"].detail
    assert "first action (7,)" in rows["loads and plans"].detail

    (folder / "model.safetensors").unlink()  # and a broken one is refused before loading
    rows = {r.name: r for r in doctor.check_checkpoint(folder)}
    assert rows["weights"].failed and "loads and plans" not in rows


def test_requirements_from_installed_metadata_split_core_and_extras():
    requires_python, core, extras = doctor.installed_requirements("dfm-vla")
    assert requires_python == ">=3.11" and any(r.startswith("torch") for r in core)
    assert (
        extras["dev"]
        and all("extra" not in r for r in extras["dev"])
        and not any("pytest" in r for r in core)
    )


def test_every_shipped_policy_passes_the_checkpoint_checks(repo_root):
    """A newcomer's `doctor --policy checkpoints/...` must not report the shipped policies as broken."""
    for folder in sorted((repo_root / "checkpoints").glob("**/config.json")):
        rows = doctor.check_checkpoint(folder.parent, load=False)
        assert all(not r.failed for r in rows), (folder.parent.name, [(r.name, r.detail) for r in rows])
