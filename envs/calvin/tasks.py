"""CALVIN's 34 tasks: names (task id = index), evaluation instructions, categories, and the symbolic
preconditions/effects that the chain generator uses.

Facts: ``calvin-facts.md`` sections 3.2 (task order), 4 (instructions), 5.4-5.5 (generator).
A condition maps a symbolic key to a value or to a tuple of allowed values.
"""

from __future__ import annotations

from typing import Any

BLOCKS = ("red", "blue", "pink")

# Task order of new_playtable_tasks.yaml; the generator's dict uses the same order.
TASK_NAMES: tuple[str, ...] = (
    *(f"rotate_{c}_block_{d}" for c in BLOCKS for d in ("right", "left")),
    *(f"push_{c}_block_{d}" for c in BLOCKS for d in ("right", "left")),
    "move_slider_left",
    "move_slider_right",
    "open_drawer",
    "close_drawer",
    *(f"lift_{c}_block_{s}" for c in BLOCKS for s in ("table", "slider", "drawer")),
    "place_in_slider",
    "place_in_drawer",
    "stack_block",
    "unstack_block",
    "turn_on_lightbulb",
    "turn_off_lightbulb",
    "turn_on_led",
    "turn_off_led",
    "push_into_drawer",
)
TASK_ID = {name: i for i, name in enumerate(TASK_NAMES)}

# new_playtable_validation.yaml, first (only) instruction per task; capitalisation kept as in CALVIN.
INSTRUCTIONS: dict[str, str] = {
    **{
        f"rotate_{c}_block_{d}": f"take the {c} block and rotate it to the {d}"
        for c in BLOCKS
        for d in ("right", "left")
    },
    **{f"push_{c}_block_{d}": f"go push the {c} block {d}" for c in BLOCKS for d in ("right", "left")},
    "move_slider_left": "push the sliding door to the left side",
    "move_slider_right": "push the sliding door to the right side",
    "open_drawer": "pull the handle to open the drawer",
    "close_drawer": "push the handle to close the drawer",
    **{f"lift_{c}_block_table": f"grasp and lift the {c} block" for c in BLOCKS},
    **{f"lift_{c}_block_slider": f"lift the {c} block from the sliding cabinet" for c in BLOCKS},
    **{f"lift_{c}_block_drawer": f"Take the {c} block from the drawer" for c in BLOCKS},
    "place_in_slider": "store the grasped block in the sliding cabinet",
    "place_in_drawer": "store the grasped block in the drawer",
    "push_into_drawer": "slide the block that it falls into the drawer",
    "stack_block": "stack the grasped block",
    "unstack_block": "remove the stacked block",
    "turn_on_lightbulb": "use the switch to turn on the light bulb",
    "turn_off_lightbulb": "use the switch to turn off the light bulb",
    "turn_on_led": "press the button to turn on the led light",
    "turn_off_led": "press the button to turn off the led light",
}


def _category(name: str) -> int:
    if name.startswith(("rotate_", "push_")) and name != "push_into_drawer":
        return 1
    if name.startswith("move_slider"):
        return 2
    if name.endswith("_drawer") and name in ("open_drawer", "close_drawer"):
        return 3
    if name.startswith("lift_"):
        return {"table": 4, "slider": 5, "drawer": 6}[name.rsplit("_", 1)[1]]
    if name in ("place_in_slider", "place_in_drawer"):
        return 7
    if name.startswith("turn_"):
        return 8
    return {"push_into_drawer": 9, "stack_block": 10, "unstack_block": 11}[name]


CATEGORIES: dict[str, int] = {name: _category(name) for name in TASK_NAMES}

# Symbolic state keys and values, in CALVIN's key order (possible_conditions).
POSSIBLE_CONDITIONS: dict[str, tuple[Any, ...]] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}

Branch = dict[str, dict[str, Any]]  # {"condition": {...}, "effect": {...}}


def _branches() -> dict[str, list[Branch]]:
    out: dict[str, list[Branch]] = {}
    for c in BLOCKS:
        b = f"{c}_block"
        for d in ("right", "left"):
            for verb in ("rotate", "push"):
                out[f"{verb}_{b}_{d}"] = [{"condition": {b: "table", "grasped": 0}, "effect": {b: "table"}}]
    out["move_slider_left"] = [{"condition": {"slider": "right", "grasped": 0}, "effect": {"slider": "left"}}]
    out["move_slider_right"] = [
        {"condition": {"slider": "left", "grasped": 0}, "effect": {"slider": "right"}}
    ]
    out["open_drawer"] = [{"condition": {"drawer": "closed", "grasped": 0}, "effect": {"drawer": "open"}}]
    out["close_drawer"] = [{"condition": {"drawer": "open", "grasped": 0}, "effect": {"drawer": "closed"}}]
    for c in BLOCKS:
        b = f"{c}_block"
        lifted = {b: "grasped", "grasped": 1}
        out[f"lift_{b}_table"] = [{"condition": {b: "table", "grasped": 0}, "effect": lifted}]
        out[f"lift_{b}_slider"] = [
            {"condition": {b: "slider_left", "slider": "right", "grasped": 0}, "effect": lifted},
            {"condition": {b: "slider_right", "slider": "left", "grasped": 0}, "effect": lifted},
        ]
        out[f"lift_{b}_drawer"] = [
            {"condition": {b: "drawer", "drawer": "open", "grasped": 0}, "effect": lifted}
        ]
    # Quirk kept from CALVIN: slider=right records the block as slider_right (physically the left slot).
    out["place_in_slider"] = [
        {
            "condition": {f"{c}_block": "grasped", "grasped": 1, "slider": s},
            "effect": {f"{c}_block": f"slider_{s}", "grasped": 0},
        }
        for c in BLOCKS
        for s in ("right", "left")
    ]
    out["place_in_drawer"] = [
        {
            "condition": {f"{c}_block": "grasped", "drawer": "open", "grasped": 1},
            "effect": {f"{c}_block": "drawer", "grasped": 0},
        }
        for c in BLOCKS
    ]
    pairs = [(x, y) for x in BLOCKS for y in BLOCKS if x != y]
    out["stack_block"] = [
        {
            "condition": {f"{x}_block": "grasped", f"{y}_block": "table", "grasped": 1},
            "effect": {f"{x}_block": "stacked_top", f"{y}_block": "stacked_bottom", "grasped": 0},
        }
        for x, y in pairs
    ]
    out["unstack_block"] = [
        {
            "condition": {f"{x}_block": "stacked_top", f"{y}_block": "stacked_bottom", "grasped": 0},
            "effect": {f"{x}_block": "table", f"{y}_block": "table"},
        }
        for x, y in pairs
    ]
    out["turn_on_lightbulb"] = [{"condition": {"lightbulb": 0, "grasped": 0}, "effect": {"lightbulb": 1}}]
    out["turn_off_lightbulb"] = [{"condition": {"lightbulb": 1, "grasped": 0}, "effect": {"lightbulb": 0}}]
    out["turn_on_led"] = [{"condition": {"led": 0, "grasped": 0}, "effect": {"led": 1}}]
    out["turn_off_led"] = [{"condition": {"led": 1, "grasped": 0}, "effect": {"led": 0}}]
    sliders = ("slider_right", "slider_left")
    out["push_into_drawer"] = [
        {
            "condition": {
                f"{x}_block": "table",
                **{f"{o}_block": sliders for o in BLOCKS if o != x},
                "drawer": "open",
                "grasped": 0,
            },
            "effect": {f"{x}_block": "drawer"},
        }
        for x in BLOCKS
    ]
    return {name: out[name] for name in TASK_NAMES}


SYMBOLIC_TASKS: dict[str, list[Branch]] = _branches()
