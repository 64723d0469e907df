"""CALVIN's 1000 long-horizon evaluation chains and their initial env states, rebuilt from the facts.

``evaluation_chains(1000)`` gives the same ``(initial_condition, (task, ...5))`` list, in the same order,
as CALVIN's ``multistep_sequences.get_sequences(1000)``; ``initial_env_state(condition)`` gives the
``(robot_obs (15,), scene_obs (24,))`` of ``get_env_state_for_initial_condition``. Both use numpy's
legacy ``RandomState``, whose streams are stable across numpy versions.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from importlib import resources
from typing import Any

import numpy as np

from dfm_vla.envs.calvin.tasks import CATEGORIES, POSSIBLE_CONDITIONS, SYMBOLIC_TASKS, TASK_NAMES

CHAIN_LENGTH = 5
NUM_CHAINS = 1000
CHAINS_FILE = "eval_chains_1000.json"

# TCP pose + joints at the scene's initial joint positions (facts 5.7); the same for every chain.
INITIAL_ROBOT_OBS = np.array(
    [
        0.02586889,
        -0.2313129,
        0.5712808,
        3.09045411,
        -0.02908596,
        1.50013585,
        0.07999963,
        -1.21779124,
        1.03987629,
        2.11978254,
        -2.34205014,
        -0.87015899,
        1.64119093,
        0.55344928,
        1.0,
    ]
)
SLIDER_LEFT_POS = (-0.240851662, 0.0924044687, 0.460990009)
SLIDER_RIGHT_POS = (0.0703416330, 0.0924044687, 0.460990009)
TABLE_SLOTS = ((0.0500000896, -0.120000177, 0.459990009), (0.229995412, -0.119995140, 0.459990010))
SLIDER_OPEN, DRAWER_OPEN, SWITCH_ON = 0.28, 0.22, 0.088

Condition = dict[str, Any]


def initial_conditions() -> list[Condition]:
    """The 192 symbolic start states: 1-2 blocks on the table, at most one per slider slot."""
    keys = list(POSSIBLE_CONDITIONS)
    states = []
    for values in itertools.product(*POSSIBLE_CONDITIONS.values()):
        state = dict(zip(keys, values, strict=True))
        blocks = [state["red_block"], state["blue_block"], state["pink_block"]]
        if (
            blocks.count("table") in (1, 2)
            and blocks.count("slider_right") <= 1
            and blocks.count("slider_left") <= 1
        ):
            states.append(state)
    return states


def _matches(state: Condition, condition: Condition) -> bool:
    return all(state[k] in v if isinstance(v, tuple) else state[k] == v for k, v in condition.items())


def check_sequence(state: Condition, sequence: tuple[str, ...]) -> bool:
    """CALVIN's feasibility rule: each task has exactly one matching branch, and all categories differ."""
    state = dict(state)
    for task in sequence:
        branches = [b for b in SYMBOLIC_TASKS[task] if _matches(state, b["condition"])]
        if len(branches) != 1:
            return False
        state.update(branches[0]["effect"])
    return len({CATEGORIES[t] for t in sequence}) == len(sequence)


def apply_task(state: Condition, task: str) -> Condition | None:
    """The symbolic state after ``task``, or None when ``task`` is not feasible (not exactly one branch)."""
    branches = [b for b in SYMBOLIC_TASKS[task] if _matches(state, b["condition"])]
    if len(branches) != 1:
        return None
    return {**state, **branches[0]["effect"]}


def _chains_for_state(state: Condition, count: int, state_index: int) -> list[tuple[str, ...]]:
    rng = np.random.RandomState(state_index)  # CALVIN: np.random.seed(i) per state
    categories = [CATEGORIES[t] for t in TASK_NAMES]
    found: list[tuple[str, ...]] = []
    while len(found) < count:
        # Same draws as CALVIN's rng.choice(task_names, 5, replace=False) (legacy: permutation[:5]).
        ids = rng.permutation(len(TASK_NAMES))[:CHAIN_LENGTH].tolist()
        if len({categories[i] for i in ids}) < CHAIN_LENGTH:
            continue  # cheap rejection first; check_sequence would reject it too
        seq = tuple(TASK_NAMES[i] for i in ids)
        if check_sequence(state, seq):
            found.append(seq)
    return found


def generate_evaluation_chains(num_chains: int = NUM_CHAINS) -> list[tuple[Condition, tuple[str, ...]]]:
    """Run CALVIN's generator: ``[(initial_condition, (5 task names)), ...]`` in CALVIN's order.

    It draws about 7 million candidate chains for 1000 (20-40 s here); ``evaluation_chains`` reads the
    shipped result instead.
    """
    states = initial_conditions()
    counts = [len(part) for part in np.array_split(np.arange(num_chains), len(states))]
    pairs: list[Any] = []
    for i, (state, count) in enumerate(zip(states, counts, strict=True)):
        pairs.extend((state, seq) for seq in _chains_for_state(state, count, i))
    np.random.RandomState(0).shuffle(pairs)  # CALVIN: np.random.shuffle inside temp_seed(0)
    return pairs


@functools.lru_cache(maxsize=1)
def _shipped_chains() -> tuple[tuple[tuple[tuple[str, Any], ...], tuple[str, ...]], ...]:
    text = (resources.files("dfm_vla.envs.calvin") / "assets" / CHAINS_FILE).read_text()
    return tuple((tuple(cond.items()), tuple(seq)) for cond, seq in json.loads(text))


def evaluation_chains(num_chains: int = NUM_CHAINS) -> list[tuple[Condition, tuple[str, ...]]]:
    """CALVIN's evaluation chains. 1000 (the benchmark) are read from the shipped file, which
    ``python -m dfm_vla.envs.calvin.chains`` regenerates; another count runs the generator."""
    if num_chains != NUM_CHAINS:
        return generate_evaluation_chains(num_chains)
    return [(dict(c), seq) for c, seq in _shipped_chains()]


def write_chains_file(path: str) -> None:
    """Regenerate the shipped chain file (atomic write)."""
    from dfm_vla.utils.io import atomic_write_text

    rows = [json.dumps([cond, list(seq)]) for cond, seq in generate_evaluation_chains(NUM_CHAINS)]
    atomic_write_text(path, "[\n" + ",\n".join(rows) + "\n]\n")


def calvin_fnv1_32(text: str) -> int:
    """``pyhash.fnv1_32()(text)`` under Python 3: FNV-1 32-bit, seed 0, over the UTF-16-LE bytes."""
    h = 0
    for byte in text.encode("utf-16-le"):
        h = ((h * 16777619) & 0xFFFFFFFF) ^ byte
    return h


def state_seed(condition: Condition) -> int:
    """The per-state seed CALVIN hashes from ``str(initial_condition.values())``."""
    return calvin_fnv1_32(str(condition.values()))


def initial_env_state(condition: Condition) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs (15,), scene_obs (24,))`` for a symbolic start state, as CALVIN builds them."""
    missing = [k for k in POSSIBLE_CONDITIONS if k not in condition]
    if missing:
        raise ValueError(f"condition: missing keys {missing}; expected all of {list(POSSIBLE_CONDITIONS)}")
    scene_obs = np.zeros(24)
    if condition["slider"] == "left":
        scene_obs[0] = SLIDER_OPEN
    if condition["drawer"] == "open":
        scene_obs[1] = DRAWER_OPEN
    if condition["lightbulb"] == 1:
        scene_obs[3] = SWITCH_ON
    scene_obs[4] = condition["lightbulb"]
    scene_obs[5] = condition["led"]
    rng = np.random.RandomState(state_seed(condition))
    slots = [list(s) for s in TABLE_SLOTS]
    rng.shuffle(slots)
    yaw_low, yaw_high = math.pi / 2 - math.pi / 8, math.pi / 2 + math.pi / 8
    yaws = [rng.uniform(yaw_low, yaw_high) for _ in range(3)]  # drawn in this order: red, blue, pink
    table_slot = {
        "red_block": slots[0],
        "blue_block": slots[1] if condition["red_block"] == "table" else slots[0],
        "pink_block": slots[1],
    }
    for k, block in enumerate(("red_block", "blue_block", "pink_block")):
        where = condition[block]
        if where == "table":
            pos = table_slot[block]
        elif where == "slider_left":
            pos = SLIDER_LEFT_POS
        elif where == "slider_right":
            pos = SLIDER_RIGHT_POS
        else:
            raise ValueError(
                f"condition[{block!r}]: expected 'table', 'slider_left' or 'slider_right', got {where!r}"
            )
        scene_obs[6 + 6 * k : 9 + 6 * k] = pos
        scene_obs[11 + 6 * k] = yaws[k]
    return INITIAL_ROBOT_OBS.copy(), scene_obs


if __name__ == "__main__":
    import sys
    from pathlib import Path

    out = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "assets" / CHAINS_FILE)
    write_chains_file(out)
    print(f"wrote {out}")
