"""``PolicyServer``: a policy over WebSocket for remote simulators and robots (``python cli.py serve``,
:mod:`dfm_vla.serve.command`; request checks and the policy interface: :mod:`dfm_vla.serve.backend`).

One asyncio event loop talks to every client; one worker thread runs the model. Requests that need a
new chunk are put on a queue; the batcher takes the first, waits up to ``batch_window_ms`` for others
(only while more clients are connected than are already in the batch), and plans them together in one
model call (``DFMPolicy.plan``, which plans a batch with one generator per env). So throughput grows
with the number of clients instead of queueing them one by one.

Per-client state lives here, not in the policy: each connection has its own chunk queue per env slot,
its episode counter and its step count; the policy's own queues are never used. Each slot also owns one
of the policy's per-env random generators (an env index from a pool), seeded with ``seed + slot`` as an
in-process ``DFMPolicy(seed=seed)`` seeds its envs 0, 1, ...: a client sees exactly the actions an
in-process policy would give it, whoever else is connected and however the batches fall.

Bad input never kills the server: a malformed frame, a missing or misshaped observation key, NaNs, an
unknown request type each get ``{"type": "error", "kind": "bad_request", "error": "..."}`` naming the
problem, and the connection stays usable; a client that disconnects mid-request is dropped from its
batch (or its reply discarded); every other client goes on. An observation that fails inside a batch
is re-planned alone, so one bad request cannot fail its neighbours.

A ``plan`` request may carry ``"frozen"`` (d, action_dim): actions the client will still execute while
the server plans (real-time chunking). The policy keeps them as the chunk's first d steps and plans the
rest around them (``DFMPolicy.plan(..., frozen_actions=)``). Plans with different frozen lengths (or
none) never share a model call; requests without ``frozen`` batch exactly as before.

Endpoints: ``ws://HOST:PORT/`` (the protocol, see :mod:`dfm_vla.serve.client`) and
``http://HOST:PORT/healthz`` (JSON: status, uptime, clients, requests; never touches the model).
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfm_vla.serve.backend import BadRequest, PolicyBackend, validate_frozen, validate_obs
from dfm_vla.serve.client import PROTOCOL_VERSION
from dfm_vla.serve.msgpack_numpy import FrameError, packb, unpackb

log = logging.getLogger("dfm_vla.serve")


@dataclass
class ServerConfig:
    """How the server listens and batches."""

    host: str = "127.0.0.1"  # "0.0.0.0" to accept other machines
    port: int = 8000  # 0: any free port (tests)
    batch_window_ms: float = 5.0  # after the first request, wait this long for others to join its batch
    max_batch: int = 16  # 1 turns batching off
    max_frame_bytes: int = 64 * 2**20
    checkpoint_id: str = ""


@dataclass
class _Slot:
    """One environment of one client: its queue of planned actions, each (action_dim,), and the policy
    env index whose random generator it draws from."""

    env_index: int
    queue: deque = field(default_factory=deque)
    steps: int = 0


@dataclass
class _Client:
    id: int
    address: str
    seed: int
    slots: dict[int, _Slot] = field(default_factory=dict)
    episode: int = 0
    requests: int = 0


@dataclass
class _PlanRequest:
    obs: dict[str, Any]
    env_index: int
    future: asyncio.Future
    client: _Client
    enqueued: float
    frozen: np.ndarray | None = None  # (d, action_dim) float32: the chunk's first d steps, kept fixed

    @property
    def group(self) -> int:
        """Requests batch together only within one group: the frozen length d (0: none)."""
        return 0 if self.frozen is None else len(self.frozen)


class PolicyServer:
    """Serves one policy to many clients, batching their plans; see the module docstring.

    policy: a ``DFMPolicy`` (wrapped in a :class:`PolicyBackend`) or a backend. seed: the base seed of every
    client's envs (default: the policy's). Use :meth:`serve_forever` from asyncio, or :class:`ServerThread`.
    """

    def __init__(self, policy: Any, config: ServerConfig | None = None, seed: int | None = None) -> None:
        self.backend = policy if isinstance(policy, PolicyBackend) else PolicyBackend(policy)
        self.config = config or ServerConfig()
        if self.config.max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {self.config.max_batch}")
        spec = self.backend.serving_spec()
        self.seed = int(spec.get("seed", 0) if seed is None else seed)
        self.obs_spec: dict[str, Any] = spec["observation"]
        self.metadata = {
            "type": "metadata",
            "protocol": PROTOCOL_VERSION,
            "action_dim": int(spec["action_dim"]),
            "chunk_length": int(spec["chunk_length"]),
            "execute_horizon": int(spec["execute_horizon"]),
            "observation": self.obs_spec,
            "decoder": spec.get("decoder", ""),
            "checkpoint_id": self.config.checkpoint_id,
            "seed": self.seed,
            "batching": {"window_ms": self.config.batch_window_ms, "max_batch": self.config.max_batch},
            "frozen_prefix": bool(spec.get("frozen_prefix", False)),  # plan requests may carry "frozen"
        }
        self.port: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfm-vla-model")
        self._clients: dict[int, _Client] = {}
        self._client_ids = itertools.count(1)
        self._free_env_indices: list[int] = []  # a pool, so the policy's per-env state stays bounded
        self._next_env_index = 0
        self._queue: asyncio.Queue[_PlanRequest] | None = None
        self._started = time.time()
        self.stats = {"requests": 0, "errors": 0, "batches": 0, "planned_obs": 0}

    # ------------------------------------------------------------------ lifecycle

    async def serve_forever(self, ready: threading.Event | None = None, stop: asyncio.Future | None = None):
        """Listen until ``stop`` resolves (or forever); sets ``self.port`` once bound, then ``ready``."""
        from websockets.asyncio.server import serve

        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batcher(), name="dfm-vla-batcher")
        try:
            async with serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                compression=None,  # arrays barely compress; deflate would cost more CPU than it saves
                max_size=self.config.max_frame_bytes,
                ping_interval=20,
                ping_timeout=60,  # a client busy stepping its simulator may answer pings late
            ) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                host = self.config.host
                log.info(
                    "listening on ws://%s:%d (health: http://%s:%d/healthz)", host, self.port, host, self.port
                )
                if ready is not None:
                    ready.set()
                await (stop if stop is not None else asyncio.get_running_loop().create_future())
        finally:
            batcher.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _process_request(self, connection, request):
        """The health endpoint: answered during the HTTP handshake, without the model."""
        if request.path.split("?")[0] != "/healthz":
            return None
        body = {
            "status": "ok",
            "uptime_s": round(time.time() - self._started, 3),
            "clients": len(self._clients),
            "checkpoint_id": self.config.checkpoint_id,
            "queued": self._queue.qsize() if self._queue is not None else 0,
            **self.stats,
        }
        response = connection.respond(http.HTTPStatus.OK, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # ------------------------------------------------------------------ one connection

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        client = _Client(next(self._client_ids), str(ws.remote_address), seed=self.seed)
        self._clients[client.id] = client
        log.info("client %d connected from %s", client.id, client.address)
        try:
            await ws.send(packb(self.metadata))
            async for frame in ws:
                reply = await self._dispatch(client, frame)
                await ws.send(packb(reply))
        except ConnectionClosed:
            pass  # gone mid-request: nothing to answer
        finally:
            del self._clients[client.id]
            self._free_env_indices.extend(slot.env_index for slot in client.slots.values())
            log.info("client %d left after %d requests", client.id, client.requests)

    async def _dispatch(self, client: _Client, frame: Any) -> dict[str, Any]:
        received = time.perf_counter()
        client.requests += 1
        self.stats["requests"] += 1
        request_id = None
        try:
            if isinstance(frame, str):
                raise BadRequest("expected a binary msgpack frame, got a text frame")
            try:
                msg = unpackb(frame)
            except FrameError as exc:
                raise BadRequest(f"malformed frame: {exc}") from exc
            if not isinstance(msg, dict) or "type" not in msg:
                raise BadRequest("a request must be a map with a 'type' (act, plan, reset or metadata)")
            request_id = msg.get("id")
            kind = msg["type"]
            if kind == "act":
                reply = await self._act(client, msg)
            elif kind == "plan":
                reply = await self._plan_one(client, msg)
            elif kind == "reset":
                reply = await self._reset(client, msg)
            elif kind == "metadata":
                reply = dict(self.metadata)
            else:
                raise BadRequest(f"unknown request type {kind!r}: expected act, plan, reset or metadata")
        except BadRequest as exc:
            self.stats["errors"] += 1
            return {"type": "error", "kind": "bad_request", "id": request_id, "error": str(exc)}
        except Exception as exc:  # the model failed: report it, keep serving
            self.stats["errors"] += 1
            log.exception("client %d: request failed", client.id)
            return {
                "type": "error",
                "kind": "internal",
                "id": request_id,
                "error": f"{type(exc).__name__}: {exc}",
            }
        reply["id"] = request_id
        reply.setdefault("timing", {})["server_ms"] = (time.perf_counter() - received) * 1e3
        return reply

    async def _slot(self, client: _Client, i: int) -> _Slot:
        """Env slot ``i`` of ``client``, given an env index of the policy seeded with ``client.seed + i``."""
        if i not in client.slots:
            index = self._free_env_indices.pop() if self._free_env_indices else self._next_env_index
            self._next_env_index = max(self._next_env_index, index + 1)
            client.slots[i] = _Slot(index)
            await self._in_model_thread(self.backend.seed_env, index, client.seed + i)
        return client.slots[i]

    async def _in_model_thread(self, fn, *args):
        """Run ``fn`` in the model thread: after any plan in flight, so it never races one."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _reset(self, client: _Client, msg: dict[str, Any]) -> dict[str, Any]:
        """New episode: drop queued actions; with ``seed``, slot i is re-seeded with ``seed + i``."""
        seed = msg.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise BadRequest(f"seed: expected an int, got {type(seed).__name__}")
        for slot in client.slots.values():
            slot.queue.clear()
            slot.steps = 0
        client.episode += 1
        if seed is not None:
            client.seed = seed
            for i, slot in client.slots.items():
                await self._in_model_thread(self.backend.seed_env, slot.env_index, seed + i)
        return {"type": "reset", "episode": client.episode, "seed": client.seed}

    def _obs_list(self, msg: dict[str, Any]) -> tuple[list[Any], bool]:
        obs = msg.get("obs")
        many = isinstance(obs, list)
        obs_list = obs if many else [obs]
        if not obs_list:
            raise BadRequest("obs: expected an observation map or a non-empty list of them")
        return obs_list, many

    def _checked(self, obs: Any, where: str) -> dict[str, Any]:
        """``obs`` checked against the spec and by the policy's own processor (its messages, key named)."""
        try:
            obs = validate_obs(obs, self.obs_spec)
            self.backend.check(obs)
        except ValueError as exc:  # BadRequest included
            text = str(exc)
            raise BadRequest(
                f"obs{where}{text[3:]}" if text.startswith("obs") else f"obs{where}: {text}"
            ) from None
        return obs

    async def _act(self, client: _Client, msg: dict[str, Any]) -> dict[str, Any]:
        """One action per env slot; slots whose queue ran out plan (only their observations are read)."""
        obs_list, many = self._obs_list(msg)
        slots = [await self._slot(client, i) for i in range(len(obs_list))]
        to_plan = [i for i, slot in enumerate(slots) if not slot.queue]
        checked = {i: self._checked(obs_list[i], f"[{i}]" if many else "") for i in to_plan}
        results = await asyncio.gather(
            *(self._submit(client, checked[i], slots[i].env_index) for i in to_plan)
        )
        for i, (chunk, _, _) in zip(to_plan, results, strict=True):
            slots[i].queue.extend(chunk[: self.metadata["execute_horizon"]])
        actions = np.stack([slot.queue.popleft() for slot in slots])
        for slot in slots:
            slot.steps += 1
        reply: dict[str, Any] = {
            "type": "actions",
            "actions": actions,
            "needs_plan": [not slot.queue for slot in slots],
            "planned": [i in to_plan for i in range(len(slots))],
            "episode": client.episode,
            "step": slots[0].steps,
        }
        if to_plan:
            _, reply["plan"], reply["timing"] = results[0]
        return reply

    async def _plan_one(self, client: _Client, msg: dict[str, Any]) -> dict[str, Any]:
        """A whole chunk (chunk_length, action_dim) for one observation; the queues are left alone. With
        ``frozen`` (d, action_dim), the chunk's first d steps are those actions."""
        if isinstance(msg.get("obs"), list):
            raise BadRequest("obs: a plan request takes one observation map, not a list")
        frozen = None
        if msg.get("frozen") is not None:
            if not self.metadata["frozen_prefix"]:
                raise BadRequest(
                    "frozen: this server's policy cannot keep a frozen prefix (its plan takes no "
                    "frozen_actions); send plan requests without 'frozen'"
                )
            frozen = validate_frozen(
                msg["frozen"], self.metadata["action_dim"], self.metadata["chunk_length"]
            )
        obs = self._checked(msg.get("obs"), "")
        slot = await self._slot(client, 0)
        chunk, plan, timing = await self._submit(client, obs, slot.env_index, frozen)
        return {"type": "chunk", "chunk": chunk, "plan": plan, "timing": timing}

    # ------------------------------------------------------------------ batching

    def _submit(
        self, client: _Client, obs: dict[str, Any], env_index: int, frozen: np.ndarray | None = None
    ) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_PlanRequest(obs, env_index, future, client, time.perf_counter(), frozen))
        return future

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.config.batch_window_ms / 1e3
            while len(batch) < self.config.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                # Waiting helps only while some connected client is not in the batch yet.
                remaining = deadline - loop.time()
                if remaining <= 0 or len({r.client.id for r in batch}) >= len(self._clients):
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [r for r in batch if not r.future.done() and r.client.id in self._clients]
            # One model call per frozen length (none, d=1, d=2, ...), groups in order of arrival.
            groups: dict[int, list[_PlanRequest]] = {}
            for request in batch:
                groups.setdefault(request.group, []).append(request)
            for group in groups.values():
                await self._run_batch(group)

    async def _run_batch(self, batch: list[_PlanRequest]) -> None:
        start = time.perf_counter()
        try:
            frozen = None if batch[0].frozen is None else np.stack([r.frozen for r in batch])
            chunks, rows = await self._in_model_thread(
                self._plan, [r.obs for r in batch], [r.env_index for r in batch], frozen
            )
        except Exception as exc:
            if len(batch) > 1:  # find the culprit: plan each alone, so the others still get answers
                for request in batch:
                    await self._run_batch([request])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        model_ms = (time.perf_counter() - start) * 1e3
        self.stats["batches"] += 1
        self.stats["planned_obs"] += len(batch)
        for request, chunk, row in zip(batch, chunks, rows, strict=True):
            if request.future.done():
                continue
            timing = {
                "queue_ms": (start - request.enqueued) * 1e3,
                "model_ms": model_ms,
                "prefix_ms": row.pop("prefix_ms"),
                "refine_ms": row.pop("refine_ms"),
                "decode_ms": row.pop("decode_ms"),
                "batch_size": len(batch),
            }
            request.future.set_result((chunk, row, timing))

    def _plan(
        self,
        obs_list: list[dict[str, Any]],
        env_indices: list[int],
        frozen_actions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[dict]]:
        """In the model thread: (B, chunk_length, action_dim) float32 chunks and the per-row reports;
        ``frozen_actions`` (B, d, action_dim) or None (then the backend is called exactly as before)."""
        if frozen_actions is None:
            chunks, rows = self.backend.plan(obs_list, env_indices)
        else:
            chunks, rows = self.backend.plan(obs_list, env_indices, frozen_actions=frozen_actions)
        want = (len(obs_list), self.metadata["chunk_length"], self.metadata["action_dim"])
        if chunks.shape != want:
            raise RuntimeError(f"the policy planned chunks of shape {chunks.shape}, expected {want}")
        if not np.isfinite(chunks).all():
            raise RuntimeError("the policy produced non-finite actions")
        return chunks, rows


class ServerThread:
    """Run a :class:`PolicyServer` in a background thread (tests, benchmarks, notebooks)::

    with ServerThread(PolicyServer(policy, ServerConfig(port=0))) as srv:
        client = RemotePolicy("127.0.0.1", srv.port)
    """

    def __init__(self, server: PolicyServer, start_timeout_s: float = 30.0) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dfm-vla-server", daemon=True)
        self._start_timeout_s = start_timeout_s

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await self.server.serve_forever(ready=self._ready, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # report start-up errors (port in use) to start()
            self._error = exc
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise TimeoutError(f"the policy server did not start within {self._start_timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"the policy server failed to start: {self._error}") from self._error
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self, timeout_s: float = 30.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"the policy server thread did not stop within {timeout_s} s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
