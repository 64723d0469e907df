"""Action tokenizers (FAST and bins): round trips, malformed decodes, save/load, determinism, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dfm_vla.policy.action_tokenizer import (
    ActionNormalizer,
    BinActionTokenizer,
    FastActionTokenizer,
    load_action_tokenizer,
)
from dfm_vla.policy.bench_tokenizers import smooth_random_chunks

H, D = 10, 7
GRIPPER = (D - 1,)


@pytest.fixture(scope="module")
def chunks() -> np.ndarray:
    return smooth_random_chunks(2000, H, D, seed=0)


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    return smooth_random_chunks(500, H, D, seed=1)


@pytest.fixture(scope="module")
def fast(chunks) -> FastActionTokenizer:
    return FastActionTokenizer(gripper_dims=GRIPPER).fit(chunks)


@pytest.fixture(scope="module")
def bins(chunks) -> BinActionTokenizer:
    return BinActionTokenizer(gripper_dims=GRIPPER).fit(chunks)


def _normalized_error(tok, original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    return np.abs(tok.normalize(decoded) - tok.normalize(original))


# ---- normaliser ---------------------------------------------------------------------------------------
def test_normalizer_maps_percentiles_and_keeps_gripper_binary():
    rng = np.random.default_rng(0)
    actions = np.stack([rng.normal(3.0, 2.0, 10_000), rng.choice([0.0, 1.0], 10_000)], axis=1)
    norm = ActionNormalizer.fit(actions, gripper_dims=(1,))
    q01, q99 = np.percentile(actions[:, 0], [1, 99])
    z = norm.normalize(np.array([[q01, 0.0], [q99, 1.0], [q99 + 100, 0.2], [(q01 + q99) / 2, 0.8]]))
    np.testing.assert_allclose(z[:, 0], [-1, 1, 1, 0], atol=1e-9)  # clipped beyond the 99th percentile
    np.testing.assert_array_equal(z[:, 1], [-1, 1, -1, 1])
    back = norm.unnormalize(np.array([[0.0, 0.3], [1.0, -0.1]]))
    np.testing.assert_allclose(back[:, 0], [(q01 + q99) / 2, q99])
    np.testing.assert_array_equal(back[:, 1], [1.0, 0.0])  # gripper comes back as one of its two levels


# ---- round trips --------------------------------------------------------------------------------------
def test_fast_round_trip_below_one_percent_of_range(fast, heldout):
    tokens = fast.encode(heldout)
    decoded = fast.decode(tokens)
    error = _normalized_error(fast, heldout, decoded.actions)
    assert decoded.actions.shape == heldout.shape and decoded.actions.dtype == np.float32
    assert error.mean() < 0.01 * 2.0  # the normalised range [-1, 1] has width 2
    counts = fast.token_counts(heldout)
    fits = counts <= fast.num_slots - 1
    np.testing.assert_array_equal(decoded.valid, fits)  # only truncated chunks decode invalid
    assert fits.mean() > 0.95


def test_fast_untruncated_round_trip_and_gripper_steps(chunks):
    tok = FastActionTokenizer(gripper_dims=GRIPPER, num_slots=64).fit(chunks)
    switching = chunks[np.abs(np.diff(chunks[:, :, -1], axis=1)).max(axis=1) > 0]
    assert len(switching) > 100  # the generator puts a gripper step inside about 30% of chunks
    decoded = tok.decode(tok.encode(switching))
    assert decoded.valid.all()
    error = _normalized_error(tok, switching, decoded.actions)
    assert error[..., :-1].mean() < 0.02
    np.testing.assert_array_equal(decoded.actions[..., -1], switching[..., -1])  # the step is exact


def test_fast_round_trip_without_binary_gripper(chunks):
    tok = FastActionTokenizer().fit(chunks)
    decoded = tok.decode(tok.encode(chunks[:500]))
    assert _normalized_error(tok, chunks[:500], decoded.actions).mean() < 0.02


def test_bins_round_trip_within_half_a_bin(bins, heldout):
    tokens = bins.encode(heldout)
    assert tokens.shape == (len(heldout), H * D) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < 256
    decoded = bins.decode(tokens)
    assert decoded.valid.all()
    error = _normalized_error(bins, heldout, decoded.actions)
    assert error.max() <= bins.bin_width / 2 + 1e-5  # 1e-5: float32 output re-normalised
    np.testing.assert_array_equal(decoded.actions[..., -1], heldout[..., -1])


def test_single_chunk_shapes(fast, bins, heldout):
    for tok in (fast, bins):
        ids = tok.encode(heldout[0])
        assert ids.shape == (tok.num_slots,)
        decoded = tok.decode(ids)
        assert decoded.actions.shape == (H, D) and decoded.valid.shape == ()


# ---- layout and ids -----------------------------------------------------------------------------------
def test_fast_slot_layout_and_special_ids(fast, chunks):
    assert fast.num_action_tokens == 1024 and fast.vocab_size == 1028
    assert fast.special_ids == (1024, 1025, 1026, 1027)
    assert len({fast.pad_id, fast.boa_id, fast.eoa_id, fast.mask_id}) == 4
    counts = fast.token_counts(chunks)
    assert fast.num_slots == int(np.ceil(np.quantile(counts, 0.99))) + 1
    assert fast.fit_stats["truncation_rate"] == pytest.approx((counts > fast.num_slots - 1).mean())
    tokens = fast.encode(chunks[:200])
    for row, n in zip(tokens, counts[:200], strict=True):
        n = min(n, fast.num_slots - 1)
        assert (row[:n] < fast.num_action_tokens).all()
        assert row[n] == fast.eoa_id and (row[n + 1 :] == fast.pad_id).all()


def test_fast_token_values_are_what_tokens_decode_to(fast, heldout):
    values = fast.token_values()
    assert values.shape[0] == fast.vocab_size
    special = np.isnan(values).all(axis=1)
    assert np.flatnonzero(special).tolist() == list(fast.special_ids)
    assert np.isfinite(values[: fast.num_action_tokens, 0]).all()
    chunk = heldout[:1]
    ids = fast.encode(chunk)[0]
    body = ids[: np.flatnonzero(ids == fast.eoa_id)[0]]
    coeffs = np.concatenate([values[t][~np.isnan(values[t])] for t in body]) * fast.config.scale
    np.testing.assert_allclose(coeffs, fast.coefficients(fast.normalize(chunk))[0], atol=1e-9)


def test_bins_token_values_and_distances(bins):
    values = bins.token_values()
    assert values.shape == (bins.vocab_size, 1)
    np.testing.assert_allclose(values[:256, 0], bins.bin_centers())
    assert np.isnan(values[256:]).all()
    dist = bins.value_distances()
    np.testing.assert_allclose(dist[3, 5], 2 * bins.bin_width)
    assert np.isnan(dist[bins.mask_id]).all() and np.isnan(dist[:, bins.pad_id]).all()
    assert dist.shape == (260, 260)


def test_fast_value_distances(fast):
    dist = fast.value_distances()
    regular = dist[: fast.num_action_tokens, : fast.num_action_tokens]
    assert np.isfinite(regular).all() and (np.diag(regular) == 0).all()
    np.testing.assert_allclose(regular, regular.T)
    assert np.isnan(dist[fast.eoa_id]).all()


# ---- malformed model output ---------------------------------------------------------------------------
def test_fast_malformed_sequences_decode_flagged(fast, heldout):
    good = fast.encode(heldout[:1])[0]
    n = int(np.flatnonzero(good == fast.eoa_id)[0])
    no_eoa = np.where(good == fast.eoa_id, fast.pad_id, good)
    after_eoa = good.copy()
    after_eoa[n + 1] = good[0]
    mask_inside = good.copy()
    mask_inside[0] = fast.mask_id
    unknown = good.copy()
    unknown[0] = 99_999
    short_count = good.copy()  # drop the last BPE token: fewer than H x D coefficients
    short_count[n - 1], short_count[n] = fast.eoa_id, fast.pad_id
    rows = [no_eoa, after_eoa, mask_inside, unknown, short_count]
    rows += [np.full_like(good, fast.mask_id), np.full_like(good, fast.pad_id), np.full_like(good, -5)]
    decoded = fast.decode(np.stack(rows))
    assert not decoded.valid.any() and decoded.num_invalid == len(rows)
    assert np.isfinite(decoded.actions).all() and decoded.actions.shape == (len(rows), H, D)
    # a leading boa is accepted; other lengths decode too
    assert fast.decode(np.concatenate([[fast.boa_id], good])).valid
    assert fast.decode(good[: n + 1]).valid
    assert not fast.decode(np.zeros(0, dtype=np.int64)).valid
    rng = np.random.default_rng(0)
    garbage = fast.decode(rng.integers(-3, fast.vocab_size + 3, size=(300, fast.num_slots)))
    assert np.isfinite(garbage.actions).all() and 0.9 < garbage.invalid_rate <= 1.0


def test_bins_malformed_sequences_decode_flagged(bins, heldout):
    good = bins.encode(heldout[:1])[0]
    special = good.copy()
    special[3] = bins.mask_id
    negative = good.copy()
    negative[0] = -1
    decoded = bins.decode(np.stack([special, negative]))
    assert not decoded.valid.any() and np.isfinite(decoded.actions).all()
    assert not bins.decode(good[:-1]).valid and not bins.decode(np.append(good, 0)).valid
    assert bins.decode(good).valid


# ---- save / load, determinism -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fast", "bins"])
def test_save_load_gives_identical_tokens(name, fast, bins, heldout, tmp_path):
    tok = {"fast": fast, "bins": bins}[name]
    tok.save(tmp_path / name)
    assert not list(tmp_path.rglob("*.pkl")) and (tmp_path / name / "action_tokenizer.json").is_file()
    loaded = load_action_tokenizer(tmp_path / name)
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert loaded.num_slots == tok.num_slots and loaded.special_ids == tok.special_ids
    tokens = tok.encode(heldout)
    np.testing.assert_array_equal(loaded.encode(heldout), tokens)
    np.testing.assert_array_equal(loaded.decode(tokens).actions, tok.decode(tokens).actions)
    np.testing.assert_array_equal(loaded.token_values(), tok.token_values())
    assert type(tok).load(tmp_path / name).num_slots == tok.num_slots


def test_fit_is_deterministic_for_a_seed(chunks, tmp_path):
    a = FastActionTokenizer(gripper_dims=GRIPPER, max_fit_chunks=1000, seed=3).fit(chunks)
    b = FastActionTokenizer(gripper_dims=GRIPPER, max_fit_chunks=1000, seed=3).fit(chunks)
    assert a.bpe.to_str() == b.bpe.to_str() and a.fit_stats == b.fit_stats
    np.testing.assert_array_equal(a.encode(chunks), b.encode(chunks))
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for name in ("action_tokenizer.json", "bpe_tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # another process (fresh hash seeds in Python and in the tokenizers library) fits the same BPE
    script = (
        "import sys; from dfm_vla.policy.action_tokenizer import FastActionTokenizer;"
        "from dfm_vla.policy.bench_tokenizers import smooth_random_chunks;"
        "x = smooth_random_chunks(2000, 10, 7, seed=0);"
        "FastActionTokenizer(gripper_dims=(6,), max_fit_chunks=1000, seed=3).fit(x).save(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], check=True, timeout=120)
    for name in ("action_tokenizer.json", "bpe_tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


# ---- bad input ----------------------------------------------------------------------------------------
def test_bad_input_errors_name_what_was_expected(fast, bins, chunks):
    for tok in (fast, bins):
        with pytest.raises(ValueError, match=r"chunks: expected shape \(N, 10, 7\)"):
            tok.encode(chunks[:, :, :6])  # wrong D
        with pytest.raises(ValueError, match=r"chunks: expected shape"):
            tok.encode(chunks[0, 0])  # wrong rank
        with pytest.raises(ValueError, match=r"chunks: expected shape \(N, 10, 7\)"):
            tok.encode(chunks[:, :8])  # wrong H
        nan = chunks[:2].copy()
        nan[1, 2, 3] = np.nan
        with pytest.raises(ValueError, match=r"chunks: expected finite values.*\[1, 2, 3\]"):
            tok.encode(nan)
        with pytest.raises(ValueError, match="tokens: expected an integer array"):
            tok.decode(np.zeros((2, tok.num_slots)))
        with pytest.raises(ValueError, match=r"tokens: expected shape \(N, L\)"):
            tok.decode(np.zeros((1, 2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="not fitted"):
        FastActionTokenizer().encode(chunks)
    with pytest.raises(ValueError, match="not fitted"):
        BinActionTokenizer().vocab_size  # noqa: B018
    with pytest.raises(ValueError, match=r"chunks: expected shape \(N, H, D\) to fit"):
        BinActionTokenizer().fit(chunks[0])
    with pytest.raises(ValueError, match="gripper_dims"):
        BinActionTokenizer(gripper_dims=(9,)).fit(chunks)
    with pytest.raises(ValueError, match="bpe_vocab_size: expected at least the coefficient alphabet"):
        FastActionTokenizer(bpe_vocab_size=16).fit(chunks)
    with pytest.raises(ValueError, match="num_bins"):
        BinActionTokenizer(num_bins=1)


def test_missing_or_corrupt_folder_errors(fast, bins, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a tokenizer folder"):
        load_action_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="action_tokenizer.json"):
        load_action_tokenizer(tmp_path)
    fast.save(tmp_path / "fast")
    (tmp_path / "fast" / "bpe_tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt BPE tokenizer file"):
        load_action_tokenizer(tmp_path / "fast")
    (tmp_path / "fast" / "bpe_tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="bpe_tokenizer.json"):
        load_action_tokenizer(tmp_path / "fast")
    bins.save(tmp_path / "bins")
    with pytest.raises(ValueError, match="expected a saved 'fast' tokenizer, found 'bins'"):
        FastActionTokenizer.load(tmp_path / "bins")
    path = tmp_path / "bins" / "action_tokenizer.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "kind": "wavelet"}))
    with pytest.raises(ValueError, match="'kind' expected one of"):
        load_action_tokenizer(tmp_path / "bins")
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "normalizer"}))
    with pytest.raises(ValueError, match="action_tokenizer.json: missing field 'normalizer'"):
        load_action_tokenizer(tmp_path / "bins")
    path.write_text("{")
    with pytest.raises(ValueError, match=r"action_tokenizer.json: corrupt or truncated \(1 bytes\)"):
        load_action_tokenizer(tmp_path / "bins")


# ---- bench command ------------------------------------------------------------------------------------
def test_bench_tokenizers_prints_and_writes_json(tmp_path, capsys):
    from dfm_vla.cli import main

    out = tmp_path / "bench.json"
    assert (
        main(["bench", "tokenizers", "--num-chunks", "400", "--heldout-chunks", "100", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    rows = {row["tokenizer"]: row for row in result["rows"]}
    assert set(rows) == {"fast", "bins"}
    assert rows["bins"]["num_slots"] == 70 and rows["bins"]["vocab_size"] == 260
    for row in rows.values():
        assert (
            row["round_trip_mae"] < 0.02 and row["encode_chunks_per_s"] > 0 and row["decode_chunks_per_s"] > 0
        )
        assert 0 <= row["truncation_rate"] < 0.05
    assert "fast" in capsys.readouterr().out
