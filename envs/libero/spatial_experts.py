"""Scripted expert for LIBERO-Spatial: every task is "pick up the black bowl <where> and place it on the
plate" (BDDL goal ``On(akita_black_bowl_1, plate_1)``); only the bowl's start differs (table, cookie box,
ramekin, stove, cabinet top, open top drawer).

One script for all 10 tasks, driven by the bowl's pose and the collision boxes of everything around it
(read from the simulator):

- Internal grasp: the closed fingers go into the bowl along its axis, just below the rim, and open
  against its inner wall. The fingers stay inside the bowl's footprint (no room is needed beside it, so
  a bowl in the open drawer, 2-5 cm from its walls, is reachable) and the bowl hangs level and centred
  under the grip site, so the placement is precise. The hand (21 cm along the finger axis, 1.6 cm above
  the rim) is yawed so that it clears the nearby boxes (the cabinet roof over the drawer, the other bowl).
- A bowl that leans (on the ramekin it rests at 51 degrees against the ramekin) is grasped the same way
  with the gripper tilted onto the bowl's axis; it is turned upright while it is carried.
- Rim pinch (the high-friction pads across the wall, the finger axis through the bowl's centre so it
  hangs level), for a bowl wedged in its support (on the stove, held by about 200 N of burner contacts)
  and for one at the far edge of the reach (the rim's near side is 5 cm closer to the robot); also the
  retry when an internal grasp does not lift the bowl. A wedged bowl that a pinch does not lift is
  pinched once more (one that has risen a little is lifted further before it is judged).
- A bowl at the far edge of the reach with no room for a pinch (the drawer) is dragged 2.5 cm toward the
  robot with the closed fingers before the internal grasp, which then re-centres on the bowl.
- The fingers of an internal grasp of an upright bowl are pressed down while they open (against the
  sloping wall they would ride up to the lip).
- A bowl partly under an overhang (the drawer's back edge 0-3 mm under the cabinet roof) is slid clear
  before it is lifted.
- The carry follows the straight line to the plate at a height profile that clears the boxes along it,
  closed-loop on the bowl's own position, and the release is a few millimetres above the plate.
"""

from __future__ import annotations

from collections.abc import Generator

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from dfm_vla.envs.libero.expert_base import CLOSE, OPEN, R_DOWN, Script, ScriptContext, ScriptedExpert, rot_z

BOWL, PLATE = "akita_black_bowl_1", "plate_1"
RIM_HEIGHT = 0.053  # bowl rim top above its origin (the bottom centre), along its axis
# Internal grasp: grip site this far below the rim, deepest first (the finger tips reach 0.9 cm below the
# grip site and the hand's underside is 2.4 cm above it; a shallow grip holds the bowl by its lip only).
RIM_BELOW = (0.016, 0.012, 0.008)
# Clearance (m) the hand keeps from the boxes in an internal grasp: in the drawer the hand's underside
# passes 4-8 mm over the drawer's walls at the two deeper grips (a grip 8 mm under the rim holds only the
# lip and the bowl slips out of the fingers as it is lifted)
INSIDE_MARGIN = 0.005
PRESS_IN = 0.01  # metres below the grip the hand is servoed to while an internal grasp opens
PINCH_RADIUS = 0.052  # rim pinch: grip site on the wall, PINCH_BELOW under the rim (deepest first)
PINCH_BELOW = (0.018, 0.012)
APERTURES = (0.078, 0.05, 0.04)  # finger openings a pinch may approach with (fully open first), metres
# The open outer finger of a pinch in the grip-site frame (x from the grip site outward), metres.
OUTER_FINGER = np.stack(
    np.meshgrid(
        np.linspace(0.039, 0.066, 3),
        np.linspace(-0.0105, 0.0105, 2),
        np.linspace(-0.0445, 0.0092, 4),
        indexing="ij",
    ),
    -1,
).reshape(-1, 3)
# Reach: the distance from the shoulder (joint 2) to the point WRIST_ABOVE_GRIP above an internal grasp
# beyond which the arm is nearly straight (measured: 0.75-0.76 reached, 0.81 stalled).
REACH, WRIST_ABOVE_GRIP = 0.755, 0.2
DRAG_IN, DRAG = 0.025, 0.025  # metres: see ``grasp``
LIFT_STARTED, LIFTED = 0.005, 0.015  # metres the bowl rose: it is coming free, it is held
PEEL = np.radians(15.0)  # tip of a wedged bowl while it is lifted (see ``peel``)
WEDGED_LOAD = 2.0  # N of contact force on the bowl (it weighs 0.06 N) that marks it as wedged
BOWL_RADIUS = 0.055
# Hand box in the grip-site frame (x: finger axis, y: across, z: the approach direction, away from the
# wrist), metres.
HAND_LO, HAND_HI = np.array([-0.105, -0.04, -0.126]), np.array([0.105, 0.04, -0.024])
# A grid over that box (11 x 3 x 3 points), checked against the obstacles for every candidate hand pose.
HAND_GRID = np.stack(
    np.meshgrid(
        *(np.linspace(lo, hi, n) for lo, hi, n in zip(HAND_LO, HAND_HI, (11, 3, 3), strict=True)),
        indexing="ij",
    ),
    -1,
).reshape(-1, 3)
TILTED = np.radians(20.0)  # bowl axis further than this from vertical: tilted grasp
NON_OBSTACLE_ROOTS = ("world", "table", "robot0_base")


# ---------------------------------------------------------------------------------------- geometry
class Boxes:
    """Oriented collision boxes (from each geom's local AABB) of everything the bowl and hand may hit."""

    def __init__(self, c: ScriptContext, skip: tuple[str, ...]) -> None:
        model, data = c.model._model, c.data._data
        skip_roots = {c.model.body_name2id(name) for name in NON_OBSTACLE_ROOTS + skip}
        rows = [
            g
            for g in range(model.ngeom)
            if model.geom_contype[g] + model.geom_conaffinity[g] > 0
            and model.body_rootid[model.geom_bodyid[g]] not in skip_roots
        ]
        self.R = np.array([data.geom_xmat[g].reshape(3, 3) for g in rows])  # (n, 3, 3) geom -> world
        self.half = np.array([model.geom_aabb[g][3:] for g in rows])
        self.center = np.array(
            [data.geom_xpos[g] + self.R[i] @ model.geom_aabb[g][:3] for i, g in enumerate(rows)]
        )
        extent = np.einsum("nij,nj->ni", np.abs(self.R), self.half)  # world half extents
        self.top, self.bottom = self.center[:, 2] + extent[:, 2], self.center[:, 2] - extent[:, 2]

    def hit_points(self, points: np.ndarray, margin: float) -> int:
        """How many of ``points`` (m, 3) lie inside some box grown by ``margin``."""
        local = np.einsum("nji,nmj->nmi", self.R, points[None] - self.center[:, None])
        inside = np.all(np.abs(local) < self.half[:, None] + margin, axis=2)
        return int(np.any(inside, axis=0).sum())

    def local_xy(self, xy: np.ndarray) -> np.ndarray:
        """The point ``xy`` at each box's centre height, in each box's frame (n, 3)."""
        offset = np.concatenate(
            [
                np.broadcast_to(xy - self.center[:, :2], (len(self.center), 2)),
                np.zeros((len(self.center), 1)),
            ],
            axis=1,
        )
        return np.einsum("nji,nj->ni", self.R, offset)

    def xy_overlap(self, xy: np.ndarray, radius: float) -> np.ndarray:
        """Per box: does its footprint come within ``radius`` of the point ``xy``? (boxes whose axes are
        vertical or horizontal, as all fixtures and resting objects here)"""
        return np.all(np.abs(self.local_xy(xy)) < self.half + radius, axis=1)


def hand_points(grip: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``HAND_GRID`` at a grip-site pose (world points)."""
    return grip + HAND_GRID @ R.T


def tilt_rotation(axis: np.ndarray) -> np.ndarray:
    """The smallest rotation that takes world z onto ``axis``."""
    cross = np.cross([0.0, 0.0, 1.0], axis)
    if np.linalg.norm(cross) < 1e-9:
        return np.eye(3)
    angle = np.arccos(np.clip(axis[2], -1.0, 1.0))
    return Rotation.from_rotvec(cross / np.linalg.norm(cross) * angle).as_matrix()


def hand_yaws(c: ScriptContext, origin: np.ndarray) -> list[float]:
    """Candidate yaws of a vertical hand over ``origin``: the finger axis first along the line from the
    robot base, then further and further off it (pi/16 steps), each taken modulo pi.

    Reach: the arm reaches furthest with the finger axis along the line from the robot base (across
    it, the hand stalls at full elbow extension over the far cabinet top). Modulo pi (the fingers are
    symmetric) each yaw is the one that puts joint 7 (about base yaw + 0.785 - hand yaw for a vertical
    hand) nearest the middle of its +-2.9 range."""
    base = c.body("robot0_base")
    radial = np.arctan2(origin[1] - base[1], origin[0] - base[0])
    middle = radial + 0.785  # the hand yaw at which joint 7 would be 0
    yaws = []
    for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8):
        yaw = radial - np.pi / 2 + k * np.pi / 16
        yaws.append((yaw - middle + np.pi / 2) % np.pi + middle - np.pi / 2)
    return yaws


def plan_inside(boxes: Boxes, origin: np.ndarray, tilt: np.ndarray, yaws) -> tuple[np.ndarray, float]:
    """Grip point and yaw (finger axis about the bowl axis) of the internal grasp: the deepest grip of
    ``RIM_BELOW`` and the first yaw of ``yaws`` whose hand clears ``boxes``, else the least colliding."""
    best, fewest = None, np.inf
    for below in RIM_BELOW:
        grip = origin + (RIM_HEIGHT - below) * tilt[:, 2]
        for yaw in yaws:
            hits = boxes.hit_points(hand_points(grip, tilt @ rot_z(yaw) @ R_DOWN), INSIDE_MARGIN)
            if hits == 0:
                return grip, float(yaw)
            if hits < fewest:
                best, fewest = (grip, float(yaw)), hits
    return best


def plan_pinch(
    boxes: Boxes, origin: np.ndarray, yaws, base: np.ndarray, strict: bool = False
) -> tuple[np.ndarray, float, float] | None:
    """Grip point, yaw and finger aperture of a radial rim pinch of an upright bowl (the fingers across
    the wall, the finger axis through the bowl's centre, so the bowl hangs level): the deepest grip of
    ``PINCH_BELOW``, the widest aperture of ``APERTURES``, the first yaw of ``yaws`` and the rim point on
    the side toward the robot first, whose hand and outer finger clear ``boxes``; else the least
    colliding (None with ``strict``)."""
    best, fewest = None, np.inf
    for below in PINCH_BELOW:
        for aperture in APERTURES:
            outer = OUTER_FINGER + [aperture / 2 - 0.039, 0.0, 0.0]
            for yaw in yaws:
                R = rot_z(yaw) @ R_DOWN
                toward_base = np.sign((base[:2] - origin[:2]) @ R[:2, 0]) or 1.0
                for side in (toward_base, -toward_base):
                    grip = origin + [*(side * PINCH_RADIUS * R[:2, 0]), RIM_HEIGHT - below]
                    points = np.concatenate([hand_points(grip, R), grip + (outer * [side, 1, 1]) @ R.T])
                    hits = boxes.hit_points(points, 0.006)
                    if hits == 0:
                        return grip, float(yaw), aperture
                    if hits < fewest:
                        best, fewest = (grip, float(yaw), aperture), hits
    return None if strict else best


def contact_load(c: ScriptContext, body: str) -> float:
    """Sum of the contact normal forces (N) on the free body ``body`` from everything but the robot."""
    model, data = c.model._model, c.data._data
    root = c.model.body_name2id(body)
    robot = c.model.body_name2id("robot0_base")
    total, force = 0.0, np.zeros(6)
    for i in range(data.ncon):
        contact = data.contact[i]
        roots = {
            model.body_rootid[model.geom_bodyid[contact.geom1]],
            model.body_rootid[model.geom_bodyid[contact.geom2]],
        }
        if root in roots and robot not in roots:
            mujoco.mj_contactForce(model, data, i, force)
            total += abs(force[0])
    return total


# ---------------------------------------------------------------------------------------- script
def bowl_speed(c: ScriptContext) -> float:
    start = c.model.get_joint_qvel_addr(f"{BOWL}_joint0")[0]  # free joint: linear velocity first
    return float(np.linalg.norm(c.data.qvel[start : start + 3]))


def bowl_on_plate(c: ScriptContext) -> Script:
    c.rot_limit = 1.0
    for _ in range(40):  # a bowl still falling or rolling after the reset: wait until it rests
        if bowl_speed(c) < 0.02:
            break
        yield c.action(c.eef(), 0.5)
    boxes = Boxes(c, (f"{BOWL}_main", f"{PLATE}_main"))
    origin = c.obj(BOWL)
    R_bowl = np.array(c.data.body_xmat[c.model.body_name2id(f"{BOWL}_main")]).reshape(3, 3)
    axis = R_bowl[:, 2]
    tilted = np.arccos(np.clip(axis[2], -1.0, 1.0)) > TILTED
    tilt = tilt_rotation(axis) if tilted else np.eye(3)
    axis = tilt[:, 2]
    # A bowl whose bottom is wedged in a support (on the stove the burner's zero-thickness collision box
    # runs through the bowl's base: about 200 N of opposing contact forces) is beyond the 8-10 N of an
    # internal grasp: pinch its rim with the high-friction pads instead (twice if need be). An internal
    # grasp that does not lift the bowl is retried as a pinch.
    # An internal grasp of a bowl near the edge of the workspace (the table's far +x end) would stretch the
    # arm straight (a singular pose: the descent stalls 1 cm short and the arm cannot come back): there
    # the pinch on the rim's near side, 5 cm closer to the robot, goes first.
    wrist = origin + [0, 0, RIM_HEIGHT + WRIST_ABOVE_GRIP] - c.body("robot0_link2")
    far = np.linalg.norm(wrist) > REACH
    wedged = not tilted and contact_load(c, f"{BOWL}_main") > WEDGED_LOAD
    if wedged:
        modes = ["pinch", "pinch"]
    elif far:
        modes = ["pinch", "inside"]
    else:
        modes = ["inside", "pinch"]
    for mode in modes if not tilted else ["inside"]:
        z0 = c.obj(BOWL)[2]
        if (
            mode == "pinch"
            and far
            and "inside" in modes
            and plan_pinch(boxes, origin, hand_yaws(c, origin), c.body("robot0_base"), strict=True) is None
        ):
            continue  # no room for a pinch (the drawer): drag the bowl nearer with an internal grasp instead
        yaw, release = yield from grasp(c, boxes, origin, tilt, mode, drag=far and mode == "inside")
        yield from slide_clear(c, boxes, origin)
        yield from (peel(c, origin) if wedged else lift(c))
        if z0 + LIFT_STARTED < c.obj(BOWL)[2] <= z0 + LIFTED:
            # a pinched bowl comes free of its support late (it hangs up to 2 cm lower in the pads than
            # where it was gripped): it is on its way, lift further before judging
            yield from lift(c)
        if c.obj(BOWL)[2] > z0 + LIFTED:
            break
        yield from c.set_grip(release, 8)  # not lifted: let go and back off upward
        yield from c.move(c.eef() + [0, 0, 0.05], tol=0.01, rot_tol=3.0, max_steps=15)
        origin = c.obj(BOWL)
    if tilted or wedged:  # clear of the ramekin (or peeled off the stove), turn it upright while carried
        yield from c.move(c.eef() + [0, 0, 0.02], vmax=0.6, tol=0.01, rot_tol=3.0, max_steps=10)
        c.R_target = rot_z(yaw) @ R_DOWN
        c.rot_limit = 0.5
    yield from carry_to_plate(c, boxes, release)


def lift(c: ScriptContext) -> Script:
    """Raise the hand 3 cm (orientation as it is) to see whether the grasp holds the bowl."""
    yield from c.move(c.eef() + [0, 0, 0.03], vmax=0.6, tol=0.008, rot_tol=3.0, max_steps=15)


def peel(c: ScriptContext, origin: np.ndarray) -> Script:
    """Lift a bowl pinched by its near rim while tipping it ``PEEL`` rad about its far side, so that its
    base comes off a wedging support (the stove's burner) one side first."""
    radial = np.array([*(c.eef()[:2] - origin[:2]), 0.0])
    radial /= max(np.linalg.norm(radial), 1e-9)
    tip = Rotation.from_rotvec(np.cross(radial, [0.0, 0.0, 1.0]) * PEEL).as_matrix()
    c.R_target = tip @ c.R_target
    yield from c.move(c.eef() + [0, 0, 0.03] - 0.01 * radial, vmax=0.6, tol=0.008, rot_tol=0.1, max_steps=20)


def grasp(
    c: ScriptContext, boxes: Boxes, origin: np.ndarray, tilt: np.ndarray, mode: str, drag: bool = False
) -> Generator[np.ndarray, None, tuple[float, float]]:
    """Plan and run an internal grasp (``mode`` "inside") or a rim pinch ("pinch") of the bowl at
    ``origin`` (its axis ``tilt[:, 2]``); returns the hand's yaw and the gripper command that lets go.

    ``drag`` (an internal grasp of a bowl at the edge of the reach, in the drawer): the closed fingers go
    in DRAG_IN off-centre toward the robot, drag the bowl DRAG m toward it and re-centre on it before
    opening."""
    axis = tilt[:, 2]
    upright = axis[2] >= np.cos(TILTED)
    if not upright:
        # finger axis along the tilt's own (horizontal) axis, the gripper leaning onto the bowl's axis;
        # of the two equivalent yaws the one in [pi/2, 3pi/2) (measured on the ramekin bowl: the other
        # drives joint 7 to its 2.9 limit and the approach stalls)
        v = np.cross([0.0, 0.0, 1.0], axis)
        yaw0 = np.arctan2(v[1], v[0]) - np.pi / 2
        grip, yaw = plan_inside(boxes, origin, tilt, [(yaw0 + np.pi / 2) % np.pi + np.pi / 2])
    elif mode == "pinch":
        grip, yaw, aperture = plan_pinch(boxes, origin, hand_yaws(c, origin), c.body("robot0_base"))
    else:
        grip, yaw = plan_inside(boxes, origin, tilt, hand_yaws(c, origin))
    hold, release = (CLOSE, OPEN) if mode == "pinch" else (OPEN, CLOSE)
    c.grip = release  # the fingers go in open for a pinch, closed for an internal grasp
    c.R_target = tilt @ rot_z(yaw) @ R_DOWN
    if mode == "pinch" and aperture < APERTURES[0]:  # narrow the fingers to ``aperture`` on the way
        c.grip = OPEN
        yield from set_aperture(c, c.move(grip + 0.06 * axis, tol=0.03, rot_tol=3.0, max_steps=80), aperture)

    # approach: straight to a point above the grip on the bowl's axis when the hand's way there is
    # clear of the boxes, else over them at a safe height; then in along the axis
    pre = grip + 0.06 * axis
    way = [c.eef() + (pre - c.eef()) * f for f in np.linspace(0.2, 1.0, 9)]
    if any(boxes.hit_points(hand_points(p, c.R_target), 0.01) for p in way):
        safe_z = max(c.eef()[2], pre[2], *(boxes.top[boxes.xy_overlap(pre[:2], 0.12)] + 0.15))
        yield from c.move(np.array([*c.eef()[:2], safe_z]), tol=0.02, rot_tol=3.0, max_steps=30)
        yield from c.move(np.array([*pre[:2], safe_z]), tol=0.015, rot_tol=3.0, max_steps=80)
    # brake 3 cm short: the arm coasts 2-3 cm after a full-speed move, and coasting past a far bowl (the
    # drawer) stretches it into a pose it cannot servo back from
    yield from c.move(pre, tol=0.03, rot_tol=3.0, max_steps=80)
    yield from c.move(pre, vmax=0.4, tol=0.008, rot_tol=0.08, max_steps=40)
    if drag:
        R = c.R_target
        toward = R[:, 0] * (np.sign((c.body("robot0_base")[:2] - origin[:2]) @ R[:2, 0]) or 1.0)
        toward[2] = 0.0
        grip_in = grip + DRAG_IN * toward
        yield from c.move(grip_in + 0.06 * axis, vmax=0.6, tol=0.008, rot_tol=0.08, max_steps=30)
        yield from c.precise(c.move(grip_in, vmax=0.5, tol=0.005, rot_tol=0.05, max_steps=50))
        yield from c.precise(c.move(grip_in + DRAG * toward, vmax=0.4, tol=0.005, max_steps=30))
        grip = grip + c.obj(BOWL) - origin  # re-centre on the bowl (it may slide less than DRAG)
    yield from c.precise(c.move(grip, vmax=0.5, tol=0.004, rot_tol=0.05, max_steps=50))
    if mode == "pinch":
        yield from c.set_grip(hold, 15)
    else:  # fingers opening against an upright bowl's sloping inner wall ride up it: press them down
        # while they open (not into a leaning bowl: that pushes it off the ramekin)
        c.grip = hold
        press = PRESS_IN if upright else 0.0
        yield from c.precise(c.hold(10, grip - press * axis))
    return yaw, release


def set_aperture(c: ScriptContext, script: Script, aperture: float) -> Script:
    """Run ``script`` while closing the open fingers to an opening of ``aperture`` m and holding it there
    (steered on the actuators' target, which leads the fingers; gripper command 0 holds it)."""
    for action in script:
        action = action.copy()
        error = c.finger_gap_target() - aperture
        action[6] = CLOSE if error > 0.005 else OPEN if error < -0.005 else 0.0
        yield action
    c.grip = 0.0


def slide_clear(c: ScriptContext, boxes: Boxes, origin: np.ndarray) -> Script:
    """If a box hangs over the bowl (its bottom between the rim and 10 cm above it), slide the bowl
    horizontally out from under it along the box's shortest escape axis."""
    rim = origin[2] + RIM_HEIGHT
    over = (
        (boxes.bottom > rim - 0.01) & (boxes.bottom < rim + 0.10) & boxes.xy_overlap(origin[:2], BOWL_RADIUS)
    )
    if not np.any(over):
        return
    shift = np.zeros(2)
    local = boxes.local_xy(origin[:2])
    for i in np.flatnonzero(over):
        pen = boxes.half[i] + BOWL_RADIUS + 0.012 - np.abs(local[i])
        pen[np.abs(boxes.R[i][2]) > 0.5] = np.inf  # the box's vertical axis: no escape that way
        k = int(np.argmin(pen))
        shift += (boxes.R[i][:, k] * np.sign(local[i, k]) * pen[k])[:2]
    shift *= min(1.0, 0.04 / max(np.linalg.norm(shift), 1e-9))
    target = c.eef() + [*shift, 0.003]
    yield from c.precise(c.move(target, vmax=0.4, tol=0.004, max_steps=25))


def carry_to_plate(
    c: ScriptContext, boxes: Boxes, release: float, margin: float = 0.025, lookahead: float = 0.07
) -> Script:
    """Carry the held bowl along the straight xy line to the plate, its bottom ``margin`` above every box
    near the line (pure pursuit ``lookahead`` m ahead, closed-loop on the bowl), lower it onto the plate
    and release it."""
    start, plate = c.obj(BOWL), c.obj(PLATE)
    line = plate[:2] - start[:2]
    length = float(np.linalg.norm(line))
    s_grid = np.arange(0.0, length + 0.01, 0.01)
    floor = plate[2] + 0.03  # bowl bottom over the plate rim
    unit = line / max(length, 1e-9)
    clear = np.array(
        [
            np.max(boxes.top[boxes.xy_overlap(start[:2] + unit * s, BOWL_RADIUS + 0.015)], initial=floor)
            for s in s_grid
        ]
    )
    clear = clear + margin
    clear[-1] = floor + margin / 2

    def carrot() -> np.ndarray:
        bowl = c.obj(BOWL)
        s = float(np.clip((bowl[:2] - start[:2]) @ unit, 0.0, length))
        i0 = int(s / 0.01)
        need = clear[i0]  # first rise over what is under the bowl now, then follow the profile ahead
        if bowl[2] < need - 0.01:
            goal = np.array([*bowl[:2], need])
        else:
            s_ahead = min(s + lookahead, length)
            i1 = int(np.ceil(s_ahead / 0.01))
            goal = np.array([*(start[:2] + unit * s_ahead), clear[i0 : i1 + 1].max()])
        return c.eef() + goal - bowl

    def near_plate() -> bool:
        return np.linalg.norm(c.obj(BOWL)[:2] - plate[:2]) < 0.02

    for _ in range(150):
        if near_plate() or np.linalg.norm(c.eef() - c.obj(BOWL)) > 0.15:  # there, or the bowl was lost
            break
        yield c.action(carrot(), 1.0)
    drop = np.array([plate[0], plate[1], plate[2] + 0.015])
    yield from c.precise(
        c.move(lambda: c.eef() + drop - c.obj(BOWL), vmax=0.5, tol=0.006, rot_tol=0.3, max_steps=60)
    )
    yield from c.set_grip(release, 8)
    yield from c.move(lambda: c.eef() * [1, 1, 0] + [0, 0, plate[2] + 0.2], tol=0.01, max_steps=30)


def make_spatial_expert(env_name: str = "libero_spatial") -> ScriptedExpert:
    """The LIBERO-Spatial expert (all 10 tasks share one script)."""
    if env_name != "libero_spatial":
        raise ValueError(f"env_name: the LIBERO-Spatial expert serves 'libero_spatial', got {env_name!r}")
    return ScriptedExpert(dict.fromkeys(range(10), bowl_on_plate))
