"""Metric probability path and kinetic-optimal velocity: schedule, boundaries, continuity equation."""

import numpy as np
import pytest
import torch

from dfm_vla.policy.bin_tokenizer import BinActionTokenizer
from dfm_vla.policy.fast_tokenizer import FastActionTokenizer
from dfm_vla.policy.probability_path import (
    MetricPath,
    beta_schedule,
    beta_schedule_derivative,
    distance_matrix,
    slot_token_ids,
)
from dfm_vla.policy.velocity import conditional_velocity, jump_intensity, marginal_velocity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_path(vocab=9, dim=3, seed=0, c=3.0, alpha=1.0, dtype=torch.float64, metric="l2"):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(vocab, dim, generator=gen, dtype=dtype)
    dist = distance_matrix(emb, metric=metric).to(dtype) if metric else None
    return MetricPath(dist, c=c, alpha=alpha)


def random_symmetric_path(vocab=7, seed=0, c=3.0, alpha=1.0):
    """A distance matrix that is not a metric (no triangle inequality): the path math must not need one."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(vocab, vocab, generator=gen, dtype=torch.float64) * 2 + 0.05
    d = 0.5 * (a + a.T)
    d.fill_diagonal_(0.0)
    return MetricPath(d, c=c, alpha=alpha)


@pytest.mark.parametrize("c,alpha", [(3.0, 1.0), (1.0, 0.5), (5.0, 2.0)])
def test_schedule_values_and_derivative(c, alpha):
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
    np.testing.assert_allclose(beta_schedule(t, c, alpha), c * (t / (1 - t)) ** alpha, rtol=1e-12)
    eps = 1e-6
    fd = (beta_schedule(t + eps, c, alpha) - beta_schedule(t - eps, c, alpha)) / (2 * eps)
    np.testing.assert_allclose(beta_schedule_derivative(t, c, alpha), fd, rtol=1e-6)
    assert float(beta_schedule(0.0, c, alpha)) == 0.0
    # Numerically safe at both ends: finite, and huge near t = 1.
    ends = torch.tensor([0.0, 1.0])
    assert torch.isfinite(beta_schedule(ends, c, alpha)).all()
    assert torch.isfinite(beta_schedule_derivative(ends, c, alpha)).all()
    assert float(beta_schedule(1.0, c, alpha)) > 900 * c  # (1e6)^alpha * c at the clamp


def test_distance_matrix_metrics_and_normalisation():
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(12, 5, generator=gen)
    d = distance_matrix(emb, "l2", normalize="none")
    manual = ((emb[:, None] - emb[None]) ** 2).sum(-1).sqrt()
    np.testing.assert_allclose(d, manual, atol=1e-5)
    dn = distance_matrix(emb, "l2", normalize="max")
    assert abs(float(dn.max()) - 1.0) < 1e-6 and torch.equal(dn, dn.T) and (dn.diagonal() == 0).all()
    nn_mean = distance_matrix(emb, "l2", normalize="nearest")
    nearest = nn_mean + torch.diag(torch.full((12,), float("inf")))
    assert abs(float(nearest.min(1).values.mean()) - 1.0) < 1e-5
    cos = distance_matrix(emb, "cosine", normalize="none")
    unit = emb / emb.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(cos, (1 - unit @ unit.T).fill_diagonal_(0).clamp_min(0), atol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        distance_matrix(emb, "manhattan")
    with pytest.raises(ValueError, match="embeddings"):
        distance_matrix(emb[0])


def test_path_boundary_conditions():
    allowed = torch.ones(9, dtype=torch.bool)
    allowed[[7, 8]] = False  # e.g. boa and mask: never in a slot
    gen = torch.Generator().manual_seed(2)
    path = MetricPath(distance_matrix(torch.randn(9, 2, generator=gen)), allowed)
    x1 = torch.arange(7)
    p0 = path.probs(x1, 0.0)
    np.testing.assert_allclose(p0[:, :7], torch.full((7, 7), 1 / 7), atol=1e-7)  # uniform on the slots
    assert (p0[:, 7:] == 0).all()
    p1 = path.probs(x1, 1.0)  # clamped to 1 - 1e-6: a Dirac at x1 to float precision
    assert torch.isfinite(p1).all()
    np.testing.assert_allclose(p1.diagonal(), torch.ones(7), atol=1e-6)
    assert (path.sample(x1.repeat(50), 1.0 - 1e-6) == x1.repeat(50)).all()
    # p_t(x1 | x1) increases with t.
    sharp = [path.target_probability(t) for t in (0.0, 0.3, 0.6, 0.9, 0.99)]
    assert all(a < b for a, b in zip(sharp, sharp[1:], strict=False))
    # Sources and samples stay on the slot vocabulary.
    src = path.sample_source((200, 5), generator=gen)
    assert path.allowed[src].all() and len(src.unique()) == 7
    assert path.allowed[path.sample(x1.repeat(100), 0.2, gen)].all()


def test_path_rejects_bad_distances():
    d = distance_matrix(torch.randn(5, 2))
    bad = d.clone()
    bad[0, 1] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        MetricPath(bad)
    dup = d.clone()
    dup[0, 1] = dup[1, 0] = 0.0
    with pytest.raises(ValueError, match="distance 0"):
        MetricPath(dup)
    with pytest.raises(ValueError, match="allowed"):
        MetricPath(d, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="t: expected"):
        MetricPath(d).log_probs(torch.zeros(3, 2, dtype=torch.long), torch.zeros(2))


def test_sampled_x_t_matches_path_probabilities():
    path = random_path(vocab=6, seed=3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.full((60_000,), 2, dtype=torch.long)
    t = torch.full((60_000,), 0.4)
    x_t = path.sample(x1, t, gen)
    freq = torch.bincount(x_t, minlength=6).float() / len(x_t)
    tv = 0.5 * (freq - path.probs(x1[:1], 0.4)[0]).abs().sum()
    assert tv < 0.01, f"TV(samples, p_t) = {tv:.4f}"


def test_specials_and_tokenizer_slot_vocabulary():
    rng = np.random.default_rng(0)
    chunks = np.cumsum(rng.normal(size=(120, 6, 2)), axis=1) * 0.1
    bins = BinActionTokenizer(num_bins=8).fit(chunks)
    assert slot_token_ids(bins) == list(range(8))
    fast = FastActionTokenizer(bpe_vocab_size=48).fit(chunks)
    ids = slot_token_ids(fast)
    assert set(ids) == set(range(fast.num_action_tokens)) | {fast.eoa_id, fast.pad_id}
    assert fast.boa_id not in ids and fast.mask_id not in ids

    path = MetricPath.from_tokenizer(fast)  # value-space distances; specials at the special distance
    assert not path.allowed[fast.boa_id] and not path.allowed[fast.mask_id]
    d = path.distance
    for s in (fast.eoa_id, fast.pad_id):
        others = [i for i in ids if i != s]
        np.testing.assert_allclose(d[s, others], 1.0)
    regular = torch.arange(fast.num_action_tokens)
    assert abs(float(d[regular][:, regular].max()) - 1.0) < 1e-6

    # From an embedding table: special rows do not set the scale, and get the special distance.
    emb = torch.randn(fast.vocab_size, 16)
    emb[fast.pad_id] *= 100.0
    path = MetricPath.from_tokenizer(fast, emb, metric="cosine", special_distance=0.7)
    assert abs(float(path.distance[regular][:, regular].max()) - 1.0) < 1e-6
    np.testing.assert_allclose(path.distance[fast.pad_id, regular], 0.7)
    posterior = path.posterior_log_probs(torch.zeros(2, 3, fast.vocab_size)).exp()
    assert (posterior[..., fast.boa_id] == 0).all() and (posterior[..., fast.mask_id] == 0).all()
    with pytest.raises(ValueError, match="embeddings"):
        MetricPath.from_tokenizer(fast, torch.randn(5, 16))

    bin_path = MetricPath.from_tokenizer(bins)
    np.testing.assert_allclose(bin_path.distance[0, :8], torch.arange(8) / 7, atol=1e-6)


def full_rate_matrix(path, x1, t):
    """U[x, z] = u_t(x, z | x1) for every pair, from conditional_velocity."""
    vocab = path.vocab_size
    z = torch.arange(vocab)
    rows = conditional_velocity(path, z, torch.full_like(z, x1), torch.full((vocab,), t, dtype=torch.float64))
    return rows.T  # rows[z, x] = u(x, z)


def continuity_residual(path, x1, t, rate_matrix):
    """Relative max error of the continuity equation, divided by p_t(x | x1) on both sides.

    d/dt log p_t(x) (central finite difference of the log-probabilities) against
    [sum_z u(x, z) p_t(z) - sum_z u(z, x) p_t(x)] / p_t(x): the log form keeps tiny probabilities (near t = 1
    the far tokens have p ~ 1e-25) and p(x1) ~ 1 - 1e-10 inside float64 precision.
    """
    eps = 1e-6
    logp = lambda s: path.log_probs(torch.tensor(x1), torch.tensor(s, dtype=torch.float64))  # noqa: E731
    dlogp_dt = (logp(t + eps) - logp(t - eps)) / (2 * eps)
    pt = logp(t).exp()
    off = rate_matrix - torch.diag(rate_matrix.diagonal())
    rhs = off @ pt - off.sum(0) * pt  # sum_z u(x,z) p(z) - sum_z u(z,x) p(x)
    return ((dlogp_dt - rhs / pt).abs().max() / dlogp_dt.abs().max()).item()


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("make", [random_path, random_symmetric_path], ids=["embedding_l2", "nonmetric"])
def test_continuity_equation(make, alpha):
    for seed in range(3):
        path = make(seed=seed, alpha=alpha)
        for x1 in (0, 3):
            for t in (0.05, 0.3, 0.7, 0.95):
                u = full_rate_matrix(path, x1, t)
                assert continuity_residual(path, x1, t, u) < 1e-6, (seed, x1, t)


def test_continuity_check_catches_a_wrong_velocity():
    """The finite-difference check is not vacuous: reversed jump directions or a wrong rate scale fail it."""
    path = random_path(seed=0)
    u = full_rate_matrix(path, 2, 0.5)
    assert continuity_residual(path, 2, 0.5, u) < 1e-6
    assert continuity_residual(path, 2, 0.5, u.T) > 0.1
    assert continuity_residual(path, 2, 0.5, 2 * u) > 0.1


def test_velocity_sign_and_direction():
    path = random_path(vocab=10, seed=4)
    t = torch.tensor(0.6, dtype=torch.float64)
    for x1 in range(10):
        u = full_rate_matrix(path, x1, t)  # u[x, z]
        d = path.distance[:, x1]  # d(x, x1)
        off = ~torch.eye(10, dtype=torch.bool)
        assert (u[off] >= 0).all()
        closer = d[:, None] < d[None, :]  # [x, z]: x strictly closer to x1 than z
        assert (u[off & ~closer] == 0).all()
        assert (u[off & closer] > 0).all()
        np.testing.assert_allclose(u.sum(0), torch.zeros(10), atol=1e-9)  # generator columns sum to 0
        # At the target nothing moves: lambda(x1) = 0.
        assert float(jump_intensity(u[:, x1][None], torch.tensor([x1]))[0]) == 0.0


def test_marginal_velocity_topk_and_sampled():
    path = random_path(vocab=8, seed=5, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    z = torch.randint(8, (4, 3), generator=gen)
    posterior = torch.softmax(torch.randn(4, 3, 8, generator=gen) * 2, -1)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9])
    exact = marginal_velocity(path, z, posterior, t, mode="topk")
    manual = sum(
        posterior[..., j, None] * conditional_velocity(path, z, torch.full_like(z, j), t) for j in range(8)
    )
    np.testing.assert_allclose(exact, manual, rtol=1e-5, atol=1e-5)
    top1 = marginal_velocity(path, z, posterior, t, mode="topk", top_k=1)
    np.testing.assert_allclose(top1, conditional_velocity(path, z, posterior.argmax(-1), t), rtol=1e-6)
    # Sampled x1: an unbiased estimate of the exact marginal.
    n = 4000
    big_z = z[None].expand(n, -1, -1).reshape(n * 4, 3)
    big_post = posterior[None].expand(n, -1, -1, -1).reshape(n * 4, 3, 8)
    big_t = t.repeat(n)
    mean = marginal_velocity(path, big_z, big_post, big_t, mode="sample", generator=gen)
    mean = mean.reshape(n, 4, 3, 8).mean(0)
    scale = exact.abs().max()
    assert (mean - exact).abs().max() / scale < 0.05
    with pytest.raises(ValueError, match="top_k"):
        marginal_velocity(path, z, posterior, t, mode="topk", top_k=9)


def test_sharpness_of_the_late_path_depends_on_the_distance_scale():
    """Probe lesson 2: 64 bins normalised to [0, 1], c = 3: at t = 13/14 the target keeps only ~30%."""
    emb = torch.arange(64, dtype=torch.float32)[:, None]
    by_max = MetricPath.from_embeddings(emb, normalize="max")
    by_nearest = MetricPath.from_embeddings(emb, normalize="nearest")
    late = 13 / 14
    p_max, p_nearest = by_max.target_probability(late), by_nearest.target_probability(late)
    print(f"p_t(x1|x1) at t=13/14, 64 bins, c=3: normalize=max {p_max:.3f}, nearest {p_nearest:.6f}")
    assert 0.2 < p_max < 0.45
    assert p_nearest > 0.999
    # The same blur with c = 30 (10x sharper) is gone.
    sharper = MetricPath.from_embeddings(emb, normalize="max", c=30.0)
    assert sharper.target_probability(late) > 0.99
