"""Run our protocol and agents on the original calvin_env (PyBullet), when a user has installed it.

calvin_env is not on PyPI and cannot be installed on our CI machines (it needs the CALVIN repository,
pybullet and its data folder), so nothing here runs in CI; only the snapshot conversion is tested (on
hand-made ``info`` dicts in calvin_env's format). Install it with::

    git clone --recurse-submodules https://github.com/mees/calvin.git
    cd calvin/calvin_env && pip install -e .      # plus pybullet; see the CALVIN README

``OriginalCalvinEnv`` wraps a calvin_env ``PlayTableSimEnv`` in our API (``reset(options=...)``,
``unwrapped.set_task``, ``step`` -> success from *our* oracle on snapshots converted from calvin_env's
``info``), so ``protocol.evaluate`` and any agent run unchanged. Relative actions go to calvin_env as
7-vectors with the gripper binarised to +-1, as CALVIN's evaluation wrapper does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from dfm_vla.envs.calvin.chains import evaluation_chains, initial_env_state
from dfm_vla.envs.calvin.oracle import BLOCK_NAMES, BlockSnapshot, SceneSnapshot, task_success
from dfm_vla.envs.calvin.tasks import INSTRUCTIONS, TASK_NAMES

INSTALL_HINT = (
    "calvin_env is not installed. It is not on PyPI: clone https://github.com/mees/calvin with "
    "--recurse-submodules, then `pip install -e calvin/calvin_env` (needs pybullet), and pass the "
    "dataset's validation folder (scene D) as dataset_path."
)


def snapshot_from_calvin_info(info: dict[str, Any]) -> SceneSnapshot:
    """Convert calvin_env's ``get_info()`` (pybullet uids) into our name-based ``SceneSnapshot``."""
    scene, robot = info["scene_info"], info["robot_info"]
    table = scene["fixed_objects"]["table"]
    uid_name = {robot["uid"]: "robot", table["uid"]: "table"}
    link_name = {idx: name for name, idx in table["links"].items()}
    link_name.setdefault(-1, "base_link")
    for name, obj in scene["movable_objects"].items():
        uid_name[obj["uid"]] = name

    def contacts(points) -> frozenset[tuple[str, str]]:
        out = set()
        for c in points:
            body = uid_name.get(c[2], f"uid_{c[2]}")
            link = link_name.get(c[4], str(c[4])) if body == "table" else "base"
            out.add((body, link))
        return frozenset(out)

    blocks = {}
    for name in BLOCK_NAMES:
        obj = scene["movable_objects"][name]
        blocks[name] = BlockSnapshot(
            np.asarray(obj["current_pos"], float),
            np.asarray(obj["current_orn"], float),
            np.asarray(obj["current_lin_vel"], float),
            np.asarray(obj["current_ang_vel"], float),
            contacts(obj["contacts"]),
        )
    doors = {j: float(scene["doors"][j]["current_state"]) for j in ("base__slide", "base__drawer")}
    lights = {k: int(scene["lights"][k]["logical_state"]) for k in ("lightbulb", "led")}
    return SceneSnapshot(blocks, doors, lights, contacts(robot["contacts"]))


class OriginalCalvinEnv:
    """calvin_env behind our env API (not a gymnasium.Env: no spaces are promised)."""

    max_episode_steps = 360

    def __init__(self, dataset_path: str, show_gui: bool = False):
        try:
            from calvin_env.envs.play_table_env import get_env  # noqa: PLC0415
        except ImportError as err:
            raise ImportError(INSTALL_HINT) from err
        self.env = get_env(dataset_path, show_gui=show_gui)
        self.task = TASK_NAMES[0]
        self._start: SceneSnapshot | None = None
        self._last_obs: dict[str, Any] = {}

    @property
    def unwrapped(self) -> OriginalCalvinEnv:
        return self

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.task]

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        obs = {
            "robot_obs": np.asarray(raw["robot_obs"], float),
            "scene_obs": np.asarray(raw["scene_obs"], float),
            "language": self.instruction,
        }
        obs["state"] = obs["robot_obs"].astype(np.float32)
        for key, image in raw.get("rgb_obs", {}).items():
            obs[key] = image
        if "rgb_static" in obs:
            obs["images"] = {"static": obs["rgb_static"], "gripper": obs.get("rgb_gripper")}
        self._last_obs = obs
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        task = options.get("task", TASK_NAMES[0])
        if "chain_index" in options:
            condition, seq = evaluation_chains()[int(options["chain_index"])]
            robot_obs, scene_obs = initial_env_state(condition)
            task = seq[0]
        else:
            robot_obs, scene_obs = options["robot_obs"], options["scene_obs"]
        raw = self.env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        self.task = task
        return self._obs(raw), {"success": False, "task": task}

    def set_task(self, task: str) -> dict[str, Any]:
        if task not in TASK_NAMES:
            raise ValueError(f"task: expected one of CALVIN's 34 task names, got {task!r}")
        self.task = task
        self._start = snapshot_from_calvin_info(self.env.get_info())
        return self._obs(self.env.get_obs())

    def step(self, action):
        a = np.asarray(action, float).copy()
        a[6] = 1.0 if a[6] > 0 else -1.0
        raw, _, _, info = self.env.step(a)
        success = task_success(self.task, self._start, snapshot_from_calvin_info(info))
        return self._obs(raw), float(success), success, False, {"success": success, "task": self.task}

    def close(self) -> None:
        self.env.close()


def quat_xyzw_from_euler(euler: np.ndarray) -> np.ndarray:
    """pybullet ``getQuaternionFromEuler`` equivalent (extrinsic xyz), for building test ``info`` dicts."""
    return Rotation.from_euler("xyz", euler).as_quat()
