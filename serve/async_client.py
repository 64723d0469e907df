"""Real-time chunk execution for :class:`~dfm_vla.serve.client.RemotePolicy` (``asynchronous=True``).

A robot cannot stop its arm while the policy plans. In asynchronous mode the client keeps the action
queue itself and asks the server for the next chunk (a ``plan`` request) while it still serves queued
actions, one per :meth:`RealtimeQueue.act`:

- When the queue falls to the threshold ``d`` (``inference_delay`` control steps, given or estimated as
  ``ceil(round trip / control period)``), the current observation goes out in a background thread. One
  request is in flight at a time; ``act`` never waits for it while actions are queued.
- The chunk's slot 0 is the step of the request's observation. If ``k`` actions were served from that
  step on before the reply arrived, the new queue is ``chunk[k : k + execute_horizon]`` and the old one
  is dropped. So ``d + execute_horizon <= chunk_length`` (``k`` never exceeds the ``d`` queued actions:
  with the queue empty, ``act`` waits for the reply and counts a stall).
- With ``freeze_prefix`` the request carries ``frozen``: the queued actions that will still run while the
  server plans. The policy keeps them as the chunk's first steps (its action tokens held fixed) and plans
  the rest to continue them, so the splice is smooth whatever ``k`` turns out to be.
- ``reset`` drops the queue and waits out a request in flight, whose reply is then discarded: a chunk
  planned in one episode is never served in the next.

numpy and the standard library only (no torch), like the client.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

ROUND_TRIPS_KEPT = 5  # the latency estimate is the slowest of the last few round trips (conservative)
PERIODS_KEPT = 20  # the control period is the median of the last few intervals between act calls


def max_inference_delay(chunk_length: int, execute_horizon: int) -> int:
    """The largest threshold a chunk allows: ``d <= execute_horizon`` and ``d + execute_horizon <= L``."""
    return min(execute_horizon, chunk_length - execute_horizon)


def check_inference_delay(
    inference_delay: Any, chunk_length: int | None = None, execute_horizon: int | None = None
) -> None:
    """Raise ValueError naming ``inference_delay`` unless it is None or an int with ``1 <= d``, and, when
    the server's sizes are given, ``d <= execute_horizon`` and ``d + execute_horizon <= chunk_length``."""
    if inference_delay is None:
        return
    if isinstance(inference_delay, bool) or not isinstance(inference_delay, (int, np.integer)):
        raise ValueError(
            f"inference_delay: expected an int (control steps) or None, got {inference_delay!r:.40}"
        )
    d = int(inference_delay)
    if d < 1:
        raise ValueError(f"inference_delay: expected >= 1 control step, got {d}")
    if execute_horizon is not None and d > execute_horizon:
        raise ValueError(
            f"inference_delay: expected 1 <= inference_delay <= execute_horizon ({execute_horizon}), got {d}"
        )
    if chunk_length is not None and execute_horizon is not None and d + execute_horizon > chunk_length:
        raise ValueError(
            f"inference_delay: expected inference_delay + execute_horizon ({execute_horizon}) <= "
            f"chunk_length ({chunk_length}), got {d} (at most {chunk_length - execute_horizon} here)"
        )


@dataclass
class _InFlight:
    future: Future  # -> (chunk (chunk_length, action_dim), round trip ms)
    epoch: int  # the episode it was sent in
    frozen: np.ndarray | None
    served: int = 0  # actions served from the request's step on (its slot 0), so far


class RealtimeQueue:
    """The client-side queue of asynchronous mode.

    Args:
        request_chunk: ``(wire_obs, frozen or None) -> (chunk (chunk_length, action_dim), round trip ms)``;
            called in the background thread (the caller guards its connection with a lock).
        wire_obs: ``obs -> what goes on the wire`` (called in the caller's thread, then copied).
        chunk_length, execute_horizon, action_dim: the server's metadata.
        inference_delay: the threshold ``d`` in control steps; None: estimated from measured round trips
            and the measured period between ``act`` calls.
        freeze_prefix: send the ``d`` queued actions as ``frozen`` with each request.
    """

    def __init__(
        self,
        request_chunk: Callable[[dict[str, Any], np.ndarray | None], tuple[np.ndarray, float]],
        wire_obs: Callable[[Any], Any],
        chunk_length: int,
        execute_horizon: int,
        action_dim: int,
        inference_delay: int | None = None,
        freeze_prefix: bool = True,
    ) -> None:
        check_inference_delay(inference_delay, chunk_length, execute_horizon)
        self.max_delay = max_inference_delay(chunk_length, execute_horizon)
        if self.max_delay < 1:
            raise ValueError(
                f"asynchronous: needs chunk_length > execute_horizon (planned actions beyond the executed "
                f"ones to splice from); the server plans {chunk_length} and executes {execute_horizon}"
            )
        self._request_chunk, self._wire_obs = request_chunk, wire_obs
        self.chunk_length, self.execute_horizon, self.action_dim = chunk_length, execute_horizon, action_dim
        self.inference_delay = None if inference_delay is None else int(inference_delay)
        self.freeze_prefix = bool(freeze_prefix)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfm-vla-client")
        self._queue: deque[np.ndarray] = deque()
        self._inflight: _InFlight | None = None
        self._epoch = 0
        self._last_action: np.ndarray | None = None
        self._seam_pending = False
        self._last_act_start: float | None = None
        self._last_act_waited = False
        self._round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)
        self._periods: deque[float] = deque(maxlen=PERIODS_KEPT)
        self.threshold = self.inference_delay or self.max_delay  # before any measurement: the safe end
        self.stats: dict[str, Any] = {
            "requests": 0,  # plan requests sent
            "stalls": 0,  # act calls that waited for a reply (queue empty; episode starts included)
            "stall_ms": 0.0,  # time those calls waited, in total
            "splice_index": None,  # k of the last splice: the new queue began at chunk[k]
            "round_trip_ms": None,  # the last request's round trip, measured by the client
            "seam_jump": None,  # max |first action of the last spliced chunk - the action before it|
            "frozen": 0,  # frozen steps sent with the last request
        }

    # ------------------------------------------------------------------ the policy interface

    @property
    def needs_observation(self) -> bool:
        """Whether the next :meth:`act` may send (so read) its observation: False only when it surely
        serves a queued action without a new request."""
        if not self._queue:
            return True
        if self._inflight is not None:
            return self._inflight.future.done()  # a reply to splice; the new queue may be short
        return len(self._queue) <= self.threshold

    def act(self, obs: Any) -> np.ndarray:
        """The next action (action_dim,): from the queue, splicing a reply that arrived; a request goes
        out (in the background) when the queue is at the threshold. Waits only with the queue empty."""
        start = time.perf_counter()
        if self._last_act_start is not None and not self._last_act_waited:
            self._periods.append(start - self._last_act_start)
        self._last_act_start = start
        self._splice(wait=False)
        waited = False
        if not self._queue:
            if self._inflight is None:  # episode start (or after a failed request): plan from here
                self._send(obs, frozen=None)
            self._splice(wait=True)
            waited = True
            self.stats["stalls"] += 1
            self.stats["stall_ms"] += (time.perf_counter() - start) * 1e3
        if self._inflight is None and len(self._queue) <= self.threshold:
            self._send(obs, frozen=np.stack(self._queue) if self.freeze_prefix else None)
        action = self._queue.popleft()
        if self._inflight is not None:
            self._inflight.served += 1
        if self._seam_pending and self._last_action is not None:
            self.stats["seam_jump"] = float(np.max(np.abs(action - self._last_action)))
        self._seam_pending = False
        self._last_action = action
        self._last_act_waited = waited
        self.threshold = self._estimate_threshold()
        return action.copy()

    def reset(self) -> None:
        """New episode: drop the queue; wait out a request in flight and discard its reply."""
        inflight, self._inflight = self._inflight, None
        self._epoch += 1
        if inflight is not None:
            try:
                inflight.future.result()
            except Exception:  # noqa: BLE001 (a failed stale request concerns nobody now)
                pass
        self._queue.clear()
        self._last_action = None
        self._seam_pending = False
        self._last_act_start = None  # the pause between episodes is no control period

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    def _send(self, obs: Any, frozen: np.ndarray | None) -> None:
        wire = _snapshot(self._wire_obs(obs))  # the caller may overwrite its arrays while we send
        frozen = None if frozen is None else np.array(frozen, dtype=np.float32)
        future = self._executor.submit(self._request_chunk, wire, frozen)
        self._inflight = _InFlight(future, self._epoch, frozen)
        self.stats["requests"] += 1
        self.stats["frozen"] = 0 if frozen is None else len(frozen)

    def _splice(self, wait: bool) -> None:
        """Put the reply in flight (if it arrived, or waiting for it) in place of the queue."""
        inflight = self._inflight
        if inflight is None or not (wait or inflight.future.done()):
            return
        self._inflight = None
        chunk, round_trip_ms = inflight.future.result()  # a failed request raises here
        if inflight.epoch != self._epoch:  # from an earlier episode (reset() discards these already)
            return
        self._round_trips.append(round_trip_ms)
        self.stats["round_trip_ms"] = round_trip_ms
        k = inflight.served
        chunk = np.asarray(chunk, dtype=np.float32)
        if k + self.execute_horizon > len(chunk):  # cannot happen while the threshold obeys the bound
            raise RuntimeError(f"splice index {k} + execute horizon beyond the chunk of {len(chunk)} steps")
        self._queue = deque(chunk[k : k + self.execute_horizon])
        self.stats["splice_index"] = k
        self._seam_pending = True

    def _estimate_threshold(self) -> int:
        if self.inference_delay is not None:
            return self.inference_delay
        if not self._round_trips or not self._periods:
            return self.max_delay
        latency_s = max(self._round_trips) / 1e3
        period_s = statistics.median(self._periods)
        if period_s <= 0:
            return self.max_delay
        return max(1, min(self.max_delay, math.ceil(latency_s / period_s)))

    def snapshot_stats(self) -> dict[str, Any]:
        period = statistics.median(self._periods) * 1e3 if self._periods else None
        return {
            **self.stats,
            "inference_delay": self.threshold,
            "latency_ms": max(self._round_trips) if self._round_trips else None,
            "period_ms": period,
            "in_flight": self._inflight is not None,
        }


def _snapshot(value: Any) -> Any:
    """A copy of an observation's arrays (maps and lists copied through), so later writes don't leak in."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {key: _snapshot(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(v) for v in value]
    return value


__all__ = ["RealtimeQueue", "check_inference_delay", "max_inference_delay"]
