"""Where an AgileX episode stopped, from the simulator (privileged state, read after every env step).

The task envs (``envs/agilex/tasks.py``) feed ``PickPlaceProgress`` or ``PotLiftProgress`` after each step;
``failure_phase()`` names the furthest phase a failed episode reached, in the words LIBERO's tracker uses
(``envs/libero/failure_phases.py``) where they mean the same thing. Units: metres, world frame.

Pick and place (place veg., place block), object A carried to target B by one arm:

- ``no grasp``: the arm's finger pads never touched A;
- ``grasp missed``: the pads touched A, but A never rose ``LIFT_M`` above where it started;
- ``held, not released``: A was lifted and the pads still hold it at the end, within ``NEAR_M`` of B
  horizontally (carried to the target, never let go);
- ``lost on the way``: A was lifted but ends more than ``NEAR_M`` from B (dropped, or still carried
  elsewhere);
- ``placed wrong``: A was lifted and ends within ``NEAR_M`` of B, but the success test is false (too high,
  still touched, or the pot knocked over).

Pot lift, both arms on the pot's handles:

- ``no grasp``: the two handles were never touched by their own arms' pads at the same step;
- ``grasp missed``: both were held at once, but the pot never rose ``LIFT_M``;
- ``lost on the way``: the pot rose ``LIFT_M``, and at the end the grasp or the height or the tilt is lost.
"""

from __future__ import annotations

import numpy as np

LIFT_M = 0.03
NEAR_M = 0.07

PHASES = ("no grasp", "grasp missed", "held, not released", "lost on the way", "placed wrong")


class PickPlaceProgress:
    """Tracks one carried object (a body) against its target body for one arm's finger pads."""

    def __init__(self, env, obj: str, target: str, arm: str) -> None:
        self.env, self.obj, self.target, self.arm = env, obj, target, arm
        self._obj_geoms = env.body_geoms(obj)
        self.start_z = float(env.data.body(obj).xpos[2])
        self.touched = False
        self.max_rise = 0.0

    def held(self) -> bool:
        return self.env.touching(self.env.pad_geoms(self.arm), self._obj_geoms)

    def update(self) -> None:
        self.touched = self.touched or self.held()
        self.max_rise = max(self.max_rise, float(self.env.data.body(self.obj).xpos[2]) - self.start_z)

    def failure_phase(self) -> str:
        if not self.touched:
            return "no grasp"
        if self.max_rise < LIFT_M:
            return "grasp missed"
        near = np.linalg.norm(
            self.env.data.body(self.obj).xpos[:2] - self.env.data.body(self.target).xpos[:2]
        )
        if self.held():
            return "held, not released" if near <= NEAR_M else "lost on the way"
        return "placed wrong" if near <= NEAR_M else "lost on the way"


class PotLiftProgress:
    """Tracks the two-handed grasp of the pot and its height."""

    def __init__(self, env) -> None:
        self.env = env
        self.start_z = float(env.data.body("pot").xpos[2])
        self.both_held = False
        self.max_rise = 0.0

    def update(self) -> None:
        self.both_held = self.both_held or self.env.handles_held()
        self.max_rise = max(self.max_rise, float(self.env.data.body("pot").xpos[2]) - self.start_z)

    def failure_phase(self) -> str:
        if not self.both_held:
            return "no grasp"
        return "grasp missed" if self.max_rise < LIFT_M else "lost on the way"
