"""The LIBERO evaluation protocol, in one place.

These are the choices that published LIBERO numbers use (OpenVLA's ``run_libero_eval.py``, openpi's
``examples/libero/main.py``, UniVLA's LIBERO evaluation); ``LiberoEnv`` reads every one of them from
here, so a reader can check the protocol without reading the env.

- Initial states: the 50 fixed initial states per task shipped with the benchmark
  (``benchmark.get_task_init_states(task_id)``, array (50, 79) = [time, qpos, qvel]). Evaluation uses
  ``reset(options={"init_state_id": k})`` for k in 0..49; scripted experts use random placement
  (``init_state_id=None``) so training demos never come from the evaluation states.
- Settling: after reset (and after setting an initial state) the env steps ``SETTLE_STEPS`` no-op
  actions (``SETTLE_ACTION``: zero motion, gripper open) because objects spawn 1-7 cm in the air.
  These steps do not count toward the step limit and are not returned to the agent.
- Step limits per suite (``MAX_EPISODE_STEPS``), counted after settling: spatial 220, object 280,
  goal 300, long (libero_10) 520, libero_90 400. The episode is truncated at the limit.
- Success: the benchmark's own ``_check_success`` (the BDDL goal predicates), checked after every step;
  the episode terminates with reward 1.0 at the first success.
- Images: agentview and wrist (``robot0_eye_in_hand``) cameras, rendered by robosuite's offscreen
  renderer and rotated 180 degrees (``img[::-1, ::-1]``) as the published pipelines do
  (``IMAGE_ROTATE_180``). Their training sets were re-rendered the same way.
- Controller: robosuite ``OSC_POSE`` delta end-effector control at 20 Hz (LIBERO's default); the 7-d
  action [dx, dy, dz, rx, ry, rz, gripper] lies in [-1, 1] (gripper: -1 open, +1 close).
"""

from __future__ import annotations

import numpy as np

SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
SUITE_ALIASES: dict[str, str] = {"libero_long": "libero_10"}

NUM_INIT_STATES = 50
SETTLE_STEPS = 10
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
MAX_EPISODE_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
ACTION_DIM = 7
CONTROL_FREQ_HZ = 20
IMAGE_ROTATE_180 = True

# view name in obs["images"] -> robosuite camera name; demo files store them as f"{DEMO_IMAGE_KEYS[view]}".
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
DEMO_IMAGE_KEYS: dict[str, str] = {"agentview": "agentview_rgb", "wrist": "eye_in_hand_rgb"}


def canonical_suite(name: str) -> str:
    """``libero_long`` -> ``libero_10``; raise on an unknown suite name."""
    suite = SUITE_ALIASES.get(name, name)
    if suite not in SUITES:
        raise ValueError(f"suite: expected one of {SUITES + tuple(SUITE_ALIASES)}, got {name!r}")
    return suite
