"""Where a LIBERO episode stopped: the phase reached by the first BDDL goal predicate left unmet.

``GoalPhaseTracker`` reads the simulator after every env step (privileged state, a few body and site
positions and joint values: cheap next to the physics) and, at the end of the episode, names how far
the robot got towards the goal. It answers "why do the policies fail" per task without watching videos.

A predicate that moves an object A onto or into B (``on``, ``in``): the furthest phase reached wins.

- ``not reached``: the grip site never came within ``REACH_M`` of the centre of one of A's geoms;
- ``no grasp``: reached, but the gripper was never closing while within ``REACH_M`` of A, and A never
  moved more than ``MOVED_M``;
- ``grasp missed``: the gripper closed within ``REACH_M`` of A, but A never moved more than ``MOVED_M``
  (the fingers closed beside it, or slipped off at once);
- ``knocked``: A moved but never rose ``LIFT_M`` and never came near B (pushed over or aside);
- ``lost on the way``: A was lifted but never came within ``NEAR_M`` of B horizontally (dropped, or
  carried elsewhere);
- ``placed wrong``: A came within ``NEAR_M`` of B but the predicate is false at the end;
- into a region of an articulated fixture (a drawer, a microwave), ``container closed`` comes first when
  the container was never open (LIBERO's own ``is_open`` test) at any step of the episode.

A predicate on a fixture (``open``, ``close``, ``turnon``, ``turnoff``): ``not reached`` (the grip site
never within ``REACH_M`` of a geom of the part that moves: the drawer, the knob), ``not actuated`` (its
joints moved less than ``ACTUATED`` in joint units: m for drawers, rad for knobs and doors), ``partly
actuated`` otherwise.

Two labels cut across: ``undone`` (the predicate held at some step and not at the end) and
``progressing at the limit`` (the step limit ended an episode whose A was still closing on B, or whose
joints were still moving, over the last ``RECENT_STEPS`` steps: it might have succeeded with more time).
``disturbed()`` names what the robot moved that the goal does not mention: objects displaced more than
``DISTURB_M`` and fixture joints (drawers, knobs) moved more than ``DISTURB_JOINT``. On a suite whose tasks
share one scene (LIBERO-Goal) it tells a policy that went for another task's object from one that
fumbled its own. Units: metres, world frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

REACH_M = 0.05
MOVED_M = 0.02
LIFT_M = 0.03
NEAR_M = 0.06
ACTUATED = 0.01
RECENT_STEPS = 25
PROGRESS_M = 0.01
DISTURB_M = 0.05
DISTURB_JOINT = 0.02

OBJECT_PREDICATES = ("on", "in")
FIXTURE_PREDICATES = ("open", "close", "turnon", "turnoff")
PHASES = (
    "not reached",
    "container closed",
    "no grasp",
    "grasp missed",
    "not actuated",
    "knocked",
    "lost on the way",
    "partly actuated",
    "placed wrong",
    "undone",
    "progressing at the limit",
    "unmet",  # a predicate this module does not know how to follow (none in the five LIBERO suites)
)


@dataclass
class PredicateTrace:
    """What one goal predicate's objects did over an episode (one entry per env step)."""

    predicate: tuple[str, ...]
    grip_distance: list[float] = field(default_factory=list)  # grip site to A's (the moving part's) geoms, m
    displacement: list[float] = field(default_factory=list)  # A from where it started, m
    lift: list[float] = field(default_factory=list)  # A's height above its start, m
    target_distance: list[float] = field(default_factory=list)  # A to B horizontally, m
    joint_travel: list[float] = field(default_factory=list)  # max |joint - start| over the fixture's joints
    container_open: list[bool] = field(default_factory=list)
    closed_near: list[bool] = field(default_factory=list)  # the gripper closing within REACH_M of A
    holds: list[bool] = field(default_factory=list)  # the predicate's own truth value

    @property
    def kind(self) -> str:
        """``object`` (move A onto or into B), ``fixture`` (open, close, turn on or off), ``other``."""
        if self.predicate[0] in OBJECT_PREDICATES and len(self.predicate) == 3:
            return "object"
        return "fixture" if self.predicate[0] in FIXTURE_PREDICATES else "other"

    @property
    def label(self) -> str:
        return " ".join(self.predicate)


def classify_trace(trace: PredicateTrace, *, truncated: bool) -> str:
    """The phase (one of ``PHASES``) of a predicate that is false at the end of its episode."""
    if not trace.holds:
        return "not reached"
    if any(trace.holds) and not trace.holds[-1]:
        return "undone"
    if trace.kind == "other":
        return "unmet"
    if truncated and _progressing(trace):
        return "progressing at the limit"
    if trace.kind == "fixture":
        if min(trace.grip_distance) > REACH_M:
            return "not reached"
        return "not actuated" if max(trace.joint_travel) < ACTUATED else "partly actuated"
    if trace.container_open and not any(trace.container_open):
        return "container closed"
    if min(trace.grip_distance) > REACH_M:
        return "not reached"
    if max(trace.displacement) < MOVED_M:
        return "grasp missed" if any(trace.closed_near) else "no grasp"
    if min(trace.target_distance) < NEAR_M:
        return "placed wrong"
    return "lost on the way" if max(trace.lift) >= LIFT_M else "knocked"


def _progressing(trace: PredicateTrace) -> bool:
    if len(trace.holds) <= RECENT_STEPS:
        return False
    if trace.kind == "fixture":
        recent = trace.joint_travel[-RECENT_STEPS - 1 :]
        return recent[-1] - recent[0] > ACTUATED and max(recent) > ACTUATED
    recent = trace.target_distance[-RECENT_STEPS - 1 :]
    return recent[0] - recent[-1] > PROGRESS_M and max(trace.lift[-RECENT_STEPS:]) >= LIFT_M


class GoalPhaseTracker:
    """Follows every goal predicate of the current LIBERO task; ``failure_phase()`` at the end.

    ``problem``: the LIBERO problem env (``LiberoEnv.inner.env``), read after its reset and settling;
    ``grip_site_id``: the MuJoCo site id of the gripper's grip site.
    """

    def __init__(self, problem: Any, grip_site_id: int) -> None:
        self.problem = problem
        self.data = problem.sim.data
        self.model = problem.sim.model
        self.grip_site_id = grip_site_id
        self.gripper = problem.robots[0].gripper  # current_action[-1]: -1 open .. +1 closed (its command)
        self.truncated = False
        self.traces = [PredicateTrace(tuple(p)) for p in problem.parsed_problem["goal_state"]]
        self._start: dict[str, np.ndarray] = {}
        self._joints: dict[str, list[int]] = {}
        self._geoms: dict[str, np.ndarray] = {}
        for trace in self.traces:
            name = trace.predicate[1]
            self._geoms[name] = self._touchable_geoms(name) if trace.kind != "other" else np.zeros(0, int)
            if trace.kind == "object":
                self._start[name] = self._position(name)
                target = trace.predicate[2]
                joints = self._region_joints(target)
                if joints:  # a container: its openness is read each step, its joints are not "others"
                    self._joints[target] = joints
            elif trace.kind == "fixture":
                self._joints[name] = self._fixture_joints(name)
                self._start[name] = self._joint_values(name)
        # Everything else in the scene, to notice what the robot moved that the goal does not mention.
        named = {n for t in self.traces for n in t.predicate[1:]}
        goal_joints = {a for addrs in self._joints.values() for a in addrs}
        self._other_objects = {
            n: self._position(n) for n in problem.objects_dict if n not in named and n in problem.obj_body_id
        }
        self._other_joints = {
            j: self.model.get_joint_qpos_addr(j)
            for n, fixture in problem.fixtures_dict.items()
            if n not in named
            for j in (getattr(fixture, "joints", None) or [])
        }
        self._other_joints = {j: a for j, a in self._other_joints.items() if a not in goal_joints}
        self._other_joint_start = {j: float(self.data.qpos[a]) for j, a in self._other_joints.items()}
        self._other_max = dict.fromkeys([*self._other_objects, *self._other_joints], 0.0)

    # ---------------------------------------------------------------- simulator reads
    def _position(self, name: str) -> np.ndarray:
        if name in self.problem.obj_body_id:
            return np.array(self.data.body_xpos[self.problem.obj_body_id[name]])
        return np.array(self.problem.object_states_dict[name].get_geom_state()["pos"])

    def _joint_names(self, name: str) -> list[str]:
        """The joints that move region or fixture ``name`` (a drawer's slide, a stove's knob)."""
        site = self.problem.object_sites_dict.get(name)
        if site is not None:
            return list(getattr(site, "joints", None) or [])
        fixture = self.problem.fixtures_dict.get(name) or self.problem.objects_dict.get(name)
        return list(getattr(fixture, "joints", None) or [])

    def _region_joints(self, name: str) -> list[int]:
        if name not in self.problem.object_sites_dict:
            return []
        return [self.model.get_joint_qpos_addr(j) for j in self._joint_names(name)]

    def _fixture_joints(self, name: str) -> list[int]:
        return [self.model.get_joint_qpos_addr(j) for j in self._joint_names(name)]

    def _touchable_geoms(self, name: str) -> np.ndarray:
        """Geom ids the grip site must come near: an object's own geoms, or those of the bodies a
        fixture's joints move (a drawer's front and handle, not the whole cabinet)."""
        model = self.model
        if name in self.problem.obj_body_id and name not in self.problem.fixtures_dict:
            bodies = {i for i in range(model.nbody) if (model.body_id2name(i) or "").startswith(name)}
        else:
            bodies = {int(model.jnt_bodyid[model.joint_name2id(j)]) for j in self._joint_names(name)}
        geoms = np.flatnonzero(np.isin(model.geom_bodyid, sorted(bodies)))
        if geoms.size == 0:  # nothing to touch found: measure to the object's or region's position
            return np.zeros(0, dtype=int)
        return geoms

    def _joint_values(self, name: str) -> np.ndarray:
        return np.array([self.data.qpos[a] for a in self._joints[name]], np.float64)

    def _is_open(self, region: str) -> bool:
        """LIBERO's own test of an articulated region (a drawer, a microwave's door) being open."""
        return bool(self.problem.object_states_dict[region].is_open())

    def _travel(self, name: str) -> float:
        if not self._joints.get(name):
            return 0.0
        return float(np.max(np.abs(self._joint_values(name) - self._start[name])))

    # ---------------------------------------------------------------- per step
    def record(self) -> None:
        """Read the simulator once; call after every env step."""
        grip = np.array(self.data.site_xpos[self.grip_site_id])
        for trace in self.traces:
            trace.holds.append(bool(self.problem._eval_predicate(list(trace.predicate))))
            if trace.kind == "other":
                continue
            name = trace.predicate[1]
            pos = self._position(name)
            geoms = self._geoms[name]
            points = self.data.geom_xpos[geoms] if geoms.size else pos[None]
            trace.grip_distance.append(float(np.min(np.linalg.norm(points - grip, axis=1))))
            if trace.kind == "object":
                target = trace.predicate[2]
                closing = float(self.gripper.current_action[-1]) > 0.0
                trace.closed_near.append(closing and trace.grip_distance[-1] < REACH_M)
                trace.displacement.append(float(np.linalg.norm(pos - self._start[name])))
                trace.lift.append(float(pos[2] - self._start[name][2]))
                trace.target_distance.append(float(np.linalg.norm((pos - self._position(target))[:2])))
                if target in self._joints:
                    trace.container_open.append(self._is_open(target))
            else:
                trace.joint_travel.append(self._travel(name))
        for n, start in self._other_objects.items():
            self._other_max[n] = max(self._other_max[n], float(np.linalg.norm(self._position(n) - start)))
        for j, addr in self._other_joints.items():
            travel = abs(float(self.data.qpos[addr]) - self._other_joint_start[j])
            self._other_max[j] = max(self._other_max[j], travel)

    def disturbed(self) -> list[str]:
        """Objects (moved > ``DISTURB_M``) and fixture joints (> ``DISTURB_JOINT``) outside the goal that
        the episode moved, sorted by name."""
        moved = [n for n in self._other_objects if self._other_max[n] > DISTURB_M]
        moved += [j for j in self._other_joints if self._other_max[j] > DISTURB_JOINT]
        return sorted(moved)

    def failure_phase(self) -> str | None:
        """``"<phase>"``, or ``"<predicate>: <phase>"`` for a goal of several predicates; None when every
        predicate holds at the end (or nothing was recorded)."""
        unmet = [t for t in self.traces if not (t.holds and t.holds[-1])]
        if not unmet or not self.traces[0].holds:
            return None
        phase = classify_trace(unmet[0], truncated=self.truncated)
        return phase if len(self.traces) == 1 else f"{unmet[0].label}: {phase}"
