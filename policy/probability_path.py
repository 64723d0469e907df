"""The metric-induced probability path of DFM-VLA (paper, "probability path"; Shaul et al. 2024).

Per action slot i, independently, the path from noise (t = 0) to data (t = 1) is::

    p_t(x | x1) = softmax_x(-beta_t * d(x, x1))                 over the slot vocabulary S
    beta_t      = c * (t / (1 - t)) ** alpha                     (defaults c = 3, alpha = 1)
    beta'_t     = c * alpha * (t / (1 - t)) ** (alpha - 1) / (1 - t) ** 2

Boundary conditions: beta_0 = 0 gives the uniform distribution on S; beta_t -> inf as t -> 1 gives the
Dirac at x1 (d(x1, x1) = 0 and d(x, x1) > 0 elsewhere). The path over a sequence (B, L) is the product of
the per-slot paths.

d is a (V, V) distance matrix over the whole token vocabulary, usually computed from an embedding table
(the model's own action-token embeddings at run time, any table in tests) by :func:`distance_matrix`.

Special tokens are handled explicitly by two choices:

- the **slot vocabulary** S (``allowed``, a (V,) bool mask): the ids that may appear in an action slot.
  The path, the source distribution and every decoder only put mass on S; the posterior logits of ids
  outside S are masked to -inf. For the action tokenizers (``policy/action_tokenizer.py``):
  bins -> the regular ids; FAST -> the regular ids plus ``eoa`` and ``pad`` (FAST fills the slots after eoa
  with pad). ``boa`` (placed in front of the slots by the model) and ``mask`` (DD only) are never in S.
- the **distance of a special id** in S: its embedding has no value-space meaning, so by default it is
  ``special_distance`` (1.0, i.e. the largest regular distance after ``normalize="max"``) from every other
  id and 0 from itself: a special is equally far from every regular token.

Distinct ids with identical rows (e.g. FAST tokens whose coefficients differ only by trailing zeros) get
the floor distance ``MIN_DISTANCE`` = 1e-4 in the ``from_embeddings`` / ``from_tokenizer`` constructors.

Scale matters (``reference/dfm-probe-findings.md``): with d normalised to [0, 1] and c = 3, beta is about 39
at t = 13/14, so a neighbouring token at distance 1/63 keeps ~half the target's probability; the last
stochastic steps stay blurry and the greedy validation steps of :func:`~dfm_vla.policy.samplers.dfm_sample`
do the final snapping. ``normalize="nearest"`` (mean nearest-neighbour distance = 1) gives a much sharper
late path. :meth:`MetricPath.target_probability` measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Metric = Literal["l2", "cosine"]
Normalize = Literal["max", "mean", "nearest", "none"]

T_MAX = 1.0 - 1e-6  # the schedule evaluates t at most here: beta and beta' stay finite at t = 1


def beta_schedule(t: Tensor | float, c: float = 3.0, alpha: float = 1.0) -> Tensor:
    """beta_t = c (t / (1 - t))^alpha, float32 (or float64 if ``t`` is), t clamped to [0, 1 - 1e-6]."""
    t = _as_time(t)
    ratio = t.clamp(0.0, T_MAX) / (1.0 - t.clamp(0.0, T_MAX))
    return c * ratio.pow(alpha)


def beta_schedule_derivative(t: Tensor | float, c: float = 3.0, alpha: float = 1.0) -> Tensor:
    """d beta_t / dt = c alpha (t / (1 - t))^(alpha - 1) / (1 - t)^2, same clamping as :func:`beta_schedule`.

    For alpha < 1 it is infinite at t = 0 in exact arithmetic; t is kept >= 1e-12 there so it stays finite.
    """
    t = _as_time(t).clamp(0.0, T_MAX)
    one_minus = 1.0 - t
    if alpha == 1.0:
        return c / one_minus**2 + torch.zeros_like(t)
    ratio = t.clamp_min(1e-12) / one_minus
    return c * alpha * ratio.pow(alpha - 1.0) / one_minus**2


def _as_time(t: Tensor | float) -> Tensor:
    if not torch.is_tensor(t):
        return torch.tensor(float(t), dtype=torch.float32)
    return t if t.is_floating_point() and t.dtype in (torch.float32, torch.float64) else t.float()


def distance_matrix(
    embeddings: Tensor,
    metric: Metric = "l2",
    normalize: Normalize = "max",
    *,
    reference_ids: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """(V, V) float32 distances between the rows of ``embeddings`` (V, D); symmetric, zero diagonal.

    metric: "l2" (Euclidean) or "cosine" (1 - cosine similarity, in [0, 2]).
    normalize: divide by a scale computed over ``reference_ids`` (default all rows; pass the regular
    action ids so special rows do not set the scale): "max" (largest distance -> 1), "mean" (mean
    off-diagonal distance -> 1), "nearest" (mean nearest-neighbour distance -> 1) or "none".
    The embeddings are detached: no gradient flows through the path.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings: expected shape (V, D), got {tuple(embeddings.shape)}")
    emb = embeddings.detach().float()
    if metric == "l2":
        dist = torch.cdist(emb, emb)
    elif metric == "cosine":
        unit = torch.nn.functional.normalize(emb, dim=-1)
        dist = (1.0 - unit @ unit.T).clamp_min(0.0)
    else:
        raise ValueError(f"metric: expected 'l2' or 'cosine', got {metric!r}")
    dist = 0.5 * (dist + dist.T)
    dist.fill_diagonal_(0.0)
    if normalize == "none":
        return dist
    ref = torch.arange(emb.shape[0]) if reference_ids is None else torch.as_tensor(reference_ids)
    sub = dist[ref.to(dist.device)][:, ref.to(dist.device)]
    if sub.shape[0] < 2:
        raise ValueError("reference_ids: need at least 2 ids to normalise distances")
    off = ~torch.eye(sub.shape[0], dtype=torch.bool, device=sub.device)
    if normalize == "max":
        scale = sub.max()
    elif normalize == "mean":
        scale = sub[off].mean()
    elif normalize == "nearest":
        scale = sub.masked_fill(~off, float("inf")).min(dim=1).values.mean()
    else:
        raise ValueError(f"normalize: expected 'max', 'mean', 'nearest' or 'none', got {normalize!r}")
    if not torch.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"embeddings: distance scale for normalize={normalize!r} is {float(scale)}, expected > 0"
        )
    return dist / scale


class MetricPath:
    """p_t(x | x1) = softmax(-beta_t d(x, x1)) over the slot vocabulary; see the module docstring.

    distance: (V, V) symmetric, non-negative, zero diagonal on the allowed ids (other entries ignored).
    allowed: (V,) bool, the ids that may appear in an action slot (default: all).
    c, alpha: schedule beta_t = c (t / (1 - t))^alpha.

    Token tensors are long ids of any shape ``(...)``; ``t`` is a float tensor of shape ``(B,)`` (one time
    per sequence, broadcast over the trailing dims), of the same shape as the ids, or a Python float.
    """

    def __init__(self, distance: Tensor, allowed: Tensor | None = None, c: float = 3.0, alpha: float = 1.0):
        if distance.dim() != 2 or distance.shape[0] != distance.shape[1]:
            raise ValueError(f"distance: expected a square (V, V) matrix, got {tuple(distance.shape)}")
        vocab = distance.shape[0]
        if allowed is None:
            allowed = torch.ones(vocab, dtype=torch.bool, device=distance.device)
        allowed = allowed.to(device=distance.device, dtype=torch.bool)
        if allowed.shape != (vocab,):
            raise ValueError(f"allowed: expected shape ({vocab},), got {tuple(allowed.shape)}")
        if int(allowed.sum()) < 2:
            raise ValueError("allowed: the slot vocabulary needs at least 2 ids")
        if c <= 0 or alpha <= 0:
            raise ValueError(f"c, alpha: expected > 0, got c={c}, alpha={alpha}")
        keep = allowed[:, None] & allowed[None, :]
        dist = torch.where(keep, distance, torch.zeros((), dtype=distance.dtype, device=distance.device))
        if not torch.isfinite(dist).all():
            raise ValueError("distance: expected finite values between allowed ids")
        if (dist < 0).any():
            raise ValueError("distance: expected non-negative values")
        if not torch.allclose(dist, dist.T, rtol=1e-5, atol=1e-6):
            raise ValueError("distance: expected a symmetric matrix")
        if dist.diagonal().abs().max() > 1e-6:
            raise ValueError("distance: expected a zero diagonal")
        off = keep & ~torch.eye(vocab, dtype=torch.bool, device=dist.device)
        if (dist[off] <= 0).any():
            raise ValueError(
                "distance: two different allowed ids are at distance 0 (the t -> 1 limit needs > 0)"
            )
        self.distance = dist
        self.allowed = allowed
        self._copies: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.c = float(c)
        self.alpha = float(alpha)

    # ----- construction -----------------------------------------------------------------------------
    @classmethod
    def from_embeddings(
        cls,
        embeddings: Tensor,
        *,
        allowed_ids: Tensor | Sequence[int] | None = None,
        special_ids: Sequence[int] = (),
        metric: Metric = "l2",
        normalize: Normalize = "max",
        special_distance: float = 1.0,
        c: float = 3.0,
        alpha: float = 1.0,
    ) -> MetricPath:
        """Path from an embedding table (V, D); see :func:`distance_matrix` and the module docstring.

        allowed_ids: the slot vocabulary (default all ids). special_ids: ids whose distance to every other
        id is ``special_distance`` (after normalisation); they do not set the normalisation scale.
        """
        vocab = embeddings.shape[0]
        allowed = _id_mask(allowed_ids, vocab, "allowed_ids", embeddings.device, default=True)
        special = _id_mask(special_ids, vocab, "special_ids", embeddings.device, default=False)
        reference = torch.nonzero(allowed & ~special).flatten().cpu()
        dist = distance_matrix(embeddings, metric, normalize, reference_ids=reference)
        return cls(_set_special_distance(dist, special, special_distance), allowed, c=c, alpha=alpha)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        embeddings: Tensor | None = None,
        *,
        metric: Metric = "l2",
        normalize: Normalize = "max",
        special_distance: float = 1.0,
        c: float = 3.0,
        alpha: float = 1.0,
    ) -> MetricPath:
        """Path over a fitted action tokenizer's slot vocabulary (:func:`slot_token_ids`).

        embeddings: the model's (V, D) token embeddings; if None, the tokenizer's value-space distances
        (``value_distances()``: bin centres, FAST DCT coefficients) are used, normalised the same way.
        """
        allowed_ids = slot_token_ids(tokenizer)
        special_ids = [i for i in (tokenizer.pad_id, tokenizer.eoa_id) if i in set(allowed_ids)]
        if embeddings is not None:
            if embeddings.shape[0] != tokenizer.vocab_size:
                raise ValueError(
                    f"embeddings: expected {tokenizer.vocab_size} rows (tokenizer.vocab_size), "
                    f"got {embeddings.shape[0]}"
                )
            return cls.from_embeddings(
                embeddings,
                allowed_ids=allowed_ids,
                special_ids=special_ids,
                metric=metric,
                normalize=normalize,
                special_distance=special_distance,
                c=c,
                alpha=alpha,
            )
        values = torch.as_tensor(tokenizer.value_distances(), dtype=torch.float32)
        vocab = values.shape[0]
        regular = torch.arange(tokenizer.num_action_tokens)
        # value_distances is already a distance matrix: normalise it like distance_matrix would.
        sub = values[regular][:, regular]
        off = ~torch.eye(len(regular), dtype=torch.bool)
        scale = {
            "max": lambda: sub.max(),
            "mean": lambda: sub[off].mean(),
            "nearest": lambda: sub.masked_fill(~off, float("inf")).min(dim=1).values.mean(),
            "none": lambda: torch.tensor(1.0),
        }.get(normalize)
        if scale is None:
            raise ValueError(f"normalize: expected 'max', 'mean', 'nearest' or 'none', got {normalize!r}")
        dist = torch.nan_to_num(values, nan=0.0) / scale()
        allowed = _id_mask(allowed_ids, vocab, "allowed_ids", dist.device, default=True)
        special = _id_mask(special_ids, vocab, "special_ids", dist.device, default=False)
        return cls(_set_special_distance(dist, special, special_distance), allowed, c=c, alpha=alpha)

    def to(self, device: torch.device | str) -> MetricPath:
        """A copy on ``device`` (distances keep their dtype)."""
        return MetricPath(self.distance.to(device), self.allowed.to(device), c=self.c, alpha=self.alpha)

    def tensors_on(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(distance (V, V), allowed (V,)) on ``device``, copied once and cached: every method works on the
        device of the ids it is given, so a path built on CPU serves a model on GPU."""
        device = torch.device(device)
        if device == self.distance.device:
            return self.distance, self.allowed
        if device not in self._copies:
            self._copies[device] = (self.distance.to(device), self.allowed.to(device))
        return self._copies[device]

    # ----- basic quantities ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.distance.shape[0]

    @property
    def allowed_ids(self) -> Tensor:
        """(S,) long, the slot vocabulary."""
        return torch.nonzero(self.allowed).flatten()

    @property
    def device(self) -> torch.device:
        return self.distance.device

    def beta(self, t: Tensor | float) -> Tensor:
        return beta_schedule(t, self.c, self.alpha)

    def beta_derivative(self, t: Tensor | float) -> Tensor:
        return beta_schedule_derivative(t, self.c, self.alpha)

    def time_like(self, t: Tensor | float, ids: Tensor) -> Tensor:
        """``t`` as a float32 (or float64) tensor broadcastable against ``ids`` (…) with a trailing V axis."""
        t = _as_time(t).to(ids.device)
        if t.dim() == 0:
            return t
        if t.dim() == ids.dim():  # already aligned (e.g. (B, 1) against (B, L)); torch checks broadcasting
            return t
        if t.dim() > ids.dim() or ids.shape[: t.dim()] != t.shape:
            raise ValueError(
                f"t: expected shape {tuple(ids.shape[:1])} or {tuple(ids.shape)}, got {tuple(t.shape)}"
            )
        return t.reshape(t.shape + (1,) * (ids.dim() - t.dim()))

    def log_probs(self, x1: Tensor, t: Tensor | float) -> Tensor:
        """(..., V) log p_t(x | x1) for every x; -inf outside the slot vocabulary. x1: (...) long."""
        t = self.time_like(t, x1)
        flat = t.reshape(-1)
        if flat.numel() == 1 or bool((flat == flat[0]).all()):
            # One time for everything (every decoder step): a (V, V) table, then a gather.
            return self.log_prob_table(flat[0], x1.device)[x1]
        distance, allowed = self.tensors_on(x1.device)
        beta = self.beta(t)[..., None]
        logits = -beta * distance[x1]
        return torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)

    def log_prob_table(self, t: Tensor | float, device: torch.device | str | None = None) -> Tensor:
        """(V, V) table T[x1, x] = log p_t(x | x1) at one time t (rows of disallowed x1 are meaningless)."""
        distance, allowed = self.tensors_on(device if device is not None else self.device)
        beta = self.beta(_as_time(t).to(distance.device).reshape(()))
        logits = (-beta * distance).masked_fill(~allowed, float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def probs(self, x1: Tensor, t: Tensor | float) -> Tensor:
        """(..., V) p_t(x | x1)."""
        return self.log_probs(x1, t).exp()

    def sample(self, x1: Tensor, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ p_t(. | x1), every slot independently; same shape as ``x1``."""
        return sample_categorical(self.probs(x1, t), generator)

    def sample_source(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """x_0 ~ p_0 = uniform over the slot vocabulary, long tensor of ``shape``."""
        ids = self.allowed_ids
        device = device if device is not None else ids.device
        pick = torch.randint(len(ids), shape, generator=generator, device=device)
        return ids.to(device)[pick]

    def posterior_log_probs(self, logits: Tensor) -> Tensor:
        """(..., V) float32 log p_{1|t} from model logits: ids outside the slot vocabulary get -inf."""
        _, allowed = self.tensors_on(logits.device)
        return torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)

    def target_probability(self, t: float) -> float:
        """Mean over allowed x1 of p_t(x1 | x1): how sharp the path is at time t (1.0 = Dirac)."""
        ids = self.allowed_ids
        return float(self.probs(ids, t).gather(-1, ids[:, None]).mean())

    def __repr__(self) -> str:
        return (
            f"MetricPath(vocab_size={self.vocab_size}, slot_vocab={int(self.allowed.sum())}, "
            f"c={self.c}, alpha={self.alpha})"
        )


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One id per row of (..., V) non-negative weights (need not sum to 1) -> (...) long, by inverse CDF.

    Never returns an id of zero weight (u is drawn in (0, total]); several times faster than
    ``torch.multinomial`` on CPU for many short rows.
    """
    cdf = probs.float().cumsum(-1)
    total = cdf[..., -1:]
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device).clamp_min(1e-7) * total
    return (cdf < u).sum(-1).clamp_max(probs.shape[-1] - 1)


def slot_token_ids(tokenizer) -> list[int]:
    """Ids that may appear in an action slot: the regular ids, plus eoa and pad for FAST (not boa, mask)."""
    ids = list(range(int(tokenizer.num_action_tokens)))
    if getattr(tokenizer, "kind", "") == "fast":
        ids += [int(tokenizer.eoa_id), int(tokenizer.pad_id)]
    return ids


def _id_mask(ids, vocab: int, name: str, device, default: bool) -> Tensor:
    if ids is None:
        return torch.full((vocab,), default, dtype=torch.bool, device=device)
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).flatten()
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(
            f"{name}: expected ids in [0, {vocab}), got min {int(ids.min())} max {int(ids.max())}"
        )
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[ids] = True
    return mask


MIN_DISTANCE = 1e-4  # off-diagonal floor (normalised units) so that p_t still tends to a Dirac at t -> 1


def _set_special_distance(dist: Tensor, special: Tensor, value: float) -> Tensor:
    """Specials at ``value`` from everything; other coincident ids (equal rows) pushed to MIN_DISTANCE."""
    if value <= 0:
        raise ValueError(f"special_distance: expected > 0, got {value}")
    rows = special[:, None] | special[None, :]
    dist = torch.where(rows, torch.full_like(dist, value), dist.clamp_min(MIN_DISTANCE))
    return dist.fill_diagonal_(0.0)
