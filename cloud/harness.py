"""The relay server on a background thread with its own event loop, for tests, demos and
benchmarks that drive it from synchronous code.

    with ServerThread(backend, config=ServerConfig()) as server:
        CloudClient(server.target) ...

It runs exactly the server of cloud/serve.py (start / drain); `relayllm serve` does not use
this thread, it runs serve.serve_forever on the main thread.
"""

from __future__ import annotations

import asyncio
import threading

from relayllm.cloud.backends.base import Backend
from relayllm.cloud.config import ServerConfig
from relayllm.cloud.metrics import Metrics
from relayllm.cloud.serve import Running, start


class ServerThread:
    """The aio server in a background thread with its own event loop."""

    def __init__(self, backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                 config: ServerConfig | None = None, metrics: Metrics | None = None):
        self.backend = backend
        self.host = host
        self.config = config or ServerConfig()
        self.metrics = metrics
        self._requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running: Running | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        ready = threading.Event()
        failure: list[BaseException] = []

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self.running = loop.run_until_complete(start(
                    self.backend, host=self.host, port=self.port or self._requested_port, config=self.config,
                    metrics=self.metrics))
                self.port = self.running.port
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()  # until stop() has drained the server and then stopped the loop
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="relay-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self, grace: float | None = None) -> None:
        """Drain and stop; grace=None cancels every call at once (a crash, as seen by clients)."""
        if self.running is None or self._loop is None or self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.running.drain(grace), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self.running = None

    def restart(self) -> "ServerThread":
        """Stop, then serve again on the same port with the same backend (caches kept)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
