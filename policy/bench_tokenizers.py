"""``python cli.py bench tokenizers``: FAST vs uniform bins on generated smooth action chunks.

Fits both tokenizers on ``--num-chunks`` smooth random chunks (last dim a binary gripper) and reports, per
tokenizer: vocabulary size, mean tokens per chunk, the fixed slot count, truncation rate, round-trip mean
absolute error in normalised units (on the fit set and on held-out chunks), the share of round trips that
decode flagged invalid (FAST: truncated chunks), and encode/decode throughput in chunks/s.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def smooth_random_chunks(
    num_chunks: int, horizon: int = 10, action_dim: int = 7, seed: int = 0, gripper: bool = True
) -> np.ndarray:
    """(N, H, D) float64 smooth chunks in original units, a different (fixed) scale and offset per dim.

    Arm dims are sums of a few low-frequency cosines with random amplitudes and phases; with ``gripper``
    the last dim is binary (-1 open, +1 closed) and switches once inside 30% of the chunks.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    chunks = np.zeros((num_chunks, horizon, action_dim))
    for k in range(4):
        amp = rng.normal(size=(num_chunks, 1, action_dim)) / (k + 1) ** 2
        phase = rng.uniform(0, 2 * np.pi, size=(num_chunks, 1, action_dim))
        chunks += amp * np.cos(np.pi * k * t + phase)
    dim_scale = np.geomspace(0.01, 1.0, action_dim)
    dim_offset = np.linspace(-0.5, 0.5, action_dim) * dim_scale  # fixed per dim, so every seed shares units
    chunks = chunks * dim_scale + dim_offset
    if gripper:
        state = np.where(rng.random((num_chunks, 1)) < 0.5, 1.0, -1.0) * np.ones((1, horizon))
        switch = rng.random(num_chunks) < 0.3
        step = rng.integers(1, horizon, size=num_chunks)
        flip = switch[:, None] & (np.arange(horizon)[None, :] >= step[:, None])
        chunks[:, :, -1] = np.where(flip, -state, state)
    return chunks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-chunks", type=int, default=5000, help="chunks to fit on (default 5000)")
    parser.add_argument("--heldout-chunks", type=int, default=1000, help="extra chunks for held-out error")
    parser.add_argument("--horizon", type=int, default=10, help="chunk length H (default 10)")
    parser.add_argument("--action-dim", type=int, default=7, help="action dim D incl. gripper (default 7)")
    parser.add_argument("--scale", type=float, default=10.0, help="FAST DCT scale (default 10)")
    parser.add_argument("--bpe-vocab-size", type=int, default=1024, help="FAST BPE vocabulary (default 1024)")
    parser.add_argument("--num-bins", type=int, default=256, help="bins per dimension (default 256)")
    parser.add_argument("--seed", type=int, default=0)


def _round_trip(tokenizer, chunks: np.ndarray) -> dict[str, float]:
    start = time.perf_counter()
    tokens = tokenizer.encode(chunks)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = tokenizer.decode(tokens)
    decode_s = time.perf_counter() - start
    error = np.abs(tokenizer.normalize(decoded.actions) - tokenizer.normalize(chunks))
    return {
        "mae": float(error.mean()),
        "invalid_rate": decoded.invalid_rate,
        "encode_per_s": len(chunks) / max(encode_s, 1e-9),
        "decode_per_s": len(chunks) / max(decode_s, 1e-9),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dfm_vla.policy.bin_tokenizer import BinActionTokenizer
    from dfm_vla.policy.fast_tokenizer import FastActionTokenizer

    if args.num_chunks < 1 or args.horizon < 1 or args.action_dim < 2:
        raise ValueError(
            "--num-chunks, --horizon: expected >= 1; --action-dim: expected >= 2 (arm dims + gripper)"
        )
    chunks = smooth_random_chunks(args.num_chunks, args.horizon, args.action_dim, seed=args.seed)
    num_heldout = max(args.heldout_chunks, 1)
    heldout = smooth_random_chunks(num_heldout, args.horizon, args.action_dim, seed=args.seed + 1)
    gripper = (args.action_dim - 1,)
    tokenizers = [
        FastActionTokenizer(scale=args.scale, bpe_vocab_size=args.bpe_vocab_size, gripper_dims=gripper),
        BinActionTokenizer(num_bins=args.num_bins, gripper_dims=gripper),
    ]
    rows = []
    for tok in tokenizers:
        start = time.perf_counter()
        tok.fit(chunks)
        fit_s = time.perf_counter() - start
        train = _round_trip(tok, chunks)
        held = _round_trip(tok, heldout)
        counts = tok.token_counts(heldout)
        rows.append(
            {
                "tokenizer": tok.kind,
                "vocab_size": tok.vocab_size,
                "mean_tokens_per_chunk": round(tok.fit_stats["mean_tokens_per_chunk"], 3),
                "num_slots": tok.num_slots,
                "truncation_rate": tok.fit_stats["truncation_rate"],
                "round_trip_mae": train["mae"],
                "invalid_decode_rate": train["invalid_rate"],
                "heldout_mae": held["mae"],
                "heldout_truncation_rate": float((counts > tok.max_regular_tokens).mean()),
                "encode_chunks_per_s": round(train["encode_per_s"]),
                "decode_chunks_per_s": round(train["decode_per_s"]),
                "fit_s": round(fit_s, 3),
            }
        )
    return {
        "rows": rows,
        "config": {
            "num_chunks": args.num_chunks,
            "heldout_chunks": args.heldout_chunks,
            "horizon": args.horizon,
            "action_dim": args.action_dim,
            "gripper_dims": list(gripper),
            "scale": args.scale,
            "bpe_vocab_size": args.bpe_vocab_size,
            "num_bins": args.num_bins,
            "seed": args.seed,
            "error_units": "normalised ([-1, 1] per dim)",
        },
    }
