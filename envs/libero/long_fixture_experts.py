"""LIBERO-Long tasks with an articulated fixture or a tight container (tasks 3, 5, 9 of ``libero_10``).

- Task 3, the bowl into the open bottom drawer of the white cabinet and the drawer shut: a radial
  pinch of the bowl's rim with the fingers along x (the hand then stays clear of the cabinet's front
  above the drawer), the bowl set on the drawer's floor, and the drawer pushed shut by its handle with
  the closed fingers, the hand tilted back over them.
- Task 5, the book into the caddy's back compartment: the book (2.9 x 11 x 13.4 cm, standing on its
  bottom edge, yawed -45..-90 degrees) is pinched across its thickness near its top, turned so that its
  thickness lies along world x (the compartment is 6 cm by 13 cm) and lowered into the compartment.
  ``In`` tests the book's origin (its bottom face) against a box whose floor is 4 mm above the
  compartment's: a book standing upright on the floor is not "in". Success comes while the book is
  lowered (its origin enters the box from above, the book still held; the episode ends there), as
  LIBERO-Goal's "push the plate" succeeds while the plate is held.
- Task 9, the mug into the microwave and the door shut: the mug is carried by its handle with the hand
  outside the cavity, and the open door is pushed round its hinge from its outer face.

Units: metres, radians, world frame.
"""

from __future__ import annotations

import numpy as np

from dfm_vla.envs.libero.expert_base import (
    OPEN,
    R_DOWN,
    Script,
    ScriptContext,
    boxes_union,
    geom_box,
    rot_x,
    rot_z,
)
from dfm_vla.envs.libero.long_experts import (
    pick,
    place_held,
    wait_until_still,
    yaw_for_fingers,
)

BOWL = "akita_black_bowl_1"
DRAWER_JOINT, DRAWER_REGION = "white_cabinet_1_bottom_level", "white_cabinet_1_bottom_region"
DRAWER_HANDLE, DRAWER_WALL_TOP = "white_cabinet_1_g40", 0.982  # handle bar geom; z of the drawer's walls
# Pushing a drawer shut toward +y: the closed fingers along world x, the hand tilted 40 degrees so that
# it leans back (-y) over the fingertips, clear of the cabinet's front above the drawer. Measured from
# above the open drawer: this pose reaches the handle and shuts the drawer (slide +0.002); a horizontal
# hand pointing along +y stalls 11 cm above the handle.
R_PUSH_Y = rot_x(0.7) @ rot_z(np.pi / 2) @ R_DOWN
MUG, MICROWAVE_JOINT = "white_yellow_mug_1", "microwave_1_microjoint"
MICROWAVE_FLOOR, MICROWAVE_ROOF = "microwave_1_g7", "microwave_1_g6"  # boxes of the cavity's floor and roof
BOOK, BOOK_GEOM = "black_book_1", "black_book_1_g1"
CADDY_BACK = "desk_caddy_1_back_contain_region"
CADDY_WALL_TOP = 1.055  # z of the caddy's tallest wall around the back compartment (back wall)


def book_in_caddy(c: ScriptContext, clear: float = 0.03, grip_below_top: float = 0.02) -> Script:
    """Task 5: the book into the caddy's back compartment (see the module docstring)."""
    yield from wait_until_still(c)
    c.phase = "grasp the book"
    c.rot_limit = 1.0
    g = c.model.geom_name2id(BOOK_GEOM)
    thickness_axis = np.array(c.data.geom_xmat[g]).reshape(3, 3)[:2, 0]
    _, top = geom_box(c, BOOK_GEOM)
    centre = np.array(c.data.geom_xpos[g])
    grip = np.array([centre[0], centre[1], top[2] - grip_below_top])
    offset = grip - c.obj(BOOK)
    R = rot_z(yaw_for_fingers(c, thickness_axis, grip)) @ R_DOWN
    lift_z = CADDY_WALL_TOP + clear + offset[2]  # the book's bottom ``clear`` over the walls
    yield from pick(c, lambda: c.obj(BOOK) + offset, R, lift_z)

    c.phase = "carry the book over the back compartment"
    region = c.site(CADDY_BACK)
    held = c.eef() - c.obj(BOOK)  # the origin's offset from the grip site as held
    above = np.array([region[0], region[1], 0.0]) + held
    above[2] = lift_z
    # turn the book's thickness onto world x on the way (the fingers pinch across the thickness)
    # (of the two equivalent finger directions, the nearer one)
    fingers_now = np.arctan2(c.eef_R()[1, 0], c.eef_R()[0, 0])
    turn = (-fingers_now + np.pi / 2) % np.pi - np.pi / 2
    c.R_target = rot_z(turn) @ c.eef_R()
    yield from c.move(above, tol=0.01, rot_tol=0.05, max_steps=120)

    # the turn moves the book under the fingers: centre it over the compartment closed-loop, then lower
    over = np.array([region[0], region[1], c.obj(BOOK)[2]])
    yield from c.move(lambda: c.eef() + over - c.obj(BOOK), vmax=0.5, tol=0.004, rot_tol=0.05, max_steps=40)
    c.phase = "lower the book into the compartment"
    inside = np.array([region[0], region[1], region[2] - 0.045])  # origin 1.5 cm over the box's floor
    yield from c.precise(c.move(lambda: c.eef() + inside - c.obj(BOOK), vmax=0.4, tol=0.005, max_steps=80))
    yield from c.hold(20)


def bowl_in_drawer_and_close(c: ScriptContext, drop: float = 0.02, past: float = -0.007) -> Script:
    """Task 3: the bowl into the open bottom drawer (origin ``drop`` m over its floor, then released),
    then the drawer pushed shut from its handle, the grip site driven to ``past`` m beyond where the
    handle's front face is once shut (``Close`` needs the slide past 0: shut is 0, the stop +0.01).

    The bowl is pinched radially at its +x rim (fingers along x, so the hand is 8 cm deep in y and stays
    clear of the cabinet's front above the drawer; the wine bottle stands to the -x side)."""
    yield from wait_until_still(c)
    c.phase = "grasp the bowl"
    c.rot_limit = 1.0
    _, floor = geom_box(c, "white_cabinet_1_g38")  # the drawer's floor board
    lift_z = DRAWER_WALL_TOP + 0.03 + 0.035  # the bowl's bottom 3 cm over the drawer's walls
    yield from pick(c, lambda: c.obj(BOWL) + [0.052, 0.0, 0.035], rot_z(np.pi / 2) @ R_DOWN, lift_z)
    c.phase = "put the bowl in the drawer"
    region = c.site(DRAWER_REGION)
    yield from place_held(c, BOWL, np.array([region[0], region[1], floor[2] + drop]), lift_z, rise=0.08)

    c.phase = "close the drawer"
    lo, hi = geom_box(c, DRAWER_HANDLE)
    closed_face_y = lo[1] - c.qpos(DRAWER_JOINT)  # the handle's front face once the drawer is shut
    push = np.array([(lo[0] + hi[0]) / 2, 0.0, (lo[2] + hi[2]) / 2])
    c.R_target = R_PUSH_Y.copy()
    c.grip = OPEN
    yield from c.move(np.array([push[0], lo[1] - 0.08, c.eef()[2]]), tol=0.02, rot_tol=0.15, max_steps=60)
    yield from c.move(np.array([push[0], lo[1] - 0.06, push[2]]), tol=0.01, rot_tol=0.08, max_steps=50)
    yield from c.set_grip(1.0, 10)
    target = np.array([push[0], closed_face_y + past, push[2]])
    for _ in range(120):
        if c.qpos(DRAWER_JOINT) > 0.001:
            break
        yield c.action(target, 0.8)
    yield from c.hold(10)


def mug_in_microwave_and_close(
    c: ScriptContext,
    tilt: float = 0.6,
    depth: float = 0.30,
    above_floor: float = 0.016,
    radius: float = 0.09,
    lead: float = 0.3,
) -> Script:
    """Task 9: the mug into the microwave (its origin at y ``depth``), then the door swung shut.

    The cavity is 14.4 cm tall for a 10.3 cm mug, so no hand fits above the mug inside: the mug is
    pinched by its handle (which points toward the robot, -y, away from the opening), fingers along x
    across the handle's 1.7 cm thickness, the hand rolled ``tilt`` rad about the finger axis so that it
    leans back (-y) under the cavity's roof edge; it is carried level ``above_floor`` over the cavity's
    floor and set down in its middle (x). The door (hinge at the cavity's -x front edge, open -1.94 rad,
    shut at 0, ``Close`` above -0.005) is pushed round from its outer face ``radius`` m from the hinge,
    the closed fingers along the door, the target leading the door by ``lead`` rad."""
    yield from wait_until_still(c)
    c.phase = "grasp the mug by its handle"
    c.rot_limit = 1.0
    names = [f"{MUG}_g{i}" for i in (1, 2, 3)]
    boxes = [geom_box(c, n) for n in names]
    lo, hi = boxes_union(boxes)
    bar_lo, bar_hi = boxes[0]  # g1: the handle's outer vertical bar
    grip = np.array([(lo[0] + hi[0]) / 2, (bar_lo[1] + bar_hi[1]) / 2, hi[2] - 0.02])
    offset = grip - c.obj(MUG)
    # (fingers toward -x rather than +x: joint 7 then starts the door sweep near where it ends)
    R = rot_x(tilt) @ rot_z(-np.pi / 2) @ R_DOWN
    floor = geom_box(c, MICROWAVE_FLOOR)[1][2]
    carry_z = floor + above_floor + offset[2]
    yield from pick(c, lambda: c.obj(MUG) + offset, R, carry_z)

    c.phase = "put the mug in the microwave"
    roof_lo, _ = geom_box(c, MICROWAVE_ROOF)
    centre_x = (geom_box(c, "microwave_1_g3")[1][0] + geom_box(c, "microwave_1_g4")[0][0]) / 2
    held = c.eef() - c.obj(MUG)
    front = np.array([centre_x, roof_lo[1] - 0.08, 0.0]) + held
    front[2] = carry_z
    yield from c.move(front, tol=0.01, rot_tol=0.08, max_steps=100)
    inside = np.array([centre_x, depth, floor + above_floor])
    yield from c.move(lambda: c.eef() + inside - c.obj(MUG), vmax=0.5, tol=0.006, max_steps=80)
    yield from c.precise(
        c.move(lambda: c.eef() + [0, 0, floor + 0.004 - c.obj(MUG)[2]], vmax=0.4, max_steps=20)
    )
    yield from c.set_grip(OPEN, 8)
    yield from c.move(c.eef() + [0, -0.10, 0], tol=0.015, rot_tol=0.3, max_steps=30)

    c.phase = "close the microwave door"
    jid = c.model.joint_name2id(MICROWAVE_JOINT)
    hinge = np.array(c.data.xanchor[jid])
    push_z = hinge[2] - 0.055
    door_top = geom_box(c, "microwave_1_g17")[1][2]

    def pusher(q: float, out: float) -> np.ndarray:
        along, normal = np.array([np.cos(q), np.sin(q)]), np.array([np.sin(q), -np.cos(q)])
        return np.array([*(hinge[:2] + radius * along + out * normal), push_z])

    # rise clear of the open door before turning the hand onto it (a turn beside it swings it open)
    yield from c.move(np.array([*c.eef()[:2], door_top + 0.08]), tol=0.02, rot_tol=3.0, max_steps=40)
    q0 = c.qpos(MICROWAVE_JOINT)
    yaw0 = yaw_for_fingers(c, np.array([np.cos(q0 / 2), np.sin(q0 / 2)]), pusher(q0 / 2, 0.05)) - q0 / 2
    c.R_target = rot_z(yaw0 + q0) @ R_DOWN
    c.grip = 1.0
    start = pusher(q0, 0.075)
    yield from c.move(np.array([*start[:2], door_top + 0.08]), tol=0.02, rot_tol=0.1, max_steps=80)
    yield from c.move(start, tol=0.01, rot_tol=0.1, max_steps=60)
    for _ in range(200):
        q = c.qpos(MICROWAVE_JOINT)
        if q > -0.002:
            break
        ahead = min(q + lead, 0.05)
        c.R_target = rot_z(yaw0 + ahead) @ R_DOWN
        yield c.action(pusher(ahead, 0.03), 0.6)
    yield from c.hold(10)
