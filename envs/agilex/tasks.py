"""The three DFM-VLA real-world tasks on the simulated AgileX table.

Each task randomises its objects at reset (ranges below, world frame, metres and radians; the table top
is at z = 0.80, arm bases at (0, +-0.30, 0.775)) and states its success test with thresholds. The real
tasks publish no success criteria, so these are ours, in the spirit of ACT's contact-and-height checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dfm_vla.envs.agilex.env import TABLE_TOP_Z, AgileXEnv
from dfm_vla.envs.agilex.failure_phases import PickPlaceProgress, PotLiftProgress

POT_RIM_HEIGHT = 0.076  # m above the pot's base frame
POT_INNER_RADIUS = 0.085
POT_HANDLE_OFFSET = np.array([0.0, 0.1385, 0.062])  # left handle centre in the pot frame (right: -y)
VEG_RADIUS = 0.016
BLOCK_HALF = 0.02
PLATE_TOP = 0.010  # plate collision top above the plate body origin
RISER_HEIGHT = 0.05


def yaw_quat(yaw: float) -> np.ndarray:
    """(4,) MuJoCo quaternion (w, x, y, z) of a rotation by ``yaw`` rad about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def tilt_angle(rotation: np.ndarray) -> float:
    """Angle (rad) between a body's z axis and world z."""
    return float(np.arccos(np.clip(rotation[2, 2], -1.0, 1.0)))


class AgileXTaskEnv(AgileXEnv):
    """Adds free-body placement helpers and failure phases (``envs/agilex/failure_phases.py``)."""

    _progress: PickPlaceProgress | PotLiftProgress | None = None

    def _make_progress(self) -> PickPlaceProgress | PotLiftProgress | None:
        return None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        out = super().reset(seed=seed, options=options)
        self._progress = self._make_progress()
        return out

    def step(self, action):
        out = super().step(action)
        if self._progress is not None:
            self._progress.update()
        return out

    def failure_phase(self) -> str | None:
        """How far a failed episode got: ``"no grasp"``, ``"held, not released"`` ...; None after a
        success or before the first reset."""
        if self._progress is None or self._is_success():
            return None
        return self._progress.failure_phase()

    def _set_free_body(self, name: str, pos: np.ndarray, yaw: float) -> None:
        adr = self.model.jnt_qposadr[self.model.joint(name).id]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = yaw_quat(yaw)

    def _set_mocap(self, name: str, pos: np.ndarray) -> None:
        mocap_id = self.model.body_mocapid[self.model.body(name).id]
        self.data.mocap_pos[mocap_id] = pos


class PotLiftEnv(AgileXTaskEnv):
    """Pot Lift: both arms grasp the pot's two handles and lift it, keeping it level.

    Layout: pot centre x in [0.34, 0.42], y in [-0.03, 0.03], yaw in [-0.2, 0.2]; handles on the pot's
    +-y sides (left arm takes the +y handle).
    Success: the pot's base is at least 0.06 m above the table top, its tilt from upright is at most
    0.2 rad, and each handle touches a finger pad of its own arm. Step limit 250 (10 s).
    """

    task_xml = "pot_lift.xml"
    instructions = (
        "lift the pot with both hands",
        "pick up the pot by its two handles",
        "raise the pot off the table",
        "hold both handles and lift the pot",
    )
    default_max_episode_steps = 250
    object_bodies = ("pot",)
    LIFT_HEIGHT = 0.06
    MAX_TILT = 0.2

    def _make_progress(self) -> PotLiftProgress:
        return PotLiftProgress(self)

    def _place_objects(self, rng: np.random.Generator) -> None:
        pos = np.array([rng.uniform(0.34, 0.42), rng.uniform(-0.03, 0.03), TABLE_TOP_Z])
        self._set_free_body("pot", pos, rng.uniform(-0.2, 0.2))

    def _is_success(self) -> bool:
        pos, rot = self.body_pose("pot")
        if pos[2] - TABLE_TOP_Z < self.LIFT_HEIGHT or tilt_angle(rot) > self.MAX_TILT:
            return False
        return self.handles_held()

    def handles_held(self) -> bool:
        """True when each handle touches a finger pad of its own arm (left arm: the +y handle)."""
        left = {self.model.geom("pot_handle_left").id}
        right = {self.model.geom("pot_handle_right").id}
        return self.touching(self.pad_geoms("left"), left) and self.touching(self.pad_geoms("right"), right)


class PlaceVegEnv(AgileXTaskEnv):
    """Place Veg. to Pot: the right arm picks up a carrot and puts it into the pot.

    Layout: pot centre x in [0.36, 0.44], y in [0.02, 0.10], yaw pi/2 +- 0.3 (handles front and back);
    carrot (capsule, radius 0.016 m, length 0.14 m) lying at x in [0.30, 0.42], y in [-0.22, -0.14], its
    axis at yaw in [-0.6, 0.6] from the x axis.
    Success: the carrot's centre is within 0.07 m (horizontally) of the pot's axis and at most 0.06 m
    above the pot's base (the rim is at 0.076 m), no finger pad touches it, and the pot is upright
    (tilt <= 0.3 rad). Step limit 250 (10 s).
    """

    task_xml = "place_veg.xml"
    instructions = (
        "put the carrot in the pot",
        "place the vegetable into the pot",
        "pick up the carrot and drop it into the pot",
        "move the carrot into the pot",
    )
    default_max_episode_steps = 250
    object_bodies = ("pot", "veg")
    MAX_RADIAL = 0.07
    MAX_HEIGHT = 0.06  # carrot centre above the pot base (the rim is at 0.076)

    def _make_progress(self) -> PickPlaceProgress:
        return PickPlaceProgress(self, "veg", "pot", "right")

    def _place_objects(self, rng: np.random.Generator) -> None:
        pot = np.array([rng.uniform(0.36, 0.44), rng.uniform(0.02, 0.10), TABLE_TOP_Z])
        self._set_free_body("pot", pot, np.pi / 2 + rng.uniform(-0.3, 0.3))
        veg = np.array([rng.uniform(0.30, 0.42), rng.uniform(-0.22, -0.14), TABLE_TOP_Z + VEG_RADIUS + 0.001])
        self._set_free_body("veg", veg, rng.uniform(-0.6, 0.6))

    def _is_success(self) -> bool:
        pot_pos, pot_rot = self.body_pose("pot")
        veg_pos, _ = self.body_pose("veg")
        radial = np.linalg.norm(veg_pos[:2] - pot_pos[:2])
        if radial > self.MAX_RADIAL or veg_pos[2] > pot_pos[2] + self.MAX_HEIGHT or tilt_angle(pot_rot) > 0.3:
            return False
        veg = self.body_geoms("veg")
        return not (self.touching(self.pad_geoms("right"), veg) or self.touching(self.pad_geoms("left"), veg))


class PlaceBlockEnv(AgileXTaskEnv):
    """Place Block to Plate: the left arm picks up a cube and puts it on a plate whose height varies.

    Layout: cube (0.04 m) at x in [0.30, 0.42], y in [0.10, 0.20], yaw in [-0.5, 0.5]; plate (radius
    0.07 m) centre at x in [0.34, 0.44], y in [-0.10, -0.02], on the table, on one 0.05 m riser or on two
    (0.10 m), each with probability 1/3.
    Success: the cube's centre is within 0.06 m (horizontally) of the plate's centre, its bottom is within
    0.012 m of the plate's top surface, and no finger pad touches it. Step limit 250 (10 s).
    """

    task_xml = "place_block.xml"
    instructions = (
        "put the block on the plate",
        "place the green block onto the plate",
        "move the cube to the plate",
        "pick up the block and set it on the plate",
    )
    default_max_episode_steps = 250
    object_bodies = ("block", "plate")
    MAX_RADIAL = 0.06
    MAX_HEIGHT_GAP = 0.012
    riser_count = 0

    def _make_progress(self) -> PickPlaceProgress:
        return PickPlaceProgress(self, "block", "plate", "left")

    def _place_objects(self, rng: np.random.Generator) -> None:
        block = np.array([rng.uniform(0.30, 0.42), rng.uniform(0.10, 0.20), TABLE_TOP_Z + BLOCK_HALF + 0.001])
        self._set_free_body("block", block, rng.uniform(-0.5, 0.5))
        plate_xy = np.array([rng.uniform(0.34, 0.44), rng.uniform(-0.10, -0.02)])
        self.riser_count = int(rng.integers(3))
        far = {"riser_low": np.array([3.0, 0.0, 0.0]), "riser_high": np.array([3.0, 0.5, 0.0])}
        for k, name in enumerate(("riser_low", "riser_high")):
            if k < self.riser_count:
                self._set_mocap(name, np.array([*plate_xy, TABLE_TOP_Z + k * RISER_HEIGHT]))
            else:
                self._set_mocap(name, far[name])
        self._set_mocap("plate", np.array([*plate_xy, TABLE_TOP_Z + self.riser_count * RISER_HEIGHT]))

    def plate_top_z(self) -> float:
        return float(self.data.body("plate").xpos[2] + PLATE_TOP)

    def _is_success(self) -> bool:
        block_pos, _ = self.body_pose("block")
        plate_pos, _ = self.body_pose("plate")
        if np.linalg.norm(block_pos[:2] - plate_pos[:2]) > self.MAX_RADIAL:
            return False
        if abs(block_pos[2] - BLOCK_HALF - self.plate_top_z()) > self.MAX_HEIGHT_GAP:
            return False
        return not self.touching(self.pad_geoms("left"), self.body_geoms("block"))
