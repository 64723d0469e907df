"""``python cli.py bench decode``: ms per action chunk for AR, DD and DFM decoding, with and without caches.

For each model config (default ``tiny`` and ``small``: 12 layers, hidden 512) a randomly initialised model
decodes chunks of L slots (default 64; bins tokenizer with a 1,024-token vocabulary) after a realistic
prefix (default ~300 tokens: an instruction, two 96 x 96 views as 8 x 8 patches, two state tokens, boa).
Rows, each the median over ``--repeats`` chunks after one warm-up:

- ``ar_kv_cache``: autoregressive, prefix encoded once, one call per slot (L calls).
- ``dd_prefix_cache``: masked diffusion, ``--steps`` calls against the exact prefix cache.
- ``dfm_prefix_cache``: DFM two-stage (steps - 2 Euler + 2 greedy) against the exact prefix cache (prefix-LM).
- ``dfm_no_cache``: the same, re-encoding the prefix at every call.
- ``dfm_warm_prefix_cache``: refinement from a previous plan (``policy/warm_start.py``): a guess noised to
  ``--warm-t0``, then ``--warm-steps`` Euler + greedy calls, against the exact prefix cache.
- ``dfm_bidir_adaptive``: the fully bidirectional model with the adaptive cache (refresh every
  ``--refresh-every`` calls or when more than ``--refresh-fraction`` of slots changed); its logit drift from
  the exact bidirectional pass is measured on a separate (untimed) chunk. Its argmax agreement (0.50-0.63
  on the tiny config) is far below what an approximation needs, so this row times a different decoder,
  not a cache of the bidirectional one (``policy/kv_cache.py``).
- ``dfm_bidir_no_cache``: the bidirectional model, exact (every call re-encodes everything).

With ``--policy DIR`` (repeatable) it also times the decoding a trained policy really uses, on its own
model size, slot count and observation prefix (its real weights for DD/DFM, random weights of the same
config for AR): ``ar_kv_cache``, ``dd_prefix_cache`` (as many calls as its DFM), ``dfm_prefix_cache`` (its
cold split, every episode's first plan) and ``dfm_warm_prefix_cache`` (refinement from the previous plan
with its ``warm_start_*`` fields, every later plan). ``dfm_cached_vs_ar["policy:NAME"]`` is AR over the DFM
decode the policy runs in steady state (warm if its config turns warm start on, else cold).

``median_ms`` is wall time, ``median_cpu_ms`` this process's CPU time (on a shared CPU the latter is the
stable one; with ``--threads 1`` the speed-ups use it). ``speedup_vs_ar`` = AR ms / row ms. Weights are
random: this measures compute, not policy quality.
``--device cuda --dtype bf16`` runs the same on a GPU; results of earlier runs in an existing ``--json``
file are kept under ``runs`` and the new run is added (key ``<device>-<dtype>``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

INSTRUCTION = "open the top drawer of the cabinet and put the black bowl inside"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs", default="tiny,small", help="model presets, comma-separated (default tiny,small)"
    )
    parser.add_argument("--slots", type=int, default=64, help="action slots L (default 64)")
    parser.add_argument(
        "--image-size", type=int, default=96, help="two views of this size, 8x8 patches (default 96)"
    )
    parser.add_argument("--steps", type=int, default=16, help="DFM / DD model calls per chunk (default 16)")
    parser.add_argument("--batch", type=int, default=1, help="chunks decoded together (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed chunks per row (median; default 5)")
    parser.add_argument(
        "--refresh-every", type=int, default=4, help="adaptive cache: refresh period (default 4)"
    )
    parser.add_argument(
        "--refresh-fraction", type=float, default=0.25, help="adaptive cache: changed-slot share"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="weights dtype")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm-t0", type=float, default=0.8, help="warm-started DFM rows: start time t0 (default 0.8)"
    )
    parser.add_argument(
        "--warm-steps",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(3, 1),
        help="warm-started DFM rows: T_FINE,T_VAL (default 3,1)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="DIR",
        help="also time a trained policy's own decoding (cold and warm-started DFM, DD, AR); repeatable",
    )


def _tokenizer(slots: int, seed: int) -> Any:
    import numpy as np

    from dfm_vla.policy.action_tokenizer import BinActionTokenizer, BinTokenizerConfig

    dim = 8 if slots % 8 == 0 else 1
    rng = np.random.default_rng(seed)
    return BinActionTokenizer(BinTokenizerConfig(num_bins=1024)).fit(
        rng.normal(size=(256, slots // dim, dim))
    )


def _build(name: str, attention: str, objective: str, act_tok, text_tok, args) -> Any:
    import torch

    from dfm_vla.policy.config import get_config
    from dfm_vla.policy.model import build_model

    cfg = get_config(
        name,
        attention=attention,
        objective=objective,
        image_views=("agentview", "wrist"),
        image_size=args.image_size,
        patch_size=8,
        image_encoder="patch",
        full_vocab_size=0,
        max_text_tokens=64,
        use_text=True,
    )
    torch.manual_seed(args.seed)
    model = build_model(cfg, act_tok, text_tok, state_dim=9, device=args.device)
    return model.to(_dtype(args.dtype)).eval()


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _prefix(model, text_tok, args) -> Any:
    import numpy as np

    from dfm_vla.policy.processor import PolicyProcessor

    rng = np.random.default_rng(args.seed)
    size = args.image_size
    obs = [
        {
            "language": INSTRUCTION,
            "images": {
                v: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for v in ("agentview", "wrist")
            },
            "state": rng.normal(size=9),
        }
        for _ in range(args.batch)
    ]
    return PolicyProcessor(model.config, text_tok)(obs).to(args.device)


def _time(fn, repeats: int, device: str) -> tuple[float, float, Any]:
    """Median wall ms and median process-CPU ms of ``fn`` over ``repeats`` runs after a warm-up."""
    import torch

    def once() -> tuple[float, float, Any]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - start), 1e3 * (time.process_time() - cpu_start), out

    once()  # warm-up
    results = [once() for _ in range(repeats)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results), results[-1][2]


def _bench_config(name: str, args, act_tok, text_tok, progress) -> list[dict[str, Any]]:
    import torch

    from dfm_vla.policy.samplers import ar_sample, dd_sample, dfm_sample, uniform_time_grid
    from dfm_vla.policy.warm_start import warm_start_state

    slots, batch, steps = act_tok.num_slots, args.batch, args.steps
    fine, val = max(steps - 2, 0), min(steps, 2)
    prefix_lm = _build(name, "prefix_lm", "dfm", act_tok, text_tok, args)
    causal = _build(name, "causal_actions", "ar", act_tok, text_tok, args)
    bidir = _build(name, "bidirectional", "dfm", act_tok, text_tok, args)
    prefix = _prefix(prefix_lm, text_tok, args)
    path = prefix_lm.metric_path(act_tok).to(args.device)
    bidir_path = bidir.metric_path(act_tok).to(args.device)
    gen = torch.Generator(device=args.device)

    def dfm(model, p, cache, **kw):
        gen.manual_seed(args.seed)
        den = model.make_denoiser(prefix, cache=cache, **kw)
        res = dfm_sample(
            den, p, batch, slots, steps_fine=fine, steps_val=val, generator=gen, device=args.device
        )
        return den, res

    def dfm_warm():
        # refinement from a previous plan (policy/warm_start.py): a guess noised to t0, then a few steps
        gen.manual_seed(args.seed)
        den = prefix_lm.make_denoiser(prefix, cache="prefix")
        guess = path.sample_source((batch, slots), generator=gen, device=args.device)
        x0 = warm_start_state(path, guess, args.warm_t0, gen)
        grid = uniform_time_grid(args.warm_steps[0], args.warm_t0, device=args.device)
        dfm_sample(
            den, path, batch, slots, x0=x0, time_grid=grid, steps_val=args.warm_steps[1], generator=gen
        )
        return den, den.state.prefix_calls

    def ar():
        stepper = causal.ar_stepper(prefix)
        ar_sample(stepper, batch, slots, boa_id=act_tok.boa_id, device=args.device)
        return stepper, stepper.state.prefix_calls

    def dd():
        den = prefix_lm.make_denoiser(prefix, cache="prefix")
        dd_sample(den, act_tok.mask_id, batch, slots, steps=steps, device=args.device)
        return den, den.state.prefix_calls

    adaptive_kw = dict(refresh_every=args.refresh_every, refresh_fraction=args.refresh_fraction)
    cases: list[tuple[str, Any]] = [
        ("ar_kv_cache", ar),
        ("dd_prefix_cache", dd),
        ("dfm_prefix_cache", lambda: _calls(dfm(prefix_lm, path, "prefix"))),
        ("dfm_no_cache", lambda: _calls(dfm(prefix_lm, path, "none"))),
        ("dfm_warm_prefix_cache", dfm_warm),
        ("dfm_bidir_adaptive", lambda: _calls(dfm(bidir, bidir_path, "adaptive", **adaptive_kw))),
        ("dfm_bidir_no_cache", lambda: _calls(dfm(bidir, bidir_path, "none"))),
    ]
    rows = _time_cases(name, cases, prefix_lm, prefix, slots, batch, args, progress)
    with torch.no_grad():
        den, _ = dfm(bidir, bidir_path, "adaptive", measure_drift=True, **adaptive_kw)
    drift = den.adaptive.drift.summary()
    rows[5].update({k: v for k, v in drift.items() if k != "drift_calls"})
    rows[5]["refreshes"] = den.adaptive.num_refreshes
    return rows


def _time_cases(name: str, cases, model, prefix, slots: int, batch: int, args, progress) -> list[dict]:
    """One row per (method, fn) case, timed by :func:`_time`; ``speedup_vs_ar`` against the first row."""
    import torch

    with torch.no_grad():
        prefix_len = model.embed_prefix(prefix)[0].shape[1]
    rows = []
    for method, fn in cases:
        with torch.no_grad():
            ms, cpu_ms, (runner, prefix_calls) = _time(fn, args.repeats, args.device)
        rows.append(
            {
                "config": name,
                "params_M": round(model.num_parameters() / 1e6, 2),
                "prefix_tokens": int(prefix_len),
                "slots": slots,
                "batch": batch,
                "method": method,
                "median_ms": ms,
                "median_cpu_ms": cpu_ms,
                "model_calls": runner.num_calls,
                "prefix_passes": prefix_calls,
                "ms_per_call": ms / max(runner.num_calls, 1),
            }
        )
        progress()
    key = _timing_key(args)
    for row in rows:
        row["speedup_vs_ar"] = rows[0][key] / row[key]
    return rows


def _bench_policy(directory: str, args, progress) -> list[dict[str, Any]]:
    """Rows for one checkpoint: AR (random weights, same config), DD, DFM cold and DFM warm-started."""
    import numpy as np
    import torch

    from dfm_vla.agents.dfm_policy import DFMPolicy
    from dfm_vla.policy.checkpoint import load_pretrained
    from dfm_vla.policy.model import build_model
    from dfm_vla.policy.samplers import ar_sample, dd_sample
    from dfm_vla.policy.warm_start import shifted_plan

    bundle = load_pretrained(directory, device=args.device)
    cfg, act_tok = bundle.model.config, bundle.action_tokenizer
    name = f"policy:{Path(directory).name}"
    rng = np.random.default_rng(args.seed)
    keys = list(cfg.state_keys) if cfg.state_dim else []
    sizes = [cfg.state_dim - len(keys) + 1] + [1] * (len(keys) - 1) if keys else []
    obs = {"language": INSTRUCTION, **{k: rng.normal(size=n) for k, n in zip(keys, sizes, strict=True)}}
    if cfg.image_views:
        size = cfg.image_size
        obs["images"] = {v: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for v in cfg.image_views}
    prefix = bundle.processor([obs] * args.batch).to(args.device)
    torch.manual_seed(args.seed)
    causal = build_model(cfg.replace(objective="ar"), device=args.device).to(_dtype(args.dtype)).eval()
    agent = DFMPolicy(bundle, decoder="dfm", device=args.device, seed=args.seed, warm_start=False)
    slots, batch = act_tok.num_slots, args.batch
    gens = [torch.Generator(device=args.device).manual_seed(args.seed + i) for i in range(batch)]
    previous = torch.as_tensor(
        act_tok.encode(np.zeros((batch, act_tok.horizon, act_tok.action_dim))), device=args.device
    )
    guesses = shifted_plan(previous, act_tok.action_dim, agent.execute_horizon)

    def ar():
        stepper = causal.ar_stepper(prefix)
        ar_sample(stepper, batch, slots, boa_id=act_tok.boa_id, device=args.device)
        return stepper, stepper.state.prefix_calls

    def dd():
        den = bundle.model.make_denoiser(prefix, cache="prefix")
        dd_sample(den, act_tok.mask_id, batch, slots, steps=sum(agent.steps), device=args.device)
        return den, den.state.prefix_calls

    def dfm(warm: bool):
        from dfm_vla.policy.samplers import dfm_sample

        den = bundle.model.make_denoiser(prefix, cache="prefix")
        agent._dfm(den, batch, slots, gens, dfm_sample, guesses if warm else None)
        return den, den.state.prefix_calls

    cases = [
        ("ar_kv_cache", ar),
        ("dd_prefix_cache", dd),
        ("dfm_prefix_cache", lambda: dfm(False)),
        ("dfm_warm_prefix_cache", lambda: dfm(True)),
    ]
    rows = _time_cases(name, cases, bundle.model, prefix, slots, batch, args, progress)
    rows[2]["steps"] = f"{agent.steps[0]}+{agent.steps[1]}"
    rows[3]["steps"] = f"{cfg.warm_start_steps_fine}+{cfg.warm_start_steps_val} from t0={cfg.warm_start_t0}"
    rows[3]["used_by_policy"] = bool(cfg.warm_start)
    return rows


def _calls(pair) -> tuple[Any, int]:
    den, _ = pair
    return den, den.state.prefix_calls


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from rich.progress import Progress

    from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    act_tok = _tokenizer(args.slots, args.seed)
    text_tok = tiny_text_tokenizer()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    rows: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("decoding chunks", total=7 * len(names) + 4 * len(args.policy))
        for name in names:
            rows += _bench_config(name, args, act_tok, text_tok, lambda: progress.advance(task))
        for directory in args.policy:
            rows += _bench_policy(directory, args, lambda: progress.advance(task))
    key = f"{args.device}-{args.dtype}"
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    this_run = {
        "device": args.device,
        "device_name": device_name,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "speedup_timing": _timing_key(args),
        "dfm_cached_vs_ar": {
            n: _ratio(rows, n, _timing_key(args)) for n in dict.fromkeys(r["config"] for r in rows)
        },
    }
    runs: dict[str, Any] = {}
    if getattr(args, "json", None) and Path(args.json).is_file():
        try:
            runs = dict(json.loads(Path(args.json).read_text()).get("runs", {}))
        except (json.JSONDecodeError, AttributeError):
            runs = {}
    runs[key] = this_run
    return {
        "benchmark": "decode",
        "rows": rows,
        "runs": runs,
        "dfm_cached_vs_ar": this_run["dfm_cached_vs_ar"],
    }


def _timing_key(args) -> str:
    """Speed-ups use process CPU time on a CPU run with one thread (robust to other processes sharing the
    cores), wall time otherwise."""
    import torch

    return "median_cpu_ms" if args.device == "cpu" and torch.get_num_threads() == 1 else "median_ms"


def _ratio(rows: list[dict[str, Any]], name: str, key: str) -> float:
    """AR over the DFM decode the config runs: the warm-started one where a policy turns it on."""
    mine = [r for r in rows if r["config"] == name]
    by = {r["method"]: r[key] for r in mine}
    warm = any(r.get("used_by_policy") for r in mine)
    return by["ar_kv_cache"] / by["dfm_warm_prefix_cache" if warm else "dfm_prefix_cache"]
