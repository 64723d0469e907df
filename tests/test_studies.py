"""Studies: cell bookkeeping, tables, plots, and the three studies end to end at toy size on LIBERO-Goal."""

import json

import h5py
import numpy as np
import pytest

from dfm_vla import cli
from dfm_vla.studies.cells import Cell, EvalSpec, TrainSpec, first_difference, train_dir_name, train_identity
from dfm_vla.studies.decoding import split_of_total
from dfm_vla.studies.report import aggregate, markdown_table, per_seed_points, plot_bars, plot_data_scale

PNG = b"\x89PNG\r\n\x1a\n"


def _cell(key, labels, successes, episodes, ms=None, steps=100, val_loss=1.0):
    return {
        "key": key,
        "labels": labels,
        "train": {"steps": steps, "val_loss": val_loss},
        "eval": {
            "successes": successes,
            "episodes": episodes,
            "success_rate": successes / episodes,
            "ms_per_chunk": ms,
        },
    }


def test_aggregate_pools_episodes_over_seeds_and_reports_their_spread():
    cells = [
        _cell("a0", {"fraction": 0.1, "decoder": "dfm", "seed": 0}, 3, 10, ms=80.0),
        _cell("a1", {"fraction": 0.1, "decoder": "dfm", "seed": 1}, 7, 10, ms=90.0),
        _cell("b0", {"fraction": 0.1, "decoder": "ar", "seed": 0}, 0, 10),
    ]
    rows = aggregate(cells, ("fraction", "decoder"))
    assert [(r["fraction"], r["decoder"]) for r in rows] == [(0.1, "dfm"), (0.1, "ar")]
    dfm = rows[0]
    assert (dfm["seeds"], dfm["episodes"], dfm["successes"]) == (2, 20, 10)
    assert dfm["success_%"] == 50.0 and dfm["seed_mean_%"] == 50.0
    assert dfm["seed_min_%"] == 30.0 and dfm["seed_max_%"] == 70.0
    assert dfm["seed_sd_%"] == pytest.approx(28.28, abs=0.01)  # sample sd of 30 and 70
    assert dfm["wilson_lo_%"] < 50 < dfm["wilson_hi_%"]
    assert dfm["ms_per_chunk"] == 85.0
    ar = rows[1]
    assert ar["seed_sd_%"] == 0.0 and ar["ms_per_chunk"] is None and ar["wilson_lo_%"] == 0.0
    assert per_seed_points(cells, ("fraction", "decoder"))[(0.1, "dfm")] == [30.0, 70.0]
    with pytest.raises(ValueError, match="labels lack \\['variant'\\]"):
        aggregate(cells, ("variant",))


def test_markdown_table_and_plots_are_written(tmp_path):
    cells = [
        _cell(f"{f}-{d}-{s}", {"fraction": f, "decoder": d, "seed": s}, k, 10, ms=50.0 + k)
        for f in (0.1, 0.25, 1.0)
        for d in ("dfm", "dd", "ar")
        for s, k in ((0, 2), (1, 5))
    ]
    rows = aggregate(cells, ("fraction", "decoder"))
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| fraction | decoder | seeds |")
    assert len(table.splitlines()) == 2 + 9
    assert markdown_table([{"a": None, "b": "x|y"}]).splitlines()[2] == "| - | x\\|y |"
    plot_data_scale(rows, per_seed_points(cells, ("fraction", "decoder")), tmp_path / "scale.png", "t")
    plot_bars(rows, "decoder", tmp_path / "bars.png", "t", group_key="fraction")
    assert (tmp_path / "scale.png").read_bytes()[:8] == PNG
    assert (tmp_path / "bars.png").read_bytes()[:8] == PNG


def test_identity_changes_name_runs_and_differences_are_named():
    base = TrainSpec(None, {"model": "tiny", "data": ["demos.hdf5"], "objective": "dfm", "max_steps": 100})
    ident = train_identity(base.resolve())
    assert "out_dir" not in ident and "max_minutes" not in ident  # bookkeeping is not identity
    more = train_identity(TrainSpec(None, {**base.overrides, "max_steps": 200}).resolve())
    assert train_dir_name(ident).startswith("dfm-frac1-seed0-")
    assert train_dir_name(ident) != train_dir_name(more)
    assert first_difference(ident, more) == "max_steps: 100 vs 200"
    # A field added to the code later is tolerated only at its default value.
    old = {k: v for k, v in ident.items() if k != "t_max"}
    assert first_difference(old, ident, new_defaults={"t_max": ident["t_max"]}) is None
    assert first_difference(old, ident, new_defaults={"t_max": -1}) is not None
    assert ident["data_fingerprint"] == ["missing"]


def test_demos_added_to_a_data_folder_change_the_training_identity(tmp_path):
    (tmp_path / "demos").mkdir()
    (tmp_path / "demos" / "a.hdf5").write_bytes(b"x" * 10)
    spec = TrainSpec(None, {"model": "tiny", "data": [str(tmp_path / "demos")]})
    before = train_identity(spec.resolve())
    assert before["data_fingerprint"][0].startswith("1f-10b-")
    (tmp_path / "demos" / "collect.log").write_text("a collector's log is not data")
    (tmp_path / "demos" / "c.hdf5.parts").mkdir()
    (tmp_path / "demos" / "c.hdf5.parts" / "part0.hdf5").write_bytes(b"unfinished")
    assert train_identity(spec.resolve()) == before
    (tmp_path / "demos" / "b.hdf5").write_bytes(b"y" * 5)
    after = train_identity(spec.resolve())
    assert after["data_fingerprint"][0].startswith("2f-15b-")
    assert train_dir_name(before) != train_dir_name(after)


def test_cells_are_checked():
    with pytest.raises(ValueError, match="exactly one of"):
        Cell("x", {}, EvalSpec())
    with pytest.raises(ValueError, match="plain folder name"):
        Cell("a/b", {}, EvalSpec(), policy_dir="p")


def test_total_steps_keep_the_papers_proportion():
    assert split_of_total(16) == (14, 2)
    assert [split_of_total(n) for n in (4, 8, 32)] == [(3, 1), (7, 1), (28, 4)]
    with pytest.raises(ValueError, match="--total-steps"):
        split_of_total(1)


def _write_demos(path, tasks=(0, 1), per_task=4, length=40, seed=0):
    """Demo file in the common layout with LIBERO-Goal's observation sizes (random, for plumbing only)."""
    from dfm_vla.envs.libero import suites

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_name"] = "libero_goal"
        data.attrs["problem_info"] = json.dumps({"language_instruction": "toy"})
        i = 0
        for task in tasks:
            for k in range(per_task):
                demo = data.create_group(f"demo_{i}")
                demo.attrs.update(
                    num_samples=length, language=f"task {task}", success=True, seed=k, task_index=task
                )
                demo["actions"] = np.clip(rng.normal(0, 0.3, (length, 7)), -1, 1).astype(np.float32)
                demo["obs/state"] = rng.normal(size=(length, 8)).astype(np.float32)
                demo["obs/object_state"] = rng.normal(size=(length, suites.object_state_dim("libero_goal")))
                demo["rewards"] = np.zeros(length)
                demo["dones"] = np.zeros(length)
                i += 1
        data.attrs["total"] = i * length


TOY_CONFIG = """\
model: tiny
state_keys: [state, object_state]
batch_size: 8
max_steps: 2
warmup_steps: 1
eval_every: 1000
eval_batches: 1
save_every: 1000
tensorboard: false
"""
TOY_PROTOCOL = "--tasks 0 --episodes-per-task 2 --max-episode-steps 8 --threads 1 --no-progress"


def test_three_studies_end_to_end_at_toy_size_and_finished_cells_are_reused(tmp_path, capsys):
    """Real training, real DFMPolicy, real LIBERO-Goal episodes; only the sizes are toy."""
    demos, config, out = tmp_path / "demos.hdf5", tmp_path / "toy.yaml", tmp_path / "study"
    _write_demos(demos)
    config.write_text(TOY_CONFIG)
    train_args = f"--config {config} --data {demos} --seeds 1 --out {out}".split()

    argv = ["study", "data-scale", "--fractions", "1.0", "--decoders", "dfm,dd,ar", *train_args]
    assert cli.main([*argv, *TOY_PROTOCOL.split(), "--json", str(tmp_path / "ds.json")]) == 0
    result = json.loads((tmp_path / "ds.json").read_text())
    assert [(r["fraction"], r["decoder"]) for r in result["rows"]] == [(1.0, "dfm"), (1.0, "dd"), (1.0, "ar")]
    for row in result["rows"]:
        assert row["episodes"] == 2 and row["seeds"] == 1 and row["train_steps"] == 2
    for cell in result["cells"]:
        assert cell["spec"]["eval"]["decoder"] == cell["labels"]["decoder"]
        assert cell["spec"]["train"]["objective"] == cell["labels"]["decoder"]
    assert (out / "data_scale.png").read_bytes()[:8] == PNG
    assert "| fraction | decoder |" in (out / "data_scale.md").read_text()

    # Finished cells are reused, not recomputed: the same command changes no cell file.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")}
    assert cli.main([*argv, *TOY_PROTOCOL.split()]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/cell.json")} == stamps
    assert "finished earlier, reusing" in capsys.readouterr().out
    # A changed protocol on a finished cell is refused with the field named.
    assert (
        cli.main([*argv, *TOY_PROTOCOL.replace("--episodes-per-task 2", "--episodes-per-task 3").split()])
        == 2
    )
    assert "eval.episodes_per_task: 2 vs 3" in capsys.readouterr().err
    # A study cut short reports what finished and names what did not, training nothing.
    cut = ["study", "data-scale", "--fractions", "0.5,1.0", "--decoders", "dfm", *train_args, "--report-only"]
    assert cli.main([*cut, *TOY_PROTOCOL.split(), "--json", str(tmp_path / "cut.json")]) == 0
    report = json.loads((tmp_path / "cut.json").read_text())
    assert [(r["fraction"], r["decoder"]) for r in report["rows"]] == [(1.0, "dfm")]
    assert "not run (the study was cut short): frac0.5-dfm-seed0" in (out / "data_scale.md").read_text()
    assert not (out / "cells/frac0.5-dfm-seed0").exists()

    # Variants in the same folder: DFM+Embed is the data-scale DFM cell, only DFM+Head trains.
    assert cli.main(["study", "variants", *train_args, *TOY_PROTOCOL.split()]) == 0
    variants = json.loads((out / "variants.json").read_text())
    assert [r["variant"] for r in variants["rows"]] == ["DFM+Embed", "DFM+Head"]
    assert (
        variants["cells"][0]["finished_at"]
        == json.loads((out / "cells/frac1-dfm-seed0/cell.json").read_text())["finished_at"]
    )
    assert sorted(p.name.split("-")[0] for p in (out / "train").iterdir()) == ["ar", "dd", "dfm", "dfm_head"]

    # Decoding on the trained DFM policy: a split, a step count and a schedule; 14+2 runs once.
    policy = next((out / "train").glob("dfm-frac1-*"))
    dec_out = tmp_path / "decoding"
    argv = ["study", "decoding", "--policy", str(policy), "--splits", "14,2", "--total-steps", "4,16"]
    argv += ["--c", "1", "--alpha", "0.5", "--out", str(dec_out), *TOY_PROTOCOL.split()]
    assert cli.main(argv) == 0
    decoding = json.loads((dec_out / "decoding.json").read_text())
    assert [(r["ablation"], r["setting"]) for r in decoding["rows"]] == [
        ("split", "14+2"),
        ("steps", "4"),
        ("steps", "16"),
        ("schedule", "c=1 a=0.5"),
    ]
    assert sorted(c["key"] for c in decoding["cells"]) == [
        "T14+2-c1-a0.5-seed0",
        "T14+2-sched-policy-seed0",
        "T3+1-sched-policy-seed0",
    ]
    for row in decoding["rows"]:  # measured by the rollouts: prefix + every refinement call
        assert row["ms_per_chunk"] > 0
    assert (dec_out / "decoding.png").read_bytes()[:8] == PNG


def test_study_inputs_are_checked_with_named_fields(tmp_path, capsys):
    assert cli.main(["study", "data-scale", "--data", str(tmp_path / "none"), "--config", str(tmp_path)]) == 2
    assert "--config" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("model: tiny\n")
    assert cli.main(["study", "data-scale", "--config", str(config), "--data", str(tmp_path / "none")]) == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "d.hdf5").write_bytes(b"")
    argv = ["study", "data-scale", "--config", str(config), "--data", str(tmp_path / "d.hdf5")]
    assert cli.main([*argv, "--fractions", "0,1"]) == 2
    assert "--fractions" in capsys.readouterr().err
    # A dry run lists the cells, seeds outermost, and trains nothing.
    assert (
        cli.main(
            [
                *argv,
                "--fractions",
                "0.5,1",
                "--decoders",
                "dfm,ar",
                "--seeds",
                "2",
                "--out",
                str(tmp_path / "o"),
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.index("frac0.5-dfm-seed0") < out.index("frac1-ar-seed0") < out.index("frac0.5-dfm-seed1")
    assert not (tmp_path / "o").exists()


def test_decoding_study_decodes_cold_unless_asked_to_warm_start(tmp_path, capsys):
    """Each row measures its decoder: every plan decodes cold whatever the checkpoint's warm_start says;
    ``--warm-start on`` makes separate cells that refine later plans from the previous one."""
    policy = tmp_path / "policy"
    policy.mkdir()
    argv = ["study", "decoding", "--policy", str(policy), "--splits", "14,2", "--total-steps", "4"]
    argv += ["--c", "1", "--alpha", "1", "--out", str(tmp_path / "o"), "--dry-run"]
    assert cli.main(argv) == 0
    cold = capsys.readouterr().out
    assert "T14+2-sched-policy-seed0" in cold and "-warm-" not in cold
    assert cli.main([*argv, "--warm-start", "on"]) == 0
    warm = capsys.readouterr().out
    assert "T14+2-sched-policy-warm-seed0" in warm and "T3+1-sched-policy-warm-seed0" in warm

    from dfm_vla.studies.decoding import plan

    args = cli.build_parser().parse_args(argv)
    cells, _ = plan(args)
    assert {c.eval.warm_start for c in cells} == {False}


def test_decoding_study_runs_the_policys_own_schedule_once(tmp_path, capsys, repo_root):
    shipped = repo_root / "checkpoints" / "libero_goal_tiny_dfm"  # its metric path: c = 3, alpha = 1
    argv = ["study", "decoding", "--policy", str(shipped), "--splits", "14,2", "--total-steps", "16"]
    assert cli.main([*argv, "--c", "1,3", "--alpha", "1", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "T14+2-c1-a1-seed0" in out and "c3-a1" not in out and "T14+2-sched-policy-seed0" in out
