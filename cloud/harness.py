"""The relay server on a background event loop, for tests, demos and benchmarks that drive it
from synchronous code.

    with ServerThread(backend, config=ServerConfig()) as server:
        CloudClient(server.target) ...

It runs exactly the server of cloud/serve.py (start / drain); `relayllm serve` does not use
it, it runs serve.serve_forever on the main thread. Every ServerThread of a process serves
on one shared event loop thread: grpc.aio servers on several loops in several threads of one
process can crash the process when one stops while another serves (seen in CI: a
segmentation fault in grpc's aio server stop), and one loop is what grpc.aio expects.
"""

from __future__ import annotations

import asyncio
import threading

from relayllm.cloud.backends.base import Backend
from relayllm.cloud.config import ServerConfig
from relayllm.cloud.metrics import Metrics
from relayllm.cloud.serve import Running, start

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's server loop, started on first use in a daemon thread."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="relay-servers", daemon=True).start()
            _LOOP = loop
        return _LOOP


class ServerThread:
    """The aio server on the process's shared server loop (the name is historical)."""

    def __init__(self, backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                 config: ServerConfig | None = None, metrics: Metrics | None = None):
        self.backend = backend
        self.host = host
        self.config = config or ServerConfig()
        self.metrics = metrics
        self._requested_port = port
        self.port: int | None = None
        self.running: Running | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        started = asyncio.run_coroutine_threadsafe(start(
            self.backend, host=self.host, port=self.port or self._requested_port, config=self.config,
            metrics=self.metrics), shared_loop())
        self.running = started.result(timeout=120)
        self.port = self.running.port
        return self

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop; grace=None cancels every call at once (a crash, as seen by clients)."""
        if self.running is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.running.drain(grace), shared_loop()).result(timeout=60)
        finally:
            self.running = None

    def restart(self) -> "ServerThread":
        """Stop, then serve again on the same port with the same backend (caches kept)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
