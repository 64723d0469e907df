"""``python cli.py serve --policy DIR --port 8000``: load a checkpoint and serve it until Ctrl-C or SIGTERM
(the server itself is :class:`dfm_vla.serve.server.PolicyServer`)."""

from __future__ import annotations

import asyncio
import logging
import signal

from dfm_vla.serve.backend import checkpoint_id
from dfm_vla.serve.server import PolicyServer, ServerConfig


def add_arguments(parser) -> None:
    parser.add_argument("--policy", metavar="DIR", required=True, help="checkpoint folder (save_pretrained)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 for other machines"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    parser.add_argument("--decoder", choices=("dfm", "dd", "ar"), help="default: the checkpoint's own")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument(
        "--seed", type=int, default=0, help="client envs i draw from generators seeded seed + i"
    )
    parser.add_argument(
        "--batch-window-ms", type=float, default=5.0, help="wait this long for a batch to fill"
    )
    parser.add_argument(
        "--max-batch", type=int, default=16, help="largest batch of plans; 1 turns batching off"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")


def main(args) -> int:
    import torch

    from dfm_vla.agents.dfm_policy import DFMPolicy

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    policy = DFMPolicy.from_pretrained(args.policy, decoder=args.decoder, device=device, seed=args.seed)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        checkpoint_id=checkpoint_id(args.policy),
    )
    server = PolicyServer(policy, config, seed=args.seed)
    meta = server.metadata
    print(
        f"serving {meta['checkpoint_id']} ({meta['decoder']}, action_dim {meta['action_dim']}, chunk "
        f"{meta['chunk_length']}, execute {meta['execute_horizon']}) on {device}; observation keys "
        f"{sorted(meta['observation'])}; batching window {args.batch_window_ms} ms, max {args.max_batch}",
        flush=True,
    )
    try:
        asyncio.run(serve_until_signalled(server))
    except KeyboardInterrupt:  # a Ctrl-C before serve_until_signalled installed its handlers
        pass
    print("stopped", flush=True)
    return 0


async def serve_until_signalled(server: PolicyServer) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM (``docker stop``, ``kill``), then shut down cleanly: the
    signal resolves the server's stop future instead of interrupting whatever code is running."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    try:
        await server.serve_forever(stop=stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
