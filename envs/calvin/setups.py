"""Random start states for one CALVIN task (for experts and demo collection; never the evaluation states).

A symbolic start state is drawn from CALVIN's 192 initial conditions among those where the task (or
the lift it needs first) is feasible, built by ``chains.initial_env_state``, jittered (block xy +-1.5 cm,
yaw +-0.2 rad); then tasks that start from a state the 192 cannot express get it set up directly:
the block held in the gripper (place_*, stack_block), a block in the open drawer (lift_*_drawer), a
block stacked on another (unstack_block).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dfm_vla.envs.calvin import chains
from dfm_vla.envs.calvin.oracle import BLOCK_NAMES
from dfm_vla.envs.calvin.scene import DRAWER_FLOOR_Z

COLOURS = ("red", "blue", "pink")
HELD_TASKS = ("place_in_slider", "place_in_drawer", "stack_block")


def _feasible(condition: dict[str, Any], task: str) -> tuple[bool, str | None]:
    """(feasible, block to prepare) for ``task`` from ``condition``."""
    on_table = [c for c in COLOURS if condition[f"{c}_block"] == "table"]
    if task in HELD_TASKS:
        if task == "place_in_drawer" and condition["drawer"] != "open":
            return False, None
        if task == "stack_block":
            # the held block plus exactly one other on the table (CALVIN's one-branch rule)
            return (len(on_table) == 2, on_table[0] if len(on_table) == 2 else None)
        return (bool(on_table), on_table[0] if on_table else None)
    if task.startswith("lift_") and task.endswith("_drawer"):
        colour = task.split("_")[1]
        return condition["drawer"] == "open" and condition[f"{colour}_block"] == "table", colour
    if task == "unstack_block":
        return len(on_table) == 2, on_table[0] if len(on_table) == 2 else None
    return chains.apply_task(condition, task) is not None, None


def adapt_to_scene(layout, scene_obs: np.ndarray) -> np.ndarray:
    """Move blocks from scene D's slots (where CALVIN's initial states put them) to ``layout``'s slots."""
    out = np.array(scene_obs, float)
    d_slider = (chains.SLIDER_LEFT_POS[0], chains.SLIDER_RIGHT_POS[0])
    d_table = (chains.TABLE_SLOTS[0][0], chains.TABLE_SLOTS[1][0])
    for k in range(3):
        x, y = out[6 + 6 * k], out[7 + 6 * k]
        slots = (d_slider, [s[0] for s in layout.slider_slots]) if y > 0 else (d_table, layout.table_slot_x)
        for d_x, new_x in zip(*slots, strict=True):
            if abs(x - d_x) < 1e-3:
                out[6 + 6 * k] = new_x
    return out


def random_task_setup(env, task: str, rng: np.random.Generator) -> None:
    """Put ``env`` (a CalvinEnv) in a random state from which ``task`` is feasible."""
    candidates = [c for c in chains.initial_conditions() if _feasible(c, task)[0]]
    if not candidates:
        raise ValueError(f"task: no CALVIN initial condition makes {task!r} feasible")
    condition = candidates[int(rng.integers(len(candidates)))]
    robot_obs, scene_obs = chains.initial_env_state(condition)
    scene_obs = adapt_to_scene(env.layout, scene_obs)
    for k, block in enumerate(BLOCK_NAMES):
        if condition[block.replace("block_", "") + "_block"] == "table":
            scene_obs[6 + 6 * k : 8 + 6 * k] += rng.uniform(-0.015, 0.015, 2)
        scene_obs[11 + 6 * k] += rng.uniform(-0.2, 0.2)
    prepared = _feasible(condition, task)[1]
    if prepared is not None:
        k = COLOURS.index(prepared)
        others = [c for c in COLOURS if c != prepared and condition[f"{c}_block"] == "table"]
        if task.startswith("lift_"):  # into the open drawer
            scene_obs[6 + 6 * k : 9 + 6 * k] = (
                env.layout.drawer_x + rng.uniform(-0.08, 0.08),
                -0.33 + rng.uniform(-0.02, 0.02),
                DRAWER_FLOOR_Z + 0.0205,
            )
        elif task == "unstack_block":  # on top of the other table block
            j = COLOURS.index(others[0])
            scene_obs[6 + 6 * k : 9 + 6 * k] = scene_obs[6 + 6 * j : 9 + 6 * j] + (0, 0, 0.0405)
            scene_obs[11 + 6 * k] = scene_obs[11 + 6 * j]
    env.set_state(robot_obs, scene_obs)
    if task in HELD_TASKS:
        put_block_in_gripper(env, BLOCK_NAMES[COLOURS.index(prepared)])
    _settle(env, 10, grip=-1.0 if task in HELD_TASKS else 1.0)


def put_block_in_gripper(env, block: str) -> None:
    """Place ``block`` between the fingers (long side along the hand x axis) and close the gripper."""
    import mujoco
    from scipy.spatial.transform import Rotation

    hand = env.data.site_xmat[env._tcp_site].reshape(3, 3)
    pos = env.data.site_xpos[env._tcp_site] + hand[:, 2] * -0.015
    yaw = np.arctan2(hand[1, 0], hand[0, 0])
    a = env._block_qpos[block]
    env.data.qpos[a : a + 3] = pos
    env.data.qpos[a + 3 : a + 7] = Rotation.from_euler("z", yaw).as_quat()[[3, 0, 1, 2]]
    env.data.qpos[env._finger_qpos] = 0.02
    env._set_gripper(-1.0)
    env.data.ctrl[env._grip_act] = 0.0
    mujoco.mj_forward(env.model, env.data)


def _settle(env, steps: int, grip: float) -> None:
    hold = np.zeros(7)
    hold[6] = grip
    for _ in range(steps):
        env.apply_action(hold)
        env._physics_step(8)
        env._scene_logic()
