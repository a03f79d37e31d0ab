"""A TCP proxy in front of a real cloud service that injects network faults on demand.

The real server and the real client stay untouched; only the bytes between them suffer.
This is the one fake the fault suites use, because a real network cannot be told to
hang, slow down or break a stream at a chosen moment.

Modes (switch at any time with `proxy.mode = ...`):
- "pass":    forward both ways.
- "refuse":  accept and close at once (like a cloud that is down behind a load balancer).
- "hang":    accept, read, never answer (a cloud that stopped answering).
- "slow":    forward, but hold every server->client chunk for `delay_s`.
- "cut":     drop every connection at its next server->client chunk (killed mid-stream).
The mode is read for every chunk, so switching it acts on open connections too.
- "garbage": answer with random bytes instead of the server's (a broken stream).
"""

from __future__ import annotations

import asyncio
import os
import threading


class FaultProxy:
    def __init__(self, upstream_port: int, *, mode: str = "pass", delay_s: float = 0.5):
        self.upstream_port = upstream_port
        self.mode = mode
        self.delay_s = delay_s
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")
        self._thread.start()
        self._ready.wait(10)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r, client_w):
        self.connections += 1
        mode = self.mode
        try:
            if mode == "refuse":
                return
            if mode == "hang":
                while await client_r.read(65536):
                    pass
                return
            if mode == "garbage":
                await client_r.read(65536)
                client_w.write(os.urandom(256))
                await client_w.drain()
                await asyncio.sleep(0.05)
                return
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up = asyncio.ensure_future(self._pump(client_r, server_w, upstream=True))
            down = asyncio.ensure_future(self._pump(server_r, client_w, upstream=False))
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            up.cancel()
            down.cancel()
            server_w.close()
        except (ConnectionError, OSError):
            pass
        finally:
            client_w.close()

    async def _pump(self, reader, writer, *, upstream: bool):
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            if not upstream:
                if self.mode == "cut":
                    return
                if self.mode == "slow":
                    await asyncio.sleep(self.delay_s)
                while self.mode == "hang":
                    await asyncio.sleep(0.05)
            writer.write(chunk)
            await writer.drain()

    def close(self):
        async def stop():
            self._server.close()
            # finish the open handlers inside the loop, or they die with it mid-await
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
