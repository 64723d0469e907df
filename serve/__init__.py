"""Serving a policy over the network, and `doctor`, which explains a broken set-up.

- ``dfm_vla.serve.client``: ``RemotePolicy(host, port)``, a drop-in for ``DFMPolicy`` that needs only
  numpy, msgpack and websockets (no torch), for a robot or simulator in another Python environment.
- ``dfm_vla.serve.async_client``: ``RemotePolicy(..., asynchronous=True)``'s real-time queue: ``act``
  returns at once while the next chunk (with the still-running actions as its frozen prefix) is planned.
- ``dfm_vla.serve.server``: ``PolicyServer``, WebSocket + msgpack, batched planning; ``ServerThread``.
- ``dfm_vla.serve.backend``: what the server needs from a policy, and its request checks.
- ``dfm_vla.serve.command``: ``python cli.py serve --policy DIR``.
- ``dfm_vla.serve.msgpack_numpy``: the wire codec for numpy arrays.
- ``dfm_vla.serve.doctor``: ``python cli.py doctor``.

This ``__init__`` imports nothing, so ``import dfm_vla.serve.client`` stays torch-free.
"""
