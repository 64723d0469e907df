"""RemotePolicy's asynchronous (real-time) mode and the ``frozen`` prefix of plan requests, against a real
tiny DFM policy served on 127.0.0.1. The only stand-in is a backend whose plans take longer (a sleep) and
which records what the policy was asked and answered; everything else is the real server and client."""

import math
import threading
import time

import numpy as np
import pytest
import torch

from dfm_vla.agents.dfm_policy import DFMPolicy
from dfm_vla.serve.backend import PolicyBackend
from dfm_vla.serve.bench_serve import write_random_checkpoint
from dfm_vla.serve.client import BadRequestError, RemotePolicy
from dfm_vla.serve.server import PolicyServer, ServerConfig, ServerThread

STEPS = (3, 1)  # few DFM refinement steps: fast plans
CHUNK, EXECUTE, DIM = 8, 4, 7  # so the threshold d may be 1..4
DELAY_S = 0.3  # what the slow backend adds to every plan


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 cores shared with other work
    micro = dict(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    yield write_random_checkpoint(folder, horizon=CHUNK, execute_horizon=EXECUTE, action_dim=DIM, **micro)
    torch.set_num_threads(threads)


class SlowBackend(PolicyBackend):
    """The real backend over a real policy, planning ``delay_s`` slower; records each call's frozen prefix
    (None or (B, d, action_dim)), the chunks it returned and the states it planned from."""

    def __init__(self, policy, delay_s=DELAY_S):
        super().__init__(policy)
        self.delay_s = delay_s
        self.calls = []
        self._lock = threading.Lock()

    def plan(self, obs_list, env_indices, frozen_actions=None):
        time.sleep(self.delay_s)
        chunks, rows = super().plan(obs_list, env_indices, frozen_actions=frozen_actions)
        with self._lock:
            self.calls.append(
                {
                    "frozen": None if frozen_actions is None else np.array(frozen_actions),
                    "chunks": chunks.copy(),
                    "states": [np.array(o["state"]) for o in obs_list],
                }
            )
        return chunks, rows


def slow_server(tiny_dir, delay_s=DELAY_S, **config):
    backend = SlowBackend(DFMPolicy.from_pretrained(tiny_dir, seed=0, steps=STEPS), delay_s)
    server = ServerThread(PolicyServer(backend, ServerConfig(host="127.0.0.1", port=0, **config)))
    return server, backend


def obs_at(step, episode=0):
    """A distinct observation per step (its state names the step), so recorded plans can be matched."""
    return {"language": "open the top drawer", "state": np.full(8, 0.01 * step + episode, dtype=np.float32)}


def wait_until(condition, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_async_act_returns_at_once_while_the_next_chunk_is_planned(tiny_dir):
    period = 0.15  # 4 steps (0.6 s) of queued actions cover a 0.3 s plan: no stall after the first chunk
    srv, backend = slow_server(tiny_dir)
    with srv, RemotePolicy("127.0.0.1", srv.port, asynchronous=True, inference_delay=4) as remote:
        remote.reset()
        durations, actions = [], []
        for step in range(14):
            start = time.perf_counter()
            actions.append(remote.act(obs_at(step)))
            durations.append(time.perf_counter() - start)
            time.sleep(max(0.0, period - durations[-1]))
        stats = remote.realtime_stats
    assert all(a.shape == (DIM,) and a.dtype == np.float32 for a in actions)
    assert durations[0] >= DELAY_S  # the episode's first chunk: nothing queued yet, so act waited
    assert max(durations[1:]) < 0.1, durations  # a request was in flight all along, act never waited
    assert stats["stalls"] == 1 and stats["requests"] >= 4, stats
    assert stats["round_trip_ms"] >= 1e3 * DELAY_S and 1 <= stats["splice_index"] <= 4
    assert stats["seam_jump"] is not None and stats["inference_delay"] == 4
    assert len(backend.calls) >= 4 and all(c["frozen"] is not None for c in backend.calls[1:])

    # Without inference_delay the threshold is estimated: ceil(latency / period), within 1..4.
    srv, _ = slow_server(tiny_dir, delay_s=0.2)
    with srv, RemotePolicy("127.0.0.1", srv.port, asynchronous=True) as remote:
        assert remote.realtime_stats["inference_delay"] == 4  # nothing measured yet: the safe end
        for step in range(8):
            remote.act(obs_at(step))
            time.sleep(0.1)
        stats = remote.realtime_stats
    assert stats["latency_ms"] >= 200 and 100 <= stats["period_ms"] < 150, stats
    assert stats["inference_delay"] == min(4, max(1, math.ceil(stats["latency_ms"] / stats["period_ms"])))


def test_the_reply_is_spliced_at_the_step_it_arrives_and_the_frozen_prefix_is_kept(tiny_dir):
    d = 2
    srv, backend = slow_server(tiny_dir)
    with srv, RemotePolicy("127.0.0.1", srv.port, asynchronous=True, inference_delay=d) as remote:
        remote.reset()
        served = [remote.act(obs_at(0))]  # waits for chunk 0 (planned from step 0's observation)
        c0 = backend.calls[0]["chunks"][0]
        assert backend.calls[0]["frozen"] is None and remote.realtime_stats["splice_index"] == 0
        assert not remote.needs_plan  # 3 left: the next act sends nothing (reads no observation)
        served.append(remote.act(obs_at(1)))
        assert remote.needs_plan and remote.realtime_stats["requests"] == 1  # 2 left: the next act sends
        served.append(remote.act(obs_at(2)))  # 2 left = d: step 2's observation goes out, 1 served since
        assert remote.realtime_stats["requests"] == 2 and remote.realtime_stats["frozen"] == d
        wait_until(lambda: remote.needs_plan)  # the reply arrived (needs_plan: the next act splices it)
        served.append(remote.act(obs_at(3)))  # spliced with k = 1: the new queue is chunk 1 [1:5]
        c1 = backend.calls[1]["chunks"][0]
        assert remote.realtime_stats["splice_index"] == 1
        served += [remote.act(obs_at(s)) for s in (4, 5, 6)]  # step 5: 2 left, the next request goes out
        served.append(remote.act(obs_at(7)))  # queue empty: waits (a stall), spliced with k = 2
        c2 = backend.calls[2]["chunks"][0]
        stats = remote.realtime_stats
    np.testing.assert_array_equal(np.stack(served[:3]), c0[:3])
    np.testing.assert_array_equal(np.stack(served[3:7]), c1[1:5])
    np.testing.assert_array_equal(served[7], c2[2])
    assert stats["splice_index"] == 2 and stats["stalls"] == 2 and stats["requests"] == 3
    assert stats["seam_jump"] == pytest.approx(float(np.max(np.abs(c2[2] - c1[4]))))
    # The plans were made from the observations of the steps they start at (chunk slot 0).
    assert [float(c["states"][0][0]) for c in backend.calls] == pytest.approx([0.0, 0.02, 0.05])

    # Frozen prefix: each request carried the d queued actions still to run, and the policy kept them as
    # its chunk's first d steps (a bins tokenizer re-encodes its own decoded actions exactly).
    np.testing.assert_array_equal(backend.calls[1]["frozen"][0], c0[2:4])
    np.testing.assert_array_equal(backend.calls[2]["frozen"][0], c1[3:5])
    np.testing.assert_allclose(c1[:d], c0[2:4], atol=1e-5)
    np.testing.assert_allclose(c2[:d], c1[3:5], atol=1e-5)


def test_reset_discards_the_reply_in_flight(tiny_dir):
    srv, backend = slow_server(tiny_dir)
    with srv, RemotePolicy("127.0.0.1", srv.port, asynchronous=True, inference_delay=2) as remote:
        remote.reset()
        for step in range(3):  # the third act sends a request, whose reply is 0.3 s away
            remote.act(obs_at(step))
        assert remote.realtime_stats["in_flight"]
        remote.reset(seed=5)  # waits the stale plan out; its reply must never be served
        assert len(backend.calls) == 2 and not remote.realtime_stats["in_flight"] and remote.needs_plan
        first = remote.act(obs_at(0, episode=1))
        fresh = backend.calls[2]
        stats = remote.realtime_stats
    assert fresh["frozen"] is None and float(fresh["states"][0][0]) == 1.0  # the new episode's observation
    np.testing.assert_array_equal(first, fresh["chunks"][0][0])
    assert stats["splice_index"] == 0 and stats["requests"] == 3 and stats["seam_jump"] is None


def test_bad_frozen_prefixes_and_bad_arguments_are_refused_by_name(tiny_dir):
    srv, _ = slow_server(tiny_dir, delay_s=0.0)
    with srv, RemotePolicy("127.0.0.1", srv.port) as remote:
        assert remote.metadata["frozen_prefix"] is True
        obs = obs_at(0)
        good = np.zeros((2, DIM), np.float32)
        bad = [
            (np.zeros((2, DIM - 2)), r"frozen: expected shape \(d, 7\), got \(2, 5\)"),
            (np.zeros((1, 2, DIM)), r"frozen: expected shape \(d, 7\)"),
            (np.zeros((CHUNK, DIM)), r"frozen: expected 1 <= d < 8"),
            (np.zeros((0, DIM)), r"frozen: expected 1 <= d < 8"),
            (np.where(np.eye(2, DIM) > 0, np.nan, 0.0), r"frozen: contains NaN"),
            ("two steps", r"frozen: expected a numeric array"),
        ]
        for frozen, message in bad:
            with pytest.raises(BadRequestError, match=message):
                remote.plan(obs, frozen=frozen)
        chunk = remote.plan(obs, frozen=good)  # the connection stays usable
        assert chunk.shape == (CHUNK, DIM)
        np.testing.assert_allclose(chunk[:2], remote.plan(obs, frozen=chunk[:2])[:2], atol=1e-5)

        port = srv.port
        for kwargs, message in [
            (dict(inference_delay=0), r"inference_delay: expected >= 1"),
            (dict(inference_delay=5), r"inference_delay: expected 1 <= inference_delay <= execute_horizon"),
            (dict(inference_delay=2.5), r"inference_delay: expected an int"),
        ]:
            with pytest.raises(ValueError, match=message):
                RemotePolicy("127.0.0.1", port, asynchronous=True, **kwargs)
        with pytest.raises(ValueError, match="inference_delay: only used with asynchronous=True"):
            RemotePolicy("127.0.0.1", port, inference_delay=2)
        with RemotePolicy("127.0.0.1", port, asynchronous=True, inference_delay=2) as realtime:
            with pytest.raises(ValueError, match="act_batch: not available"):
                realtime.act_batch([obs, obs])
            # A request that fails in the background raises from the act that meets its reply; the
            # queued actions stay, and the next act sends again.
            realtime.act(obs)
            realtime.act(obs)
            realtime.act({**obs, "state": np.full(8, np.nan)})  # 2 left: this observation goes out
            wait_until(lambda: realtime.needs_plan)
            with pytest.raises(BadRequestError, match=r"obs\['state'\]: contains NaN"):
                realtime.act(obs)
            assert realtime.act(obs).shape == (DIM,) and realtime.realtime_stats["requests"] == 3

    # d + execute_horizon must fit in the chunk: with 5 of 8 executed, d = 4 would splice beyond it.
    policy = DFMPolicy.from_pretrained(tiny_dir, seed=0, steps=STEPS, execute_horizon=5)
    with ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0))) as srv:
        with pytest.raises(
            ValueError, match=r"inference_delay \+ execute_horizon \(5\) <= chunk_length \(8\)"
        ):
            RemotePolicy("127.0.0.1", srv.port, asynchronous=True, inference_delay=4)
        with RemotePolicy("127.0.0.1", srv.port, asynchronous=True) as remote:
            assert remote.realtime_stats["inference_delay"] == 3  # the estimate's upper end: 8 - 5


def test_plans_with_different_frozen_lengths_never_share_a_model_call(tiny_dir):
    # A long window: with four clients connected, the first plan waits for the other three to join.
    srv, backend = slow_server(tiny_dir, delay_s=0.0, batch_window_ms=2000.0)
    with srv:
        clients = [RemotePolicy("127.0.0.1", srv.port) for _ in range(4)]
        frozen = [None, np.zeros((2, DIM)), np.full((2, DIM), 0.1), np.zeros((3, DIM))]
        chunks = [None] * 4

        def run(i):
            chunks[i] = clients[i].plan(obs_at(i), frozen=frozen[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        for c in clients:
            c.close()
    assert all(c is not None and c.shape == (CHUNK, DIM) for c in chunks)
    groups = sorted(
        (0 if c["frozen"] is None else c["frozen"].shape[1], len(c["chunks"])) for c in backend.calls
    )
    assert groups == [(0, 1), (2, 2), (3, 1)]  # the two d = 2 plans shared one call, nothing else did
    for i in (1, 2, 3):
        np.testing.assert_allclose(chunks[i][: len(frozen[i])], frozen[i], atol=0.07)  # within a bin


class NoFrozenBackend(PolicyBackend):
    """A policy that cannot keep a frozen prefix (as an older DFMPolicy, or one over FAST tokens)."""

    def supports_frozen(self):
        return False


def test_a_server_without_frozen_prefixes_says_so_and_old_style_clients_still_work(tiny_dir):
    backend = NoFrozenBackend(DFMPolicy.from_pretrained(tiny_dir, seed=0, steps=STEPS))
    with ServerThread(PolicyServer(backend, ServerConfig(host="127.0.0.1", port=0))) as srv:
        with RemotePolicy("127.0.0.1", srv.port) as remote:
            assert remote.metadata["frozen_prefix"] is False
            with pytest.raises(BadRequestError, match="frozen: this server's policy cannot keep"):
                remote.plan(obs_at(0), frozen=np.zeros((2, DIM)))
            assert remote.plan(obs_at(0)).shape == (CHUNK, DIM) and remote.act(obs_at(0)).shape == (DIM,)
        with pytest.raises(ValueError, match="freeze_prefix: the server's policy cannot keep"):
            RemotePolicy("127.0.0.1", srv.port, asynchronous=True)
        with RemotePolicy("127.0.0.1", srv.port, asynchronous=True, freeze_prefix=False) as remote:
            assert [remote.act(obs_at(s)).shape for s in range(6)] == [(DIM,)] * 6
            assert remote.realtime_stats["requests"] >= 2 and remote.realtime_stats["frozen"] == 0
