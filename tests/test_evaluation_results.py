"""Results files resume safely, summaries carry honest intervals, the dashboard works without a terminal."""

import io
import json

import pytest
from rich.console import Console

from dfm_vla.evaluation.dashboard import Dashboard, revision_bars
from dfm_vla.evaluation.episode import EpisodeResult, EpisodeSpec, StepEvent
from dfm_vla.evaluation.results import ResultsFile, plot_success_by_task, wilson_interval
from dfm_vla.evaluation.runner import Protocol, episode_specs
from dfm_vla.evaluation.video import video_name

META = {"env": "libero_goal", "policy": "expert", "decoder": None, "steps": None, "seed": 0}


def _episode(task, init, success, length=100, phase=None, disturbed=None):
    spec = EpisodeSpec(task, init, seed=init)
    reason = None if success else "step limit"
    return EpisodeResult(
        spec, f"do task {task}", success, length, reason, 1.0, failure_phase=phase, disturbed=disturbed
    )


def test_results_are_saved_after_each_episode_and_resume(tmp_path):
    results = ResultsFile(tmp_path, META)
    results.add(_episode(0, 0, True).to_json())
    results.add(_episode(0, 1, False).to_json())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [e["success"] for e in saved["episodes"]] == [True, False]
    assert saved["summary"]["per_task"]["0"]["failure_reasons"] == {"step limit": 1}

    with pytest.raises(FileExistsError, match="--resume"):
        ResultsFile(tmp_path, META)
    resumed = ResultsFile(tmp_path, META, resume=True)
    assert resumed.done_keys == {"task0/init0/seed0", "task0/init1/seed1"}
    with pytest.raises(ValueError, match="meta\\['policy'\\]"):
        ResultsFile(tmp_path, {**META, "policy": "checkpoint:/x"}, resume=True)


def test_summary_reports_mean_over_tasks_and_wilson_intervals(tmp_path):
    results = ResultsFile(tmp_path, META)
    for i in range(4):
        results.add(_episode(0, i, True).to_json())
        results.add(_episode(1, i, i == 0).to_json())
    overall = results.summary()["overall"]
    assert overall["successes"] == 5 and overall["episodes"] == 8
    assert overall["mean_task_success_rate"] == pytest.approx((1.0 + 0.25) / 2)
    lo, hi = overall["wilson95"]
    assert lo < 5 / 8 < hi
    plot_success_by_task(results.summary(), tmp_path / "chart.png", "test")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(10, 10)[1] == 1.0


def test_episode_specs_follow_the_protocol_and_refuse_bad_tasks():
    specs = episode_specs(Protocol(num_tasks=10, num_init_states=50), [3, 7], 2, seed=0)
    assert [(s.task_id, s.init_state_id) for s in specs] == [(3, 0), (3, 1), (7, 0), (7, 1)]
    assert len({s.seed for s in specs}) == 4
    random_inits = episode_specs(Protocol(num_tasks=1, num_init_states=None), None, 3, seed=1)
    assert [s.init_state_id for s in random_inits] == [None] * 3
    with pytest.raises(ValueError, match="task 10 out of range"):
        episode_specs(Protocol(10, 50), [10], 1, 0)
    with pytest.raises(ValueError, match="50 official initial states"):
        episode_specs(Protocol(10, 50), None, 51, 0)


def test_random_placement_episodes_never_reuse_a_demo_seed():
    """AgileX-style envs place objects from the seed: evaluation must not replay training placements."""
    from dfm_vla.envs.collect import episode_seed

    demo_seeds = {episode_seed(base, t, i) for base in (0, 1, 999) for t in range(3) for i in range(200)}
    for seed in (0, 1, 7):
        specs = episode_specs(Protocol(num_tasks=3, num_init_states=None), None, 40, seed=seed)
        assert len({s.seed for s in specs}) == 120 and not demo_seeds & {s.seed for s in specs}


def test_dashboard_falls_back_to_plain_lines_without_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=120)
    with Dashboard("rollout libero_goal", 2, console=console) as dash:
        dash.on_step(StepEvent(EpisodeSpec(0, 0, 0), 10, 300, 42.0, 80.0, [30, 12, 5, 1, 0]))
        dash.on_episode(_episode(0, 0, True))
        dash.on_episode(_episode(0, 1, False))
    text = buffer.getvalue()
    assert "[1/2] task 0 init 0: success in 100 steps" in text
    assert "[2/2] task 0 init 1: failure (step limit)" in text
    assert "\x1b[" not in text  # no terminal control codes


def test_dashboard_shows_the_seam_jump_against_the_jump_inside_chunks():
    console = Console(file=io.StringIO(), width=140)
    dash = Dashboard("rollout libero_goal (latency 2 steps, async-frozen)", 2, live=False, console=console)
    for init, (seam, inside) in enumerate([(0.3, 0.1), (0.5, 0.3)]):
        episode = _episode(0, init, True)
        episode.seam_jump, episode.step_jump = seam, inside
        dash.on_episode(episode)
    console.print(dash.render())
    text = console.file.getvalue()
    assert "latency 2 steps, async-frozen" in text
    assert "seam jump 0.400" in text and "inside chunks 0.200" in text


def test_revision_bars_scale_to_the_busiest_step_and_names_say_the_outcome():
    assert revision_bars([8, 4, 0]) == "█▄ "
    assert revision_bars(None) == ""
    name = video_name(3, 7, "Open the top drawer and put the bowl inside", False)
    assert name == "task03_init07_open-the-top-drawer-and-put-the-bowl-inside_failure.mp4"


def test_compare_puts_runs_side_by_side_on_their_shared_episodes(tmp_path, repo_root):
    import subprocess
    import sys

    full, short = (
        ResultsFile(tmp_path / "full", {**META, "policy": "a"}),
        ResultsFile(tmp_path / "short", META),
    )
    for task in (0, 1):
        for init in range(4):  # "full" has 4 initial states per task and succeeds on task 0 only
            phase, disturbed = ("not moved", ["plate_1"]) if init == 0 else ("knocked", [])
            ok = task == 0
            full.add(_episode(task, init, ok, phase=None if ok else phase, disturbed=disturbed).to_json())
        for init in range(2):  # "short" has 2 and succeeds everywhere
            short.add(_episode(task, init, success=True).to_json())
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        "cli.py",
        "compare",
        f"A={tmp_path / 'full'}",
        f"B={tmp_path / 'short' / 'results.json'}",
    ]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = (out / "comparison.md").read_text()
    assert "| 0 | do task 0 | 2/2 | 2/2 |" in table and "| 1 | do task 1 | 0/2 | 2/2 |" in table
    assert "**50.0%** (2/4; " in table and "**100.0%** (4/4; " in table
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["runs"]["A"]["summary"]["overall"]["episodes"] == 4  # 8 recorded, 4 shared
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # A's failures tell their phases: a table of failures per task and phase, and a stacked bar chart.
    assert "| task | failures | knocked | not moved | disturbed |" in table
    assert "| 1 | 2 | 1 | 1 | plate_1 1 |" in table
    assert (out / "failure_phases.png").read_bytes()[:4] == b"\x89PNG"

    every = subprocess.run(
        [*cmd, "--out", str(out), "--all-episodes"], cwd=repo_root, capture_output=True, text=True
    )
    assert every.returncode == 0 and "| 1 | do task 1 | 0/4 | 2/2 |" in every.stdout

    missing = subprocess.run(
        [*cmd[:3], str(tmp_path / "nope"), "--out", str(out)], cwd=repo_root, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no results.json" in missing.stderr
