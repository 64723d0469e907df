"""``python cli.py bench serve --clients 1,4,16``: load test of the policy server on loopback.

For batching on (``--max-batch``, ``--batch-window-ms``) and off (max batch 1), a server runs in its own
process on 127.0.0.1; N client threads, each a :class:`RemotePolicy`, send ``plan`` requests (every
request is a model call) back to back. Each (batching, clients) setting stops after ``--requests``
requests or ``--seconds`` seconds, whichever comes first. Reported per setting: requests/s, client-side
p50/p99 latency, and the mean batch the server planned.

Without ``--policy`` the server gets a tiny random-initialised checkpoint written to a temporary folder
(the timing of a tiny model, not of a trained one; the weights do not change the cost).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"  # loopback only: this benchmark never listens on a public interface


def add_arguments(parser) -> None:
    parser.add_argument("--policy", metavar="DIR", help="checkpoint to serve (default: a tiny random one)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=96, help="requests per setting (upper bound)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per setting (upper bound)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="the server's batching window")
    parser.add_argument("--max-batch", type=int, default=16, help="the largest batch with batching on")
    parser.add_argument("--batching", default="on,off", help="which modes to run: on, off or both")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    parser.add_argument("--device", default="cpu", help="the server's device (cpu, cuda)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class _ServerProcess:
    """``python cli.py serve`` in a child process on a free loopback port; always stopped on exit."""

    def __init__(
        self, policy_dir: str, max_batch: int, window_ms: float, threads: int, device: str, log: Path
    ):
        self.port = _free_port()
        self.log_path = log
        cmd = [
            sys.executable, "-m", "dfm_vla.cli", "serve", "--policy", policy_dir, "--host", HOST,
            "--port", str(self.port), "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms),
            "--threads", str(threads), "--device", device, "--log-level", "WARNING",
        ]  # fmt: skip
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180.0) -> dict[str, Any]:
        from dfm_vla.serve.client import health

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return health(HOST, self.port, timeout_s=1.0)
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"the server was not ready within {timeout_s} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> _ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_clients(port: int, n_clients: int, max_requests: int, max_seconds: float) -> dict[str, Any]:
    """N client threads sending ``plan`` requests back to back; returns latencies (ms) and batch sizes."""
    from dfm_vla.serve.client import RemotePolicy, example_observation

    clients = [RemotePolicy(HOST, port) for _ in range(n_clients)]
    try:
        obs = [example_observation(c.metadata["observation"], seed=i) for i, c in enumerate(clients)]
        for c, o in zip(clients, obs, strict=True):
            c.plan(o)  # warm-up, not counted
        lock = threading.Lock()
        issued = [0]
        latencies: list[float] = []
        batch_sizes: list[int] = []
        errors: list[str] = []
        start_barrier = threading.Barrier(n_clients + 1)
        deadline = [0.0]

        def worker(client, o) -> None:
            start_barrier.wait()
            while True:
                with lock:
                    if issued[0] >= max_requests or time.perf_counter() >= deadline[0]:
                        return
                    issued[0] += 1
                t = time.perf_counter()
                try:
                    client.plan(o)
                except Exception as exc:  # counted and reported, the others go on
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    return
                ms = (time.perf_counter() - t) * 1e3
                with lock:
                    latencies.append(ms)
                    batch_sizes.append(int(client.last_timing.get("batch_size", 1)))

        threads = [
            threading.Thread(target=worker, args=(c, o), daemon=True)
            for c, o in zip(clients, obs, strict=True)
        ]
        for th in threads:
            th.start()
        t0 = time.perf_counter()
        deadline[0] = t0 + max_seconds
        start_barrier.wait()
        for th in threads:
            th.join(max_seconds + 120)
        elapsed = time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()
    return {"latencies_ms": latencies, "batch_sizes": batch_sizes, "seconds": elapsed, "errors": errors}


def write_random_checkpoint(
    directory: str | os.PathLike,
    preset: str = "tiny",
    state_dim: int = 8,
    action_dim: int = 7,
    horizon: int = 8,
    num_bins: int = 32,
    seed: int = 0,
    **config_changes: Any,
) -> Path:
    """A random-initialised policy checkpoint (language + state, uniform-bin actions) for load tests.

    Real model, tokenizers and statistics, untrained weights: its timing is a trained model's, its actions
    are noise. ``config_changes`` override ``ModelConfig`` fields of the preset (e.g. ``num_layers=2``).
    """
    import torch

    from dfm_vla.policy.bin_tokenizer import BinActionTokenizer
    from dfm_vla.policy.config import PRESETS, ModelConfig
    from dfm_vla.policy.model import build_model
    from dfm_vla.policy.processor import state_statistics
    from dfm_vla.policy.text_tokenizer import tiny_text_tokenizer

    rng = np.random.default_rng(seed)
    actions = BinActionTokenizer(num_bins=num_bins).fit(rng.uniform(-1, 1, size=(64, horizon, action_dim)))
    text = tiny_text_tokenizer()
    config = ModelConfig(**{**PRESETS[preset], **config_changes})
    config = config.replace(execute_horizon=min(config.execute_horizon, horizon))
    torch.manual_seed(seed)
    model = build_model(config, actions, text, state_dim=state_dim)
    norm = {"state": state_statistics(rng.normal(size=(256, state_dim)))}
    return Path(model.save_pretrained(directory, actions, text, norm_stats=norm))


def run(args) -> dict[str, Any]:
    from rich.progress import Progress

    counts = [int(x) for x in str(args.clients).split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"--clients: expected comma-separated positive ints, got {args.clients!r}")
    modes = [m.strip() for m in str(args.batching).split(",") if m.strip()]
    if not modes or not set(modes) <= {"on", "off"}:
        raise ValueError(f"--batching: expected 'on', 'off' or 'on,off', got {args.batching!r}")
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dfm-vla-bench-serve-") as tmp:
        tmp = Path(tmp)
        policy_dir = args.policy or str(write_random_checkpoint(tmp / "tiny"))
        with Progress(transient=True) as progress:
            task = progress.add_task("bench serve", total=len(modes) * len(counts))
            for mode in modes:
                max_batch = args.max_batch if mode == "on" else 1
                log = tmp / f"server-{mode}.log"
                with _ServerProcess(
                    policy_dir, max_batch, args.batch_window_ms, args.threads, args.device, log
                ) as srv:
                    info = srv.wait_ready()
                    for n in counts:
                        progress.update(task, description=f"batching {mode}, {n} client(s)")
                        res = load_clients(srv.port, n, args.requests, args.seconds)
                        lat = np.asarray(res["latencies_ms"])
                        rows.append({
                            "batching": mode,
                            "clients": n,
                            "requests": int(lat.size),
                            "seconds": round(res["seconds"], 2),
                            "requests_per_s": lat.size / res["seconds"] if res["seconds"] > 0 else 0.0,
                            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
                            "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
                            "mean_batch": float(np.mean(res["batch_sizes"])) if res["batch_sizes"] else 0.0,
                            "errors": len(res["errors"]),
                        })  # fmt: skip
                        progress.advance(task)
    by = {(r["batching"], r["clients"]): r["requests_per_s"] for r in rows}
    summary = {}
    if ("on", max(counts)) in by and ("on", min(counts)) in by and by[("on", min(counts))] > 0:
        summary[f"throughput_{max(counts)}_vs_{min(counts)}_clients_batching_on"] = (
            by[("on", max(counts))] / by[("on", min(counts))]
        )
    if ("on", max(counts)) in by and ("off", max(counts)) in by and by[("off", max(counts))] > 0:
        summary[f"batching_gain_at_{max(counts)}_clients"] = (
            by[("on", max(counts))] / by[("off", max(counts))]
        )
    return {
        "rows": rows,
        "summary": summary,
        "checkpoint_id": info.get("checkpoint_id"),
        "policy": args.policy or "tiny random checkpoint (temporary)",
        "settings": {
            "host": HOST,
            "requests_per_setting": args.requests,
            "seconds_per_setting": args.seconds,
            "batch_window_ms": args.batch_window_ms,
            "max_batch": args.max_batch,
            "server_threads": args.threads,
            "device": args.device,
            "cpu_count": os.cpu_count(),
        },
    }
