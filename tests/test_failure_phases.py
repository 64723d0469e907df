"""Failure phases of LIBERO episodes: how far a failed episode got towards its BDDL goal."""

import pytest

from dfm_vla.envs.libero.failure_phases import RECENT_STEPS, PredicateTrace, classify_trace


def _object_trace(grip, moved, lift, target, holds=None, closed_near=None):
    n = len(grip)
    return PredicateTrace(
        ("on", "akita_black_bowl_1", "plate_1"),
        grip_distance=grip,
        displacement=moved,
        lift=lift,
        target_distance=target,
        holds=holds or [False] * n,
        closed_near=closed_near or [False] * n,
    )


@pytest.mark.parametrize(
    ("grip", "moved", "lift", "target", "phase"),
    [
        ([0.3, 0.2, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2], "not reached"),
        ([0.3, 0.02, 0.02], [0.0, 0.01, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2], "no grasp"),
        ([0.3, 0.02, 0.02], [0.0, 0.05, 0.08], [0.0, 0.0, -0.02], [0.2, 0.2, 0.25], "knocked"),
        ([0.3, 0.02, 0.02], [0.0, 0.05, 0.1], [0.0, 0.1, -0.01], [0.2, 0.15, 0.2], "lost on the way"),
        ([0.3, 0.02, 0.02], [0.0, 0.05, 0.2], [0.0, 0.1, 0.0], [0.2, 0.03, 0.04], "placed wrong"),
    ],
)
def test_an_object_predicate_is_classified_by_the_furthest_phase_reached(grip, moved, lift, target, phase):
    assert classify_trace(_object_trace(grip, moved, lift, target), truncated=False) == phase


def test_a_gripper_that_closed_beside_the_object_missed_its_grasp():
    trace = _object_trace([0.3, 0.02, 0.02], [0.0, 0.0, 0.01], [0.0] * 3, [0.2] * 3, closed_near=[0, 0, 1])
    assert classify_trace(trace, truncated=False) == "grasp missed"


def test_undone_and_progressing_at_the_limit():
    undone = _object_trace([0.01] * 3, [0.2] * 3, [0.0] * 3, [0.0] * 3, holds=[False, True, False])
    assert classify_trace(undone, truncated=True) == "undone"
    # Lifted and still closing on the target over the last steps when the step limit ended it.
    n = RECENT_STEPS + 5
    closing = _object_trace([0.01] * n, [0.2] * n, [0.1] * n, [0.3 - 0.01 * i for i in range(n)])
    assert classify_trace(closing, truncated=True) == "progressing at the limit"
    assert classify_trace(closing, truncated=False) == "placed wrong"


def test_a_fixture_predicate_is_not_reached_not_actuated_or_partly_actuated():
    def trace(grip, travel):
        return PredicateTrace(
            ("open", "wooden_cabinet_1_middle_region"),
            grip_distance=grip,
            joint_travel=travel,
            holds=[False] * len(grip),
        )

    assert classify_trace(trace([0.3, 0.2], [0.0, 0.0]), truncated=False) == "not reached"
    assert classify_trace(trace([0.3, 0.01], [0.0, 0.002]), truncated=False) == "not actuated"
    assert classify_trace(trace([0.3, 0.01], [0.0, 0.05]), truncated=False) == "partly actuated"


def test_a_predicate_it_cannot_follow_is_unmet_not_an_error():
    trace = PredicateTrace(("stack", "akita_black_bowl_1", "plate_1"), holds=[False, False])
    assert trace.kind == "other" and classify_trace(trace, truncated=True) == "unmet"


@pytest.fixture(scope="module")
def goal_env():
    from dfm_vla.envs.registration import make_env

    env = make_env("libero_goal", max_episode_steps=60)
    yield env
    env.close()


def _run(env, task, policy, steps):
    obs, _ = env.reset(seed=0, options={"task_id": task, "init_state_id": 0})
    if hasattr(policy, "reset"):
        policy.reset(env)
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(policy(obs) if callable(policy) else policy.act(obs))
        if terminated or truncated:
            break
    return info, env.unwrapped.failure_phase()


def test_a_robot_that_holds_still_never_reaches_and_never_opens_the_drawer(goal_env):
    hold = goal_env.unwrapped.hold_action
    assert _run(goal_env, 7, lambda obs: hold(None), 20)[1] == "not reached"  # turn on the stove
    assert _run(goal_env, 3, lambda obs: hold(None), 20)[1] == "container closed"  # bowl into the drawer


def test_the_expert_cut_short_is_progressing_or_not_there_yet(goal_env):
    from dfm_vla.envs.libero.goal_experts import make_goal_expert

    info, phase = _run(goal_env, 1, make_goal_expert(), 60)  # the bowl is up and on its way to the stove
    assert not info["success"] and phase == "progressing at the limit"
    info, phase = _run(goal_env, 1, make_goal_expert(), 15)  # on the way down to the bowl
    assert phase == "not reached"


def test_evaluation_results_count_the_failure_phases_per_task(tmp_path):
    import json

    from dfm_vla import cli

    out = tmp_path / "eval"
    argv = ["eval", "--policy", "expert", "--tasks", "3", "--episodes-per-task", "1", "--max-steps", "30"]
    assert cli.main([*argv, "--num-envs", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"][0]["failure_phase"] == "container closed"
    assert results["summary"]["per_task"]["3"]["failure_phases"] == {"container closed": 1}
    assert results["episodes"][0]["disturbed"] == []


def test_a_robot_doing_another_task_is_told_apart_by_what_it_disturbed():
    """Asked to turn on the stove, a robot that opens the middle drawer instead (the script of task 0)
    never reaches the knob and leaves the drawer's joint moved: the mark of a policy confusing tasks."""
    from dfm_vla.envs.libero.goal_experts import GOAL_SCRIPTS, ScriptedExpert
    from dfm_vla.envs.registration import make_env

    env = make_env("libero_goal", max_episode_steps=150)
    info, phase = _run(env, 7, ScriptedExpert({7: GOAL_SCRIPTS[0]}), 150)
    assert not info["success"] and phase == "not reached"
    assert env.unwrapped.disturbed_objects() == ["wooden_cabinet_1_middle_level"]
    env.close()
