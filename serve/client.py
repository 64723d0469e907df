"""``RemotePolicy``: a policy served by ``python cli.py serve``, used like an in-process ``DFMPolicy``.

    from dfm_vla.serve.client import RemotePolicy

    policy = RemotePolicy("gpu-box", 8000)
    policy.reset()
    action = policy.act({"language": "open the drawer", "state": state})  # (action_dim,) float32

Depends on numpy, msgpack and websockets only: importing this module never imports torch, so a robot or
an old simulator environment can use it. The chunk queue and the episode live on the server, one per
connection, exactly as ``DFMPolicy`` keeps them in process; ``plan(obs)`` returns a whole chunk instead,
for clients that execute chunks themselves.

Real-time execution (``RemotePolicy(..., asynchronous=True)``, see :mod:`dfm_vla.serve.async_client`):
the client keeps the queue, ``act`` returns at once from it, and the next chunk is planned (``plan``
requests, in a background thread) while the robot keeps moving; the queued actions that still run
meanwhile go along as ``frozen``, so the new chunk continues them. ``realtime_stats`` reports requests,
stalls, the last splice index, the round trip and the seam jump.

Protocol (version 1; each frame a msgpack map, arrays as in :mod:`dfm_vla.serve.msgpack_numpy`). On
connect the server sends ``{"type": "metadata", "protocol", "action_dim", "chunk_length",
"execute_horizon", "observation": {key: {"dtype", "shape"}}, "decoder", "checkpoint_id", "seed",
"batching", "frozen_prefix"}`` (``frozen_prefix``: whether plan requests may carry ``frozen``; absent
from older servers, which means no). Then each request gets one reply carrying the request's ``id``:

- ``{"type": "act", "id", "obs": map | [map, ...]}`` -> ``{"type": "actions", "actions": (B, action_dim)
  float32, "needs_plan": [bool] * B, "planned": [bool] * B, "episode", "step", "timing"}`` plus ``"plan"``
  (decoder, valid, changed_per_step, model_calls) when an env planned. Env i of a client keeps its own
  queue; only the observations of envs that plan are read.
- ``{"type": "plan", "id", "obs": map, "frozen"?: (d, action_dim) float32}`` -> ``{"type": "chunk",
  "chunk": (chunk_length, action_dim), "plan", "timing"}``; queues untouched. ``frozen`` (optional,
  1 <= d < chunk_length, finite): actions the client executes while the server plans; the chunk's first
  d steps are those actions (up to the action tokenizer's quantisation) and the rest continues them.
  The chunk's step 0 is the step of ``obs``.
- ``{"type": "reset", "id", "seed"?: int}`` -> ``{"type": "reset", "episode", "seed"}``.
- ``{"type": "metadata", "id"}`` -> the metadata again.
- anything wrong -> ``{"type": "error", "kind": "bad_request" | "internal", "id", "error": "..."}``.

``timing`` (ms): ``server_ms`` (receipt to reply) always; when a chunk was planned also ``queue_ms``
(waiting for a batch), ``model_ms`` (the batch's planning call), ``prefix_ms``, ``refine_ms``,
``decode_ms`` and ``batch_size``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from dfm_vla.serve.async_client import RealtimeQueue, check_inference_delay
from dfm_vla.serve.msgpack_numpy import packb, unpackb

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 64 * 2**20


class ServerError(RuntimeError):
    """The server could not answer a request (its message says why)."""


class BadRequestError(ServerError, ValueError):
    """The server refused a request: a bad observation or a malformed message. The connection stays usable."""


class RemotePolicy:
    """A client of the policy server with ``DFMPolicy``'s interface: ``act``, ``act_batch``, ``reset``,
    ``needs_plan`` and ``last_plan``.

    Args:
        host, port: where ``python cli.py serve`` listens.
        timeout_s: the longest wait for one reply.
        connect_timeout_s: the longest wait for the connection and the server's metadata.
        asynchronous: real-time mode (:mod:`dfm_vla.serve.async_client`): the client keeps the action
            queue, ``act`` returns at once while the next chunk is planned in the background, and waits
            only when the queue ran dry (a stall, counted in :attr:`realtime_stats`).
        inference_delay: (asynchronous) request the next chunk when this many actions are left, in
            control steps; 1 <= d <= execute_horizon and d + execute_horizon <= chunk_length. None:
            estimated as ceil(round trip / control period) from measurements, within those bounds.
        freeze_prefix: (asynchronous) send the queued actions that run while the server plans as the
            request's ``frozen`` prefix, so the new chunk continues them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        asynchronous: bool = False,
        inference_delay: int | None = None,
        freeze_prefix: bool = True,
    ) -> None:
        if inference_delay is not None and not asynchronous:
            raise ValueError("inference_delay: only used with asynchronous=True")
        check_inference_delay(inference_delay)  # its bounds once the server's metadata is in
        self.host, self.port, self.timeout_s = host, int(port), timeout_s
        self.asynchronous = bool(asynchronous)
        self._lock = threading.Lock()  # one thread at a time on the connection (asynchronous mode has two)
        self._realtime: RealtimeQueue | None = None
        self._stack = contextlib.ExitStack()  # closes the connection in close()
        try:
            self._ws = self._stack.enter_context(
                connect(
                    f"ws://{host}:{self.port}",
                    open_timeout=connect_timeout_s,
                    compression=None,  # arrays barely compress; deflate would cost more CPU than it saves
                    max_size=max_frame_bytes,
                )
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"no policy server at ws://{host}:{self.port} ({exc}); start one with "
                f"`python cli.py serve --policy DIR --port {self.port}`"
            ) from exc
        first = unpackb(self._ws.recv(timeout=connect_timeout_s))
        if not isinstance(first, dict) or first.get("type") != "metadata":
            self.close()
            raise ServerError(f"expected the server's metadata first, got {first!r:.200}")
        if first.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise ServerError(
                f"server speaks protocol {first.get('protocol')}, this client {PROTOCOL_VERSION}"
            )
        self.metadata: dict[str, Any] = first
        self._next_id = 0
        self._needs_plan_per_env: list[bool] = []  # from the last reply; unknown envs need a plan
        # The last plan as DFMPolicy.last_plan reports it (changed_per_step, valid, prefix_ms, refine_ms,
        # decode_ms, total_ms, model_calls), plus the server's queue_ms, model_ms, batch_size, server_ms.
        self.last_plan: dict[str, Any] | None = None
        self.last_timing: dict[str, float] = {}  # server timing of the last reply, ms
        if self.asynchronous:
            try:
                self._realtime = self._start_realtime(inference_delay, freeze_prefix)
            except ValueError:
                self.close()
                raise

    def _start_realtime(self, inference_delay: int | None, freeze_prefix: bool) -> RealtimeQueue:
        check_inference_delay(inference_delay, self.chunk_length, self.execute_horizon)
        if freeze_prefix and not self.metadata.get("frozen_prefix", False):
            raise ValueError(
                "freeze_prefix: the server's policy cannot keep a frozen prefix (metadata frozen_prefix is "
                "not true); pass freeze_prefix=False, or serve a policy whose plan takes frozen_actions"
            )
        return RealtimeQueue(
            self._request_chunk,
            lambda obs: self._wire_obs(obs, True),
            chunk_length=self.chunk_length,
            execute_horizon=self.execute_horizon,
            action_dim=self.action_dim,
            inference_delay=inference_delay,
            freeze_prefix=freeze_prefix,
        )

    # ------------------------------------------------------------------ what the server serves

    @property
    def action_dim(self) -> int:
        return int(self.metadata["action_dim"])

    @property
    def chunk_length(self) -> int:
        return int(self.metadata["chunk_length"])

    @property
    def execute_horizon(self) -> int:
        return int(self.metadata["execute_horizon"])

    @property
    def uses_images(self) -> bool:
        """True when the served model reads camera images (a rollout renders them only when planning)."""
        return "images" in self.metadata["observation"]

    @property
    def needs_plan(self) -> bool:
        """True when the next ``act`` makes the server plan a new chunk (its queue for us is empty). In
        asynchronous mode: when the next ``act`` may send its observation (a request goes out)."""
        if self._realtime is not None:
            return self._realtime.needs_observation
        return self._needs_plan_per_env[0] if self._needs_plan_per_env else True

    @property
    def realtime_stats(self) -> dict[str, Any]:
        """Asynchronous mode, counted per client: ``requests``, ``stalls`` (act calls that waited, episode
        starts included) and ``stall_ms``, ``splice_index`` (k: the last new queue began at chunk[k]),
        ``round_trip_ms`` (the last request's), ``seam_jump`` (max over dims of |first action of the last
        spliced chunk - the action served before it|), ``frozen`` (steps sent with the last request),
        ``inference_delay`` (the threshold now), ``latency_ms`` (the round trip it assumes: the slowest
        of the last few), ``period_ms`` (measured control period), ``in_flight``.
        Empty in synchronous mode."""
        return self._realtime.snapshot_stats() if self._realtime is not None else {}

    def needs_plan_batch(self, num_envs: int) -> list[bool]:
        """Per env, whether the next :meth:`act_batch` over ``num_envs`` envs plans for it."""
        known = self._needs_plan_per_env
        return [known[i] if i < len(known) else True for i in range(num_envs)]

    # ------------------------------------------------------------------ the policy interface

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: the server drops this client's queued actions (and reseeds, if ``seed``).
        Asynchronous mode: the client's queue is dropped too, and a reply still in flight is waited for and
        discarded (never served in the new episode)."""
        if self._realtime is not None:
            self._realtime.reset()
        request: dict[str, Any] = {"type": "reset"}
        if seed is not None:
            request["seed"] = int(seed)
        self._request(request)
        self._needs_plan_per_env = []
        self.last_plan = None

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The next action, (action_dim,) float32; the server plans a new chunk when the queue is empty.
        Asynchronous mode: from the client's queue, without waiting while a plan is in flight."""
        if self._realtime is not None:
            return self._realtime.act(obs)
        reply = self._request({"type": "act", "obs": self._wire_obs(obs, self.needs_plan)})
        self._needs_plan_per_env[:1] = [bool(reply["needs_plan"][0])]
        return np.array(reply["actions"][0])

    def act_batch(self, obs_list: list[dict[str, Any]]) -> np.ndarray:
        """One action for each of ``B`` environments, (B, action_dim); env ``i`` keeps its own queue."""
        if self._realtime is not None:
            raise ValueError("act_batch: not available with asynchronous=True (one env per client there)")
        if not isinstance(obs_list, (list, tuple)) or not obs_list:
            raise ValueError(
                f"obs_list: expected a non-empty list of observation dicts, got {obs_list!r:.80}"
            )
        needs = self.needs_plan_batch(len(obs_list))
        reply = self._request(
            {"type": "act", "obs": [self._wire_obs(o, n) for o, n in zip(obs_list, needs, strict=True)]}
        )
        self._needs_plan_per_env = [bool(x) for x in reply["needs_plan"]]
        return np.array(reply["actions"])

    def plan(self, obs: dict[str, Any], frozen: np.ndarray | None = None) -> np.ndarray:
        """A whole chunk for ``obs``, (chunk_length, action_dim), for clients that execute chunks themselves
        (the first ``execute_horizon`` rows are what ``act`` would serve). Leaves the server's queue alone.
        ``frozen`` (d, action_dim): actions that run while the server plans; the chunk starts with them."""
        return np.array(self._request(self._plan_request(self._wire_obs(obs, True), frozen))["chunk"])

    @staticmethod
    def _plan_request(wire_obs: Any, frozen: np.ndarray | None) -> dict[str, Any]:
        request: dict[str, Any] = {"type": "plan", "obs": wire_obs}
        if frozen is not None:
            request["frozen"] = np.asarray(frozen, dtype=np.float32) if _is_numeric(frozen) else frozen
        return request

    def _request_chunk(self, wire_obs: Any, frozen: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Asynchronous mode, in the background thread: one plan request; the chunk and the round trip."""
        start = time.perf_counter()
        chunk = np.array(self._request(self._plan_request(wire_obs, frozen))["chunk"])
        return chunk, (time.perf_counter() - start) * 1e3

    def _wire_obs(self, obs: Any, planning: bool) -> Any:
        """What goes on the wire: the keys (and image views) the model reads, and nothing at all for an env
        whose next action is already queued on the server (which reads no observation then)."""
        if not isinstance(obs, dict):
            return obs  # the server names the problem
        if not planning:
            return {}
        spec = self.metadata["observation"]
        out = {}
        for key, want in spec.items():
            if key in obs:
                value = obs[key]
                if want["dtype"] == "dict" and isinstance(value, dict):
                    value = {view: value[view] for view in want["keys"] if view in value}
                out[key] = value
        return out

    # ------------------------------------------------------------------ plumbing

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:  # asynchronous mode: the background thread and the caller share the connection
            return self._request_locked(request)

    def _request_locked(self, request: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        request["id"] = request_id = self._next_id
        try:
            self._ws.send(packb(request))
            while True:
                reply = unpackb(self._ws.recv(timeout=self.timeout_s))
                if reply.get("id") == request_id:
                    break  # replies to requests abandoned after a timeout are skipped
        except TimeoutError as exc:
            raise TimeoutError(f"no reply from the policy server within {self.timeout_s} s") from exc
        except ConnectionClosed as exc:
            raise ConnectionError(f"the policy server at ws://{self.host}:{self.port} closed: {exc}") from exc
        if reply.get("type") == "error":
            cls = BadRequestError if reply.get("kind") == "bad_request" else ServerError
            raise cls(str(reply.get("error")))
        self.last_timing = dict(reply.get("timing", {}))
        if "plan" in reply:  # this request planned a chunk: DFMPolicy.last_plan's fields, plus server timing
            t = self.last_timing
            total = t.get("prefix_ms", 0.0) + t.get("refine_ms", 0.0) + t.get("decode_ms", 0.0)
            self.last_plan = {**reply["plan"], **t, "total_ms": total}
        return reply

    def close(self) -> None:
        self._stack.close()  # first: a background request waiting for its reply then fails at once
        if self._realtime is not None:
            self._realtime.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RemotePolicy(ws://{self.host}:{self.port}, checkpoint={self.metadata.get('checkpoint_id')!r}, "
            f"action_dim={self.action_dim})"
        )


def _is_numeric(value: Any) -> bool:
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (TypeError, ValueError):
        return False


def example_observation(obs_spec: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """A valid observation for a served ``obs_spec`` (``metadata["observation"]``): random state vectors,
    random images, the spec's example instruction. For smoke tests and load benchmarks."""
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {}
    for key, want in obs_spec.items():
        if want["dtype"] == "str":
            obs[key] = want.get("example", "pick up the object")
        elif want["dtype"] == "dict":
            obs[key] = example_observation(want["keys"], seed)
        else:
            shape = [n if n is not None else want.get("size_hint", 64) for n in want["shape"]]
            if want["dtype"] == "uint8":
                obs[key] = rng.integers(0, 256, size=shape, dtype=np.uint8)
            else:
                obs[key] = rng.standard_normal(shape).astype(want["dtype"])
    return obs


def health(host: str = "127.0.0.1", port: int = 8000, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET ``/healthz`` of a policy server: status, uptime, clients, requests (never touches the model)."""
    with urllib.request.urlopen(f"http://{host}:{int(port)}/healthz", timeout=timeout_s) as response:
        return json.loads(response.read().decode())
