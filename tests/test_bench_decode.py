"""`cli.py bench decode`: rows for AR, DD, DFM cold and warm-started, on a preset and on a policy folder."""

import json

import pytest
from test_agent import _save

from dfm_vla import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_decode_times_every_decoder_and_the_policys_own_decoding(tmp_path):
    policy = _save(tmp_path / "policy", "dfm")
    out = tmp_path / "bench.json"
    argv = ["bench", "decode", "--configs", "tiny", "--slots", "16", "--image-size", "16", "--repeats", "1"]
    argv += ["--threads", "1", "--warm-steps", "2,1", "--policy", str(policy), "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    calls = {(r["config"], r["method"]): r["model_calls"] for r in result["rows"]}
    assert calls[("tiny", "ar_kv_cache")] == 16 and calls[("tiny", "dfm_prefix_cache")] == 16
    assert calls[("tiny", "dfm_warm_prefix_cache")] == 3
    name = f"policy:{policy.name}"
    slots = 6 * 7  # the test policy: 6-step chunks of 7-d actions
    assert calls[(name, "ar_kv_cache")] == slots and calls[(name, "dfm_prefix_cache")] == 16
    assert calls[(name, "dfm_warm_prefix_cache")] == 4  # warm_start_steps 3 + 1 (config defaults)
    assert set(result["dfm_cached_vs_ar"]) == {"tiny", name}
    assert all(r["median_ms"] > 0 and r["speedup_vs_ar"] > 0 for r in result["rows"])
