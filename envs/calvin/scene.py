"""The CALVIN play table for scenes A-D as MJCF, from primitives (sizes and positions: calvin-facts.md 2, 7).

World frame as in CALVIN: table at the origin, z up, the robot at (-0.34, -0.46, 0.24) facing +y. All
numbers are CALVIN's after its 0.8 global scaling. ``build_model(layout)`` returns a compiled
``mujoco.MjModel``: our table + three blocks + the Panda of ``assets/panda.xml`` (meshes from robosuite).

Body names carry CALVIN's names: the table's moving parts are bodies ``slide_link``, ``drawer_link``,
``button_link``, ``switch_link`` (joints ``base__slide`` ...); every static table geom is named
``<link>__<part>`` (``base_link__top``, ``plank_link__board``, ...) so contacts map to CALVIN's links.

Where we depart from calvin_env (our simulator differs, or a mesh had to become boxes):
- the table is boxes; the drawer handle is a bar on two posts 4 cm off the front (closed fingers hook
  behind it); the switch is a tilted plate with an upright knob; moving parts do not collide with the
  static table (they slide in it);
- block inertia is a solid box's (CALVIN's URDFs say 1 kg m^2, which soft finger contacts cannot turn);
- the Panda collides through its hand and long fingers only (arm links are visual), and the finger target
  moves at most 0.2 m/s (pybullet's maxVelocity on the fingers).
"""

from __future__ import annotations

import functools
import importlib.util
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SMALL, MIDDLE, BIG = (0.04, 0.04, 0.04), (0.056, 0.04, 0.04), (0.08, 0.04, 0.04)
BLOCK_RGBA = {"block_red": "1 0 0 1", "block_blue": "0 0 1 1", "block_pink": "1 0 1 1"}
TABLE_TOP_Z = 0.44
PLANK_TOP_Z = 0.441
DRAWER_FLOOR_Z = 0.342
DRAWER_RANGE, BUTTON_RANGE, SWITCH_RANGE = 0.22, 0.02, 0.088
SWITCH_AXIS = (0.0, 0.5, 0.866)


@dataclass(frozen=True)
class SceneLayout:
    """Where scene X's fixed elements sit along x (facts 7.2); y and z are shared by all scenes."""

    name: str
    drawer_x: float
    slide_x: float
    slide_range: float
    plank_x: tuple[float, float]
    button_x: float
    switch_x: float
    block_sizes: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    table_rgba: str = "0.62 0.46 0.31 1"
    table_slot_x: tuple[float, float] = (0.0500000896, 0.229995412)  # CALVIN's two table slots (scene D)

    @property
    def slider_slots(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Block centres in the left and right cabinet slots (scene D's slots, shifted with the plank)."""
        shift = self.plank_x[0] - (-0.364)
        return (-0.240851662 + shift, 0.0924044687, 0.460990009), (
            0.0703416330 + shift,
            0.0924044687,
            0.460990009,
        )


SCENES: dict[str, SceneLayout] = {
    "A": SceneLayout(
        "A",
        0.10,
        -0.10,
        0.28,
        (-0.364, 0.164),
        -0.28,
        0.30,
        {"block_red": MIDDLE, "block_blue": BIG, "block_pink": SMALL},
        "0.47 0.27 0.18 1",
    ),
    "B": SceneLayout(
        "B",
        0.18,
        0.088,
        0.304,
        (-0.184, 0.344),
        0.28,
        -0.32,
        {"block_red": SMALL, "block_blue": BIG, "block_pink": MIDDLE},
        "0.96 0.77 0.55 1",
        (0.0, 0.11),  # B: table sampling x [-0.35, 0.15], button at +0.28, drawer spans x [-0.035, 0.395]
    ),
    "C": SceneLayout(
        "C",
        0.10,
        0.06,
        0.24,
        (-0.184, 0.344),
        -0.12,
        -0.32,
        {"block_red": BIG, "block_blue": SMALL, "block_pink": MIDDLE},
        "0.62 0.42 0.25 1",
    ),
    "D": SceneLayout(
        "D",
        0.18,
        -0.10,
        0.28,
        (-0.364, 0.164),
        -0.12,
        0.30,
        {"block_red": MIDDLE, "block_blue": SMALL, "block_pink": BIG},
        "0.62 0.46 0.31 1",
    ),
}


def _box(
    name: str,
    lo: tuple[float, float, float],
    hi: tuple[float, float, float],
    rgba: str,
    origin: tuple[float, float, float] = (0, 0, 0),
    extra: str = "",
) -> str:
    """A box geom spanning world corners ``lo``..``hi``, written relative to a body at ``origin``."""
    centre = [(a + b) / 2 - o for a, b, o in zip(lo, hi, origin, strict=True)]
    half = [(b - a) / 2 for a, b in zip(lo, hi, strict=True)]
    return (
        f'<geom name="{name}" type="box" pos="{centre[0]:.4f} {centre[1]:.4f} {centre[2]:.4f}" '
        f'size="{half[0]:.4f} {half[1]:.4f} {half[2]:.4f}" rgba="{rgba}" {extra}/>'
    )


def table_xml(layout: SceneLayout) -> str:
    """Worldbody XML of the table (static parts, cabinet, slider, drawer, button, switch, lights)."""
    wood, dark, white = layout.table_rgba, "0.35 0.25 0.18 1", "1 1 1 1"
    dx, (px0, px1) = layout.drawer_x, layout.plank_x
    g: list[str] = []
    # base_link: table top slab over the drawer cavity, legs/sides, cabinet walls and rails.
    g.append(_box("base_link__top", (-0.441, -0.181, 0.41), (0.441, 0.016, TABLE_TOP_Z), wood))
    g.append(_box("base_link__top_back_l", (-0.441, 0.016, 0.41), (px0, 0.181, TABLE_TOP_Z), wood))
    g.append(_box("base_link__top_back_r", (px1, 0.016, 0.41), (0.441, 0.181, TABLE_TOP_Z), wood))
    g.append(_box("base_link__under_drawer", (dx - 0.225, -0.181, 0.0), (dx + 0.225, 0.181, 0.29), wood))
    g.append(_box("base_link__left", (-0.441, -0.181, 0.0), (dx - 0.225, 0.181, 0.41), wood))
    g.append(_box("base_link__right", (dx + 0.225, -0.181, 0.0), (0.441, 0.181, 0.41), wood))
    g.append(_box("base_link__behind_drawer", (dx - 0.225, 0.08, 0.29), (dx + 0.225, 0.181, 0.41), wood))
    g.append(_box("base_link__cab_back", (px0 - 0.03, 0.164, PLANK_TOP_Z), (px1 + 0.03, 0.181, 0.63), wood))
    g.append(_box("base_link__cab_left", (px0 - 0.03, 0.016, PLANK_TOP_Z), (px0, 0.164, 0.63), wood))
    g.append(_box("base_link__cab_right", (px1, 0.016, PLANK_TOP_Z), (px1 + 0.03, 0.164, 0.63), wood))
    g.append(_box("base_link__cab_top", (px0 - 0.03, 0.016, 0.63), (px1 + 0.03, 0.181, 0.645), wood))
    sx = layout.switch_x
    g.append(_box("base_link__bulb_post", (sx - 0.015, 0.145, TABLE_TOP_Z), (sx + 0.015, 0.175, 0.645), dark))
    g.append(
        _box(
            "base_link__switch_panel",
            (sx - 0.07, 0.0, TABLE_TOP_Z),
            (sx + 0.07, 0.1, 0.47),
            dark,
            extra='contype="0" conaffinity="0"',
        )
    )
    static = [_box("plank_link__board", (px0, 0.016, 0.416), (px1, 0.164, PLANK_TOP_Z), wood)]
    bx = layout.button_x
    led = _box("led_link__bar", (bx - 0.083, 0.137, 0.645), (bx + 0.083, 0.183, 0.667), white)
    bulb = (
        f'<geom name="light_link__bulb" type="sphere" size="0.031" pos="{sx:.4f} 0.16 0.672" rgba="{white}"/>'
    )
    # sliding door (moves along -x), with a handle bar in front
    so = (layout.slide_x, 0.075, 0.535)
    door = [
        _box("slide_link__panel", (so[0] - 0.005, -0.010, 0.447), (so[0] + 0.285, 0.008, 0.618), dark, so),
        _box("slide_link__handle", (so[0] + 0.125, -0.060, 0.50), (so[0] + 0.145, -0.010, 0.58), dark, so),
    ]
    # drawer (moves along -y): floor, walls, handle
    do = (dx, 0.0, 0.32)
    drawer = [
        _box("drawer_link__floor", (dx - 0.215, -0.235, 0.33), (dx + 0.215, 0.065, DRAWER_FLOOR_Z), wood, do),
        _box("drawer_link__front", (dx - 0.225, -0.245, 0.30), (dx + 0.225, -0.235, 0.405), wood, do),
        _box("drawer_link__back", (dx - 0.215, 0.055, 0.33), (dx + 0.215, 0.065, 0.40), wood, do),
        _box("drawer_link__left", (dx - 0.225, -0.235, 0.30), (dx - 0.215, 0.065, 0.40), wood, do),
        _box("drawer_link__right", (dx + 0.215, -0.235, 0.30), (dx + 0.225, 0.065, 0.40), wood, do),
        # handle bar standing 0.04 m off the front on two posts, so closed fingers can hook behind it
        _box("drawer_link__handle", (dx - 0.07, -0.30, 0.355), (dx + 0.07, -0.285, 0.375), dark, do),
        _box("drawer_link__post_l", (dx - 0.07, -0.285, 0.355), (dx - 0.055, -0.245, 0.375), dark, do),
        _box("drawer_link__post_r", (dx + 0.055, -0.285, 0.355), (dx + 0.07, -0.245, 0.375), dark, do),
    ]
    bo = (bx, -0.12, 0.46)
    button = _box(
        "button_link__cap", (bx - 0.035, -0.155, 0.457), (bx + 0.035, -0.085, 0.487), "0.2 0.2 0.2 1", bo
    )
    button_base = _box(
        "base_link__button_base",
        (bx - 0.045, -0.165, TABLE_TOP_Z),
        (bx + 0.045, -0.075, 0.45),
        dark,
        extra='contype="0" conaffinity="0"',
    )
    # switch: a tilted plate sliding along (0, 0.5, 0.866) (box y), with an upright knob in front of it
    # (vertical front face, flat top) that a finger pushes back-and-up (on) or down (off)
    sw = (
        '<geom name="switch_link__plate" type="box" size="0.064 0.025 0.01" euler="1.0472 0 0" '
        'rgba="0.15 0.15 0.15 1"/>'
        '<geom name="switch_link__knob" type="box" size="0.02 0.015 0.015" pos="0 -0.025 0.012" '
        'rgba="0.3 0.3 0.3 1"/>'
    )
    ax = " ".join(str(a) for a in SWITCH_AXIS)
    return "\n".join(
        [
            '<body name="table" pos="0 0 0">',
            *g,
            button_base,
            "</body>",
            '<body name="plank_link" pos="0 0 0">',
            *static,
            "</body>",
            '<body name="led_link" pos="0 0 0">',
            led,
            "</body>",
            '<body name="light_link" pos="0 0 0">',
            bulb,
            "</body>",
            f'<body name="slide_link" pos="{so[0]} {so[1]} {so[2]}">',
            f'<joint name="base__slide" type="slide" axis="-1 0 0" range="0 {layout.slide_range}" '
            'frictionloss="4" '
            'damping="2" armature="0.5"/>',
            *door,
            "</body>",
            f'<body name="drawer_link" pos="{do[0]} {do[1]} {do[2]}">',
            f'<joint name="base__drawer" type="slide" axis="0 -1 0" range="0 {DRAWER_RANGE}" '
            'frictionloss="4" '
            'damping="2" armature="0.5"/>',
            *drawer,
            "</body>",
            f'<body name="button_link" pos="{bo[0]} {bo[1]} {bo[2]}">',
            f'<joint name="base__button" type="slide" axis="0 0 -1" range="0 {BUTTON_RANGE}" damping="1"/>',
            '<inertial pos="0 0 0" mass="0.05" diaginertia="1e-4 1e-4 1e-4"/>',
            button,
            "</body>",
            f'<body name="switch_link" pos="{sx} 0.061 0.495" gravcomp="1">',
            f'<joint name="base__switch" type="slide" axis="{ax}" range="0 {SWITCH_RANGE}" frictionloss="4" '
            'damping="2" armature="0.2"/>',
            '<inertial pos="0 0 0" mass="0.1" diaginertia="1e-4 1e-4 1e-4"/>',
            sw,
            "</body>",
        ]
    )


def blocks_xml(layout: SceneLayout) -> str:
    """Three free blocks, parked apart: 1 kg and friction 0.7/0.001 as CALVIN's URDFs, but the inertia of a
    solid box (CALVIN's URDFs say 1 kg m^2, which MuJoCo's soft finger contacts cannot turn)."""
    out = []
    for i, (name, rgba) in enumerate(BLOCK_RGBA.items()):
        size = layout.block_sizes[name]
        half = " ".join(f"{s / 2:.4f}" for s in size)
        out.append(
            f'<body name="{name}" pos="{0.1 * i} -0.12 0.46"><freejoint name="{name}"/>'
            f'<geom name="{name}" type="box" size="{half}" rgba="{rgba}" mass="1" '
            'friction="0.7 0.001 0.0001" '
            f'condim="4"/></body>'
        )
    return "\n".join(out)


def _articulation_excludes() -> str:
    """The moving table parts slide in (or touch) the static table: no contacts between them."""
    moving = ("slide_link", "drawer_link", "button_link", "switch_link")
    static = ("table", "plank_link", "led_link", "light_link")
    pairs = [(m, s) for m in moving for s in static] + [
        (a, b) for i, a in enumerate(moving) for b in moving[i + 1 :]
    ]
    return "".join(f'<exclude body1="{a}" body2="{b}"/>' for a, b in pairs)


def _static_camera() -> str:
    import numpy as np

    eye = np.array([2.871459009488717, -2.166602199425597, 2.555159848480571])
    at = np.array([-0.026242351159453392, -0.0302329882979393, 0.3920000493526459])
    up = np.array([0.4041403970338857, 0.22629790978217404, 0.8862616969685161])
    forward = (at - eye) / np.linalg.norm(at - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    xy = " ".join(f"{v:.6f}" for v in (*right, *cam_up))
    return f'<camera name="static" pos="{eye[0]:.6f} {eye[1]:.6f} {eye[2]:.6f}" xyaxes="{xy}" fovy="10"/>'


def robosuite_panda_mesh_dir() -> Path:
    """robosuite's Panda mesh folder (package data of the installed robosuite; not imported)."""
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "robosuite is not installed; the CALVIN Panda uses its meshes: pip install robosuite==1.4.*"
        )
    return (
        Path(next(iter(spec.submodule_search_locations)))
        / "models"
        / "assets"
        / "robots"
        / "panda"
        / "meshes"
    )


@functools.lru_cache(maxsize=1)
def _mesh_assets() -> dict[str, bytes]:
    mesh_dir = robosuite_panda_mesh_dir()
    return {f"link{i}_vis.stl": (mesh_dir / f"link{i}_vis.stl").read_bytes() for i in range(8)}


def panda_xml() -> str:
    return (resources.files("dfm_vla.envs.calvin") / "assets" / "panda.xml").read_text()


def scene_xml(layout: SceneLayout) -> str:
    """The whole MJCF: options, table, blocks, cameras, and the Panda's sections merged in."""
    root = ET.fromstring(
        f"""<mujoco model="calvin_scene_{layout.name}">
  <compiler angle="radian"/>
  <option timestep="{1 / 240}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual><global offwidth="200" offheight="200"/><quality shadowsize="0"/>
    <map znear="0.005" zfar="20"/></visual>
  <default><geom solref="0.01 1" solimp="0.95 0.99 0.001"/></default>
  <asset/>
  <worldbody>
    <light pos="0 -1 3" dir="0 0.3 -1" diffuse="0.8 0.8 0.8" directional="true"/>
    <geom name="plane" type="plane" size="3 3 0.1" rgba="0.55 0.55 0.55 1"/>
    <geom name="robot_stand" type="cylinder" size="0.13 0.12" pos="-0.34 -0.46 0.12" rgba="0.2 0.2 0.2 1"
          contype="0" conaffinity="0"/>
    {_static_camera()}
    {table_xml(layout)}
    {blocks_xml(layout)}
  </worldbody>
  <contact>{_articulation_excludes()}</contact>
</mujoco>"""
    )
    robot = ET.fromstring(panda_xml())
    for section in ("default", "asset", "worldbody", "contact", "equality", "actuator"):
        src = robot.find(section)
        if src is None:
            continue
        dst = root.find(section)
        if dst is None:
            dst = ET.SubElement(root, section)
        dst.extend(list(src))
    return ET.tostring(root, encoding="unicode")


def build_model(layout: SceneLayout):
    """Compile the scene (``mujoco.MjModel``)."""
    import mujoco

    return mujoco.MjModel.from_xml_string(scene_xml(layout), _mesh_assets())


def build_robot_model():
    """The Panda alone (for inverse kinematics), same base pose and joint order as in the scene."""
    import mujoco

    return mujoco.MjModel.from_xml_string(panda_xml(), _mesh_assets())
