"""``study offline-decoding``: decode held-out demo chunks with one policy under several decoders.

Closed-loop success is the number that counts, but it is slow and noisy; this measures in minutes what each
decoding setting does to the chunks themselves, on the validation episodes the policy never trained on
(the trainer's own split: ``--val-fraction`` and ``--split-seed`` as in its ``train_config.yaml``):

- ``acc``: share of slots whose token equals the expert's (padded steps excluded);
- ``l1``: mean |decoded - expert| over the motion dimensions, in the tokenizer's normalised units;
- ``grip``: share of steps whose gripper sign differs from the expert's;
- ``spread``: mean standard deviation of the decoded motion actions over ``--seeds`` sampling seeds
  (0 for a deterministic decoder);
- ``calls``: model calls per chunk.

Settings (comma-separated): ``14+2`` (T_fine + T_val, cold), ``2+14``, ``0+16``; suffixes ``@T0.25``
(x1 of the velocity drawn at temperature 0.25), ``@v0.5`` (greedy steps query t = 0.5), ``@warm0.8:3+1``
(refined from the previous plan, noised to t0 = 0.8, 3 + 1 calls; the previous plan is the policy's own
cold decode of the context ``execute_horizon`` steps earlier in the same episode). ``dd`` and ``ar``
decode checkpoints trained for them.

::

    python cli.py study offline-decoding --policy checkpoints/libero_goal_tiny_dfm \\
        --settings 14+2,2+14,0+16,14+2@T0.25@v0.5,14+2@warm0.8:3+1 --contexts 300 --seeds 3
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "offline_decoding"
_SETTING = re.compile(r"^(?P<fine>\d+)\+(?P<val>\d+)(?P<mods>(@[A-Za-z]+[0-9.:+]*)*)$")


def parse_setting(text: str) -> dict[str, Any]:
    """``14+2@T0.25@v0.5@warm0.8:3+1`` -> {steps, temperature, val_time, warm: (t0, fine, val)}."""
    text = text.strip()
    if text in ("dd", "ar"):
        return {"name": text, "decoder": text}
    m = _SETTING.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected e.g. 14+2, 2+14@T0.25@v0.5, 14+2@warm0.8:3+1; got {text!r}"
        )
    out: dict[str, Any] = {"name": text, "decoder": "dfm", "steps": (int(m["fine"]), int(m["val"]))}
    for mod in filter(None, m["mods"].split("@")):
        if mod.startswith("warm"):
            t0, _, steps = mod[4:].partition(":")
            fine, _, val = steps.partition("+")
            out["warm"] = (float(t0), int(fine or 3), int(val or 1))
        elif mod.startswith("T"):
            out["temperature"] = float(mod[1:])
        elif mod.startswith("v"):
            out["val_time"] = float(mod[1:])
        else:
            raise argparse.ArgumentTypeError(f"unknown modifier @{mod} in {text!r} (use @T, @v, @warm)")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, metavar="DIR", help="a trained policy folder")
    parser.add_argument("--data", nargs="+", help="demos (default: the data of its train_config.yaml)")
    parser.add_argument(
        "--settings",
        type=lambda s: [parse_setting(v) for v in s.split(",") if v.strip()],
        default=[parse_setting(v) for v in ("14+2", "2+14", "0+16")],
        help="decoders, comma-separated (module docstring)",
    )
    parser.add_argument("--contexts", type=int, default=300, help="held-out chunks decoded (default 300)")
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds per chunk (default 3)")
    parser.add_argument("--batch", type=int, default=50, help="chunks decoded together (default 50)")
    parser.add_argument("--out", metavar="DIR", help="folder for offline_decoding.json/.md")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")


def held_out_chunks(directory: Path, data: list[str] | None, horizon: int, state_keys: list[str]):
    """The trainer's validation split of the policy's demos as a ChunkDataset (read from train_config)."""
    import yaml

    from dfm_vla.train.dataset import ChunkDataset, split_episodes
    from dfm_vla.train.readers import read_episodes

    train_cfg = yaml.safe_load((directory / "train_config.yaml").read_text()) or {}
    paths = data or train_cfg.get("data") or []
    if not paths:
        raise ValueError(f"--data: {directory}/train_config.yaml names no demos; pass --data PATH")
    episodes = [ep for p in paths for ep in read_episodes(p, obs_keys=state_keys, load_images=False)]
    split = split_episodes(
        episodes, float(train_cfg.get("val_fraction", 0.1)), seed=int(train_cfg.get("seed", 0))
    )
    val = [episodes[i] for i in split.val]
    sizes = [int(np.asarray(val[0].obs[k]).reshape(len(val[0]), -1).shape[1]) for k in state_keys]
    return ChunkDataset(val, horizon, state_keys=state_keys), sizes


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dfm_vla.agents.dfm_policy import DFMPolicy
    from dfm_vla.policy.checkpoint import load_pretrained
    from dfm_vla.policy.warm_start import shifted_plan
    from dfm_vla.utils.io import atomic_write_json

    directory = Path(args.policy)
    bundle = load_pretrained(directory)
    cfg, tok = bundle.model.config, bundle.action_tokenizer
    keys = list(cfg.state_keys) if cfg.state_dim else []
    data, sizes = held_out_chunks(directory, args.data, tok.horizon, keys)
    data.attach_tokenizer(tok)
    agent = DFMPolicy(bundle, decoder=None)
    lag = agent.execute_horizon
    # contexts with a previous plan in the same episode (for warm settings), evenly over the split
    ok = np.nonzero(data.step_of >= lag)[0]
    pick = ok[np.linspace(0, len(ok) - 1, min(args.contexts, len(ok))).astype(int)]
    cuts = np.cumsum(sizes)[:-1]

    def obs(i: int) -> dict[str, Any]:
        o = data.observation(int(i))
        state = o.pop("state", None)
        if state is not None:
            o.update(dict(zip(keys, np.split(state, cuts), strict=True)))
        return o

    expert = data.action_tokens[pick]
    mask = data.slot_mask[pick]
    normalized = tok.normalize(data.actions[pick])
    grip = list(tok.normalizer.gripper_dims)
    motion = [d for d in range(tok.action_dim) if d not in grip]
    rows = []
    for setting in args.settings:
        decoded, calls, start = [], 0, time.perf_counter()
        for seed in range(args.seeds):
            tokens = []
            for b in range(0, len(pick), args.batch):
                idx = pick[b : b + args.batch]
                policy = _agent_for(bundle, setting, seed, DFMPolicy)
                if setting.get("warm"):
                    policy.plan([obs(i - lag) for i in idx])
                    prev = torch.as_tensor(policy.last_plan.tokens)
                    guesses = shifted_plan(prev, tok.action_dim, lag)
                    policy._decode_chunks(list(range(len(idx))), [obs(i) for i in idx], guesses=guesses)
                else:
                    policy.plan([obs(i) for i in idx])
                tokens.append(policy.last_plan.tokens)
                calls = policy.last_plan.model_calls
            decoded.append(np.concatenate(tokens))
        rows.append(_score(setting["name"], decoded, expert, mask, normalized, tok, motion, grip, calls))
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        print(rows[-1], flush=True)
    result = {
        "study": NAME,
        "policy": str(directory),
        "contexts": len(pick),
        "seeds": args.seeds,
        "rows": rows,
    }
    out = Path(args.out or f"runs/study/offline-decoding-{directory.name}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{NAME}.json", result)
    from dfm_vla.studies.report import write_markdown

    write_markdown(out / f"{NAME}.md", f"Offline decoding of {directory.name}", rows)
    result["markdown"], result["plots"] = str(out / f"{NAME}.md"), []
    return result


def _agent_for(bundle, setting: dict[str, Any], seed: int, policy_cls):
    """A fresh agent decoding as ``setting`` says (the bundle's config changed for this setting only)."""
    changes: dict[str, Any] = {}
    if "temperature" in setting:
        changes["posterior_temperature"] = setting["temperature"]
    if "val_time" in setting:
        changes["val_time"] = setting["val_time"]
    if "warm" in setting:
        t0, fine, val = setting["warm"]
        changes.update(warm_start_t0=t0, warm_start_steps_fine=fine, warm_start_steps_val=val)
    model_cfg = bundle.model.config
    bundle.model.config = model_cfg.replace(**changes) if changes else model_cfg
    try:  # the agent keeps its own reference to the changed config
        return policy_cls(bundle, decoder=setting["decoder"], seed=seed, steps=setting.get("steps"))
    finally:
        bundle.model.config = model_cfg


def _score(name, decoded, expert, mask, normalized, tok, motion, grip, calls) -> dict[str, Any]:
    acts = [tok.decode(d).actions for d in decoded]  # each (N, H, D) in env units
    norm = [tok.normalize(a) for a in acts]
    step_mask = mask.reshape(mask.shape[0], tok.horizon, tok.action_dim)[..., 0]
    acc = float(np.mean([(d == expert)[mask].mean() for d in decoded]))
    l1 = float(np.mean([np.abs(n[..., motion] - normalized[..., motion])[step_mask].mean() for n in norm]))
    g = float(
        np.mean([(np.sign(n[..., grip]) != np.sign(normalized[..., grip]))[step_mask].mean() for n in norm])
    )
    spread = float(np.stack(norm)[..., motion].std(axis=0)[step_mask].mean()) if len(norm) > 1 else 0.0
    return {
        "setting": name,
        "acc": round(acc, 4),
        "l1": round(l1, 4),
        "grip": round(g, 4),
        "spread": round(spread, 4),
        "calls": int(calls),
    }
