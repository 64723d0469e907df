"""The policy server and RemotePolicy, against a real tiny DFM policy on 127.0.0.1 (no mocks)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.serve.backend import checkpoint_id
from dfm_vla.serve.bench_serve import write_random_checkpoint
from dfm_vla.serve.client import BadRequestError, RemotePolicy, example_observation, health
from dfm_vla.serve.msgpack_numpy import FrameError, packb, unpackb
from dfm_vla.serve.server import PolicyServer, ServerConfig, ServerThread

STEPS = (3, 1)  # DFM refinement steps: fewer than the default 14 + 2, to keep the tests fast


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 cores shared with other work: more threads only spin
    small = dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    yield write_random_checkpoint(folder, horizon=6, execute_horizon=4, **small)
    torch.set_num_threads(threads)


def load(tiny_dir, seed=0):
    return DFMPolicy.from_pretrained(tiny_dir, seed=seed, steps=STEPS)


def observations(n, seed):
    rng = np.random.default_rng(seed)
    words = ["put the bowl on the stove", "open the top drawer", "turn on the stove"]
    return [{"language": words[i % 3], "state": rng.normal(size=8)} for i in range(n)]


def serve(policy, **config):
    return ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0, **config)))


def test_codec_round_trips_arrays_and_rejects_bad_frames():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.uint8(3), "x"], "c": np.array([True])}
    back = unpackb(packb(msg))
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], msg["a"])
    assert back["b"] == [3, "x"] and back["c"].dtype == bool
    short = msgpack.packb({"__ndarray__": True, "dtype": "<f4", "shape": [3], "data": b"12"})
    with pytest.raises(FrameError, match="needs 12 bytes, got 2"):
        unpackb(short)
    pickled = msgpack.packb({"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"12345678"})
    with pytest.raises(FrameError, match="not allowed"):
        unpackb(pickled)
    with pytest.raises(FrameError, match="not a msgpack frame"):
        unpackb(b"\xc1")
    with pytest.raises(TypeError, match="dtype object"):
        packb(np.array([object()]))


def test_client_imports_neither_torch_nor_the_server():
    code = (
        "import sys, dfm_vla.serve.client as c; print({'torch', 'dfm_vla.serve.server'} & set(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "set()", out.stdout + out.stderr


def test_served_policy_gives_the_in_process_actions_for_the_same_seed(tiny_dir):
    obs = observations(10, seed=1)
    ref = load(tiny_dir, seed=0)
    expected = [ref.act(o) for o in obs]
    ref.reset(seed=3)
    expected_reseeded = [ref.act(o) for o in obs[:5]]
    ref_batch = load(tiny_dir, seed=0)
    expected_batch, expected_flags = [], []
    for i in range(0, 10, 2):  # two envs; after the first, each act_batch plans for neither or both
        expected_batch.append(ref_batch.act_batch(obs[i : i + 2]))
        expected_flags.append(ref_batch.needs_plan_batch(2))

    server_policy = load(tiny_dir, seed=0)
    config = dict(checkpoint_id=checkpoint_id(tiny_dir))
    with serve(server_policy, **config) as srv, RemotePolicy("127.0.0.1", srv.port) as remote:
        meta = remote.metadata
        assert (meta["action_dim"], meta["chunk_length"], meta["execute_horizon"]) == (7, 6, 4)
        assert set(meta["observation"]) == {"language", "state"} and meta["observation"]["state"][
            "shape"
        ] == [8]
        assert meta["checkpoint_id"].startswith("tiny-") and remote.uses_images is False

        assert remote.needs_plan
        got = []
        for o in obs:
            planning = remote.needs_plan
            # Extra keys never reach the wire, and a queued step reads no observation (as in process):
            # a rollout renders cameras only when the policy plans.
            got.append(remote.act({**o, "debug": object()} if planning else {"not": "read"}))
            assert (remote.last_plan is not None) and planning == (
                remote.last_timing.get("model_ms") is not None
            )
        np.testing.assert_array_equal(np.stack(got), np.stack(expected))
        assert got[0].shape == (7,) and got[0].dtype == np.float32
        plan = remote.last_plan
        assert plan["model_calls"] == sum(STEPS) and len(plan["changed_per_step"]) == sum(STEPS)
        assert plan["refine_ms"] > 0 and plan["prefix_ms"] > 0 and plan["server_ms"] >= plan["total_ms"] > 0

        remote.reset(seed=3)
        np.testing.assert_array_equal(np.stack([remote.act(o) for o in obs[:5]]), np.stack(expected_reseeded))
        # A whole chunk on request; act_batch keeps one queue per env, as in process.
        assert remote.plan(obs[0]).shape == (6, 7)

    with serve(load(tiny_dir, seed=0)) as srv, RemotePolicy("127.0.0.1", srv.port) as remote:
        assert remote.needs_plan_batch(2) == [True, True]
        for i, want, flags in zip(range(0, 10, 2), expected_batch, expected_flags, strict=True):
            np.testing.assert_array_equal(remote.act_batch(obs[i : i + 2]), want)
            assert remote.needs_plan_batch(2) == flags


def raw_request(ws, request):
    ws.send(request if isinstance(request, (bytes, str)) else packb(request))
    return unpackb(ws.recv(timeout=30))


def test_bad_input_gets_an_error_naming_the_problem_and_the_server_goes_on(tiny_dir):
    good = observations(1, seed=2)[0]
    policy = load(tiny_dir)
    with serve(policy) as srv, RemotePolicy("127.0.0.1", srv.port) as bystander:
        with connect(f"ws://127.0.0.1:{srv.port}", compression=None) as ws:
            assert unpackb(ws.recv(timeout=30))["type"] == "metadata"
            cases = [
                (b"\xc1\x00garbage", "malformed frame"),
                ("a text frame", "text frame"),
                (packb([1, 2, 3]), "must be a map with a 'type'"),
                ({"type": "fly", "id": 1}, "unknown request type 'fly'"),
                ({"type": "act", "id": 2, "obs": {"state": good["state"]}}, "obs['language']: missing"),
                (
                    {"type": "act", "id": 3, "obs": {**good, "state": np.zeros(5)}},
                    "obs['state']: expected shape (8,)",
                ),
                (
                    {"type": "act", "id": 4, "obs": {**good, "state": np.full(8, np.nan)}},
                    "obs['state']: contains NaN",
                ),
                (
                    {"type": "act", "id": 5, "obs": {**good, "language": "go " * 60}},
                    "the model accepts at most 32",
                ),
                ({"type": "act", "id": 6, "obs": [good, {**good, "state": "x"}]}, "obs[1]['state']"),
                ({"type": "reset", "id": 7, "seed": "zero"}, "seed: expected an int"),
            ]
            for request, message in cases:
                reply = raw_request(ws, request)
                assert reply["type"] == "error" and reply["kind"] == "bad_request", (request, reply)
                assert message in reply["error"], (message, reply["error"])
            reply = raw_request(ws, {"type": "act", "id": 8, "obs": good})  # the next good request succeeds
            assert reply["type"] == "actions" and reply["id"] == 8 and reply["actions"].shape == (1, 7)

        # Through the client: the same error as an exception, and the connection stays usable.
        with pytest.raises(BadRequestError, match=r"obs\['state'\]: contains NaN"):
            bystander.act({**good, "state": np.full(8, np.inf)})
        assert bystander.act(good).shape == (7,)

        # A client that vanishes while its plan is running: nobody to answer, everyone else goes on.
        with connect(f"ws://127.0.0.1:{srv.port}", compression=None) as ws:
            ws.recv(timeout=30)
            ws.send(packb({"type": "plan", "id": 1, "obs": good}))
        assert bystander.plan(good).shape == (6, 7)
        status = health("127.0.0.1", srv.port)
        assert status["status"] == "ok" and status["errors"] >= 11


def test_two_clients_keep_separate_chunk_queues(tiny_dir):
    obs_a, obs_b = observations(9, seed=3), observations(9, seed=4)
    ref_a, ref_b = load(tiny_dir, seed=0), load(tiny_dir, seed=0)
    expected_a = [ref_a.act(o) for o in obs_a]
    expected_b = [ref_b.act(o) for o in obs_b]
    # A long window: while both clients are connected, a plan waits (up to 1 s) for the other to join.
    with serve(load(tiny_dir, seed=0), batch_window_ms=1000.0) as srv:
        a, b = RemotePolicy("127.0.0.1", srv.port), RemotePolicy("127.0.0.1", srv.port)
        got = {"a": [], "b": []}
        batch_sizes = {"a": [], "b": []}

        def run(name, client, obs):
            for o in obs:
                got[name].append(client.act(o))
                if "batch_size" in client.last_timing:
                    batch_sizes[name].append(client.last_timing["batch_size"])

        threads = [threading.Thread(target=run, args=x) for x in (("a", a, obs_a), ("b", b, obs_b))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        np.testing.assert_array_equal(np.stack(got["a"]), np.stack(expected_a))
        np.testing.assert_array_equal(np.stack(got["b"]), np.stack(expected_b))
        assert max(batch_sizes["a"] + batch_sizes["b"]) == 2  # their plans did share model calls

        # One client's reset or extra steps leave the other's queue alone.
        a.reset()
        assert a.needs_plan and not b.needs_plan  # b is 1 action into its third chunk
        assert a.act(obs_a[0]).shape == (7,)
        np.testing.assert_array_equal(b.act(obs_b[0]), ref_b.act(obs_b[0]))
        a.close()
        b.close()


def test_health_answers_without_the_model(tiny_dir):
    policy = load(tiny_dir)
    with serve(policy, checkpoint_id="tiny-test") as srv:
        before = policy.num_plans
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            status = json.loads(response.read())
        assert status["status"] == "ok" and status["checkpoint_id"] == "tiny-test" and status["clients"] == 0
        assert policy.num_plans == before == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_runs_and_stops_on_ctrl_c_or_sigterm(stop_signal, tiny_dir, repo_root):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "cli.py", "serve", "--policy", str(tiny_dir), "--port", str(port), "--threads", "1"],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status = health("127.0.0.1", port, timeout_s=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert status["checkpoint_id"] == checkpoint_id(tiny_dir)
        with RemotePolicy("127.0.0.1", port) as remote:
            obs = example_observation(remote.metadata["observation"])
            assert remote.act(obs).shape == (7,)
    finally:
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "serving tiny-" in out and f"listening on ws://127.0.0.1:{port}" in out and "stopped" in out


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_bench_serve_reports_each_setting(repo_root, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "cli.py", "bench", "serve", "--clients", "1,4", "--requests", "12",
           "--seconds", "20", "--threads", "1", "--json", str(out)]  # fmt: skip
    res = subprocess.run(
        cmd, cwd=repo_root, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.read_text())
    settings = {(r["batching"], r["clients"]) for r in result["rows"]}
    assert settings == {("on", 1), ("on", 4), ("off", 1), ("off", 4)}
    for row in result["rows"]:
        assert row["errors"] == 0 and 0 < row["requests"] <= 12 and row["requests_per_s"] > 0
        assert row["p99_ms"] >= row["p50_ms"] > 0
    off4 = next(r for r in result["rows"] if r["batching"] == "off" and r["clients"] == 4)
    assert off4["mean_batch"] == 1.0
