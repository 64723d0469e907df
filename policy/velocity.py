"""Kinetic-optimal velocities of the metric path (paper Eq. 7; Shaul et al. 2024; Gat et al. 2024).

Conditional velocity, per slot, the rate of jumping from the current token z to x != z::

    u_t(x, z | x1) = p_t(x | x1) * beta'_t * [d(z, x1) - d(x, x1)]_+

It is non-negative, and zero unless x is strictly closer to x1 than z: probability only flows towards x1.
The diagonal is u_t(z, z | x1) = -sum_{x != z} u_t(x, z | x1) (rates of a CTMC generator sum to zero).
It satisfies the continuity (Kolmogorov forward) equation of the path::

    d/dt p_t(x | x1) = sum_z [u_t(x, z | x1) p_t(z | x1) - u_t(z, x | x1) p_t(x | x1)]
                     = -beta'_t p_t(x | x1) (d(x, x1) - E_{p_t(.|x1)} d(., x1))

Marginal velocity, given the model's posterior p_{1|t}(x1 | x_t) per slot (the factorised DFM
posterior)::

    u_t(x, z) = sum_{x1} p_{1|t}(x1 | x_t) u_t(x, z | x1)

computed either exactly over the top-k x1 of the posterior (renormalised over those k; exact at k = V),
or by sampling one x1 per slot from the posterior and using the conditional velocity (an unbiased
one-sample estimate; Gat et al. 2024; O(N V) for N slots). The top-k sum costs O(U V^2 + N V^2) when all
slots share one time (every decoder step; U = distinct current tokens), else O(N k V) in chunks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dfm_vla.policy.probability_path import MetricPath, sample_categorical

VelocityMode = Literal["sample", "topk"]

_CHUNK_ELEMENTS = 1 << 24  # topk mode: at most this many (slot, x1, x) entries at once


def conditional_velocity(path: MetricPath, z: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
    """(..., V) rates u_t(x, z | x1) for every destination x; diagonal entry (x = z) = -sum of the rest.

    z, x1: (...) long current and target tokens; t: (B,), same shape as z, or a float.
    """
    if z.shape != x1.shape:
        raise ValueError(f"z, x1: expected equal shapes, got {tuple(z.shape)} and {tuple(x1.shape)}")
    t = path.time_like(t, z)
    p = path.probs(x1, t)  # (..., V)
    d_x = path.tensors_on(x1.device)[0][x1].to(p.dtype)  # (..., V): d(x, x1) for every x (d symmetric)
    d_z = d_x.gather(-1, z[..., None])  # (..., 1): d(z, x1)
    rates = p * path.beta_derivative(t)[..., None] * (d_z - d_x).clamp_min(0.0)
    return _with_diagonal(rates, z)


def marginal_velocity(
    path: MetricPath,
    z: Tensor,
    posterior: Tensor,
    t: Tensor | float,
    mode: VelocityMode = "sample",
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(..., V) marginal rates u_t(x, z) = E_{x1 ~ posterior} u_t(x, z | x1); diagonal = -sum of the rest.

    z: (...) long current tokens. posterior: (..., V) probabilities p_{1|t}(x1 | x_t) (zero outside the
    slot vocabulary; see ``MetricPath.posterior_log_probs``). mode "sample": one x1 per slot drawn with
    ``generator``; mode "topk": the top ``top_k`` (default all V, exact) x1 of the posterior, renormalised.
    """
    if posterior.shape != z.shape + (path.vocab_size,):
        raise ValueError(
            f"posterior: expected shape {tuple(z.shape) + (path.vocab_size,)}, got {tuple(posterior.shape)}"
        )
    if mode == "sample":
        x1 = sample_categorical(posterior, generator)
        return conditional_velocity(path, z, x1, t)
    if mode != "topk":
        raise ValueError(f"mode: expected 'sample' or 'topk', got {mode!r}")
    vocab = path.vocab_size
    k = vocab if top_k is None else int(top_k)
    if not 1 <= k <= vocab:
        raise ValueError(f"top_k: expected 1 <= top_k <= {vocab}, got {top_k}")
    weights, x1 = posterior.topk(k, dim=-1)  # (..., k)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    t = path.time_like(t, z)
    beta_dot = path.beta_derivative(t)
    flat_t = t.reshape(-1)
    if flat_t.numel() == 1 or bool((flat_t == flat_t[0]).all()):
        dense = torch.zeros_like(posterior, dtype=weights.dtype).scatter(-1, x1, weights)
        rates = _marginal_one_time(path, z, dense, flat_t[0])
    else:
        rates = _marginal_chunked(path, z, weights, x1, t)
    rates = rates * beta_dot[..., None]
    return _with_diagonal(rates, z)


def _marginal_one_time(path: MetricPath, z: Tensor, weights: Tensor, t: Tensor) -> Tensor:
    """sum_x1 w(x1) p_t(x | x1) [d(z, x1) - d(x, x1)]_+ for one time t, grouped by the current token z.

    For each distinct z: A_z[x1, x] = p_t(x | x1) [d(z, x1) - d(x, x1)]_+ (V, V), then w[slots with z] @ A_z.
    Cost O(U V^2 + N V^2) (U distinct z, N slots), memory O(V^2 + N V).
    """
    vocab = path.vocab_size
    flat_z = z.reshape(-1)
    flat_w = weights.reshape(-1, vocab)
    prob = path.log_prob_table(t, flat_w.device).exp().to(flat_w.dtype)  # (V_x1, V_x)
    dist = path.tensors_on(flat_w.device)[0].to(flat_w.dtype)  # d[x1, x] (symmetric)
    out = torch.zeros_like(flat_w)
    for value in torch.unique(flat_z).tolist():
        rows = torch.nonzero(flat_z == value).flatten()
        a_z = prob * (dist[:, value : value + 1] - dist).clamp_min(0.0)
        out[rows] = flat_w[rows] @ a_z
    return out.reshape(weights.shape)


def _marginal_chunked(path: MetricPath, z: Tensor, weights: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """As :func:`_marginal_one_time` for per-sequence times: explicit sum over the k x1, in chunks."""
    vocab = path.vocab_size
    k = x1.shape[-1]
    n_slots = max(1, z.numel())
    chunk = max(1, _CHUNK_ELEMENTS // (n_slots * vocab))
    rates = torch.zeros(z.shape + (vocab,), dtype=weights.dtype, device=z.device)
    t_k = t[..., None] if t.dim() > 0 else t  # broadcast over the k axis
    for start in range(0, k, chunk):
        ids = x1[..., start : start + chunk]  # (..., c)
        w = weights[..., start : start + chunk]
        p = path.probs(ids, t_k)  # (..., c, V)
        d_x = path.tensors_on(ids.device)[0][ids].to(p.dtype)  # (..., c, V)
        d_z = d_x.gather(-1, z[..., None, None].expand(*ids.shape, 1))  # (..., c, 1)
        rates = rates + (w[..., None] * p * (d_z - d_x).clamp_min(0.0)).sum(-2).to(rates.dtype)
    return rates


def jump_intensity(rates: Tensor, z: Tensor) -> Tensor:
    """(...) total jump rate lambda = sum_{x != z} u_t(x, z) of (..., V) rates at current tokens z."""
    return rates.scatter(-1, z[..., None], 0.0).clamp_min(0.0).sum(-1)


def _with_diagonal(rates: Tensor, z: Tensor) -> Tensor:
    off = rates.scatter(-1, z[..., None], 0.0)
    return off.scatter(-1, z[..., None], -off.sum(-1, keepdim=True))
