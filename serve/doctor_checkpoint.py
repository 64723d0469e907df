"""Doctor checks of a policy checkpoint folder (``doctor --policy DIR``): config, weights, normalisation
statistics and tokenizers, then loading it and planning one action."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dfm_vla.serve.doctor_report import FAIL, OK, SKIP, Check


def check_checkpoint(policy_dir: str | os.PathLike, load: bool = True) -> list[Check]:
    """A checkpoint folder: config, weights, normalisation statistics; then load it and plan once."""
    import numpy as np

    root = Path(policy_dir)
    group = "checkpoint"
    fix_path = "pass the folder written by `python cli.py train` (or DFMPolicy.save_pretrained)"
    if not root.is_dir():
        return [Check(group, "folder", FAIL, f"{root} is not a folder", fix_path)]
    rows = [_check_config(root, fix_path)]
    rows.append(_check_weights(root))
    rows.append(_check_norm_stats(root, np))
    rows.append(_check_tokenizers(root))
    if load and not any(r.failed for r in rows):
        rows.append(_check_policy_loads(root))
    return rows


def _check_config(root: Path, fix_path: str) -> Check:
    """``config.json``: readable, the policy format, and model fields this version of dfm-vla knows."""
    path = root / "config.json"
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    except FileNotFoundError:
        return Check("checkpoint", "config.json", FAIL, f"missing in {root}", fix_path)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return Check("checkpoint", "config.json", FAIL, f"unreadable: {exc}"[:200], "re-save the checkpoint")
    if config.get("format") != "dfm_vla.policy" or not isinstance(config.get("model"), dict):
        return Check(
            "checkpoint",
            "config.json",
            FAIL,
            f"'format' is {config.get('format')!r}, expected 'dfm_vla.policy' with a 'model' section",
            "a UniVLA/Emu3 checkpoint in Hugging Face layout "
            "loads with dfm_vla.policy.univla_loader; otherwise " + fix_path,
        )
    from dfm_vla.policy.config import ModelConfig

    try:
        model = ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as exc:
        return Check(
            "checkpoint",
            "config.json",
            FAIL,
            f"model config: {exc}"[:240],
            "the checkpoint is from another dfm-vla version: upgrade dfm-vla or re-save it",
        )
    inputs = [
        x
        for x, on in (
            ("text", model.use_text),
            ("images", bool(model.image_views)),
            ("state", bool(model.state_dim)),
        )
        if on
    ]
    return Check(
        "checkpoint",
        "config.json",
        OK,
        f"{model.name}: {model.num_layers} layers, hidden "
        f"{model.hidden_size}, objective {model.objective}, inputs {'+'.join(inputs)}, action_dim "
        f"{model.action_dim}, {model.num_action_slots} slots",
    )


def _check_tokenizers(root: Path) -> Check:
    """The tokenizer folders the config needs: action (always), text (when the model reads text)."""
    try:
        use_text = json.loads((root / "config.json").read_text())["model"].get("use_text", True)
    except (OSError, ValueError, KeyError, AttributeError):
        use_text = True
    needed = ["action_tokenizer"] + (["text_tokenizer"] if use_text else [])
    missing = [d for d in needed if not (root / d).is_dir() or not any((root / d).iterdir())]
    if missing:
        return Check(
            "checkpoint",
            "tokenizers",
            FAIL,
            f"missing or empty: {', '.join(missing)}",
            "copy the whole checkpoint folder (the tokenizers are saved beside the weights)",
        )
    return Check("checkpoint", "tokenizers", OK, ", ".join(needed))


def _check_weights(root: Path) -> Check:
    """Every ``*.safetensors`` file (and every shard an index names) opens and lists its tensors."""
    from safetensors import safe_open

    index_files = sorted(root.glob("*.safetensors.index.json"))
    files = sorted(root.glob("*.safetensors"))
    wanted = set(files)
    for index in index_files:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as exc:
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"{index.name}: unreadable index ({exc})"[:200],
                "re-save or re-download the checkpoint",
            )
        wanted |= {root / s for s in shards}
    if not wanted:
        return Check(
            "checkpoint",
            "weights",
            FAIL,
            f"no *.safetensors file in {root}",
            "re-save the checkpoint with save_pretrained (weights are safetensors)",
        )
    n_tensors, n_bytes = 0, 0
    for path in sorted(wanted):
        if not path.is_file():
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"shard {path.name} missing (named in the index)",
                "copy every shard of the checkpoint",
            )
        try:
            with safe_open(str(path), framework="numpy") as f:
                n_tensors += len(list(f.keys()))
        except Exception as exc:
            return Check(
                "checkpoint",
                "weights",
                FAIL,
                f"{path.name}: {exc}"[:200],
                "the file is truncated or corrupt: copy it again",
            )
        n_bytes += path.stat().st_size
    return Check(
        "checkpoint", "weights", OK, f"{len(wanted)} file(s), {n_tensors} tensors, {n_bytes / 2**20:.1f} MiB"
    )


NORM_STATS_NAMES = ("norm_stats.json", "normalization.json", "stats.json", "dataset_statistics.json")


def _check_norm_stats(root: Path, np) -> Check:
    """Normalisation statistics: present, numeric, finite, and with a non-degenerate spread."""
    candidates = [root / n for n in NORM_STATS_NAMES] + sorted(root.glob("*norm*.json"))
    path = next((p for p in candidates if p.is_file()), None)
    fix = "re-save the checkpoint from the trainer, which writes the statistics of its training demos"
    if path is None:
        return Check(
            "checkpoint", "normalisation stats", FAIL, f"none of {', '.join(NORM_STATS_NAMES)} in {root}", fix
        )
    try:
        stats = json.loads(path.read_text())
    except ValueError as exc:
        return Check("checkpoint", "normalisation stats", FAIL, f"{path.name}: {exc}"[:200], fix)
    problems, n_arrays, constant = [], 0, 0

    def visit(prefix: str, node) -> None:
        nonlocal n_arrays, constant
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
            return
        if (
            isinstance(node, list)
            and node
            and all(
                isinstance(v, (int, float)) or v is None for v in np.ravel(np.asarray(node, dtype=object))
            )
        ):
            arr = np.asarray(node, dtype=np.float64)
            n_arrays += 1
            if not np.isfinite(arr).all():
                problems.append(f"{prefix} has NaN or inf")
            elif prefix.rsplit(".", 1)[-1] in ("std", "scale"):
                if (arr < 0).any():
                    problems.append(f"{prefix} has negative values")
                constant += int((arr == 0).sum())  # a feature constant in the demos: floored when normalising

    visit("", stats)
    if problems:
        return Check(
            "checkpoint", "normalisation stats", FAIL, f"{path.name}: " + "; ".join(problems)[:200], fix
        )
    if n_arrays == 0:
        return Check("checkpoint", "normalisation stats", FAIL, f"{path.name}: no numeric arrays", fix)
    note = f"; {constant} constant features (std 0, floored at 1e-6)" if constant else ""
    return Check("checkpoint", "normalisation stats", OK, f"{path.name}: {n_arrays} arrays, all finite{note}")


def _check_policy_loads(root: Path) -> Check:
    """Load the checkpoint as a DFMPolicy and plan one chunk from a placeholder observation."""
    import numpy as np

    try:
        from dfm_vla.agents.dfm_policy import DFMPolicy
    except ImportError as exc:
        return Check("checkpoint", "loads and plans", SKIP, f"agent unavailable: {exc}"[:200], required=False)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a stable figure on a busy machine
    try:
        start = time.perf_counter()
        policy = DFMPolicy.from_pretrained(root, device="cpu")
        loaded = time.perf_counter() - start
        from dfm_vla.serve.backend import PolicyBackend
        from dfm_vla.serve.client import example_observation

        obs = example_observation(PolicyBackend(policy).serving_spec()["observation"])
        start = time.perf_counter()
        action = policy.act(obs)
        planned = time.perf_counter() - start
        if action.shape != (policy.action_dim,) or not np.isfinite(action).all():
            raise ValueError(
                f"act returned {action.shape} with non-finite values, expected ({policy.action_dim},)"
            )
    except Exception as exc:
        return Check(
            "checkpoint",
            "loads and plans",
            FAIL,
            f"{type(exc).__name__}: {exc}"[:240],
            "the checkpoint does not match this version of dfm-vla: re-train or re-save it",
        )
    finally:
        torch.set_num_threads(threads)
    return Check(
        "checkpoint",
        "loads and plans",
        OK,
        f"loaded in {loaded:.1f} s; first action {tuple(action.shape)} in {planned * 1e3:.0f} ms "
        "(CPU, 1 thread)",
    )
