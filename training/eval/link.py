"""A network between device and cloud, simulated on loopback: a TCP delay line.

`DelayLink(upstream_port, rtt_s=0.04)` listens on loopback and forwards every byte to the
cloud and back, each chunk delivered `rtt_s / 2` after it arrived, in each direction. It is a
delay line, not a slow pipe: chunks in flight overlap, so a stream of pieces costs one round
trip, not one per piece (tests/faultproxy.py's "slow" mode holds each chunk in turn, which
is a fault, not a link). Used to check costs.py's wall-time model (one round trip per call)
against real gRPC traffic: `with DelayLink(port, 0.04) as link: ... link.target ...`.
Not a bandwidth or loss model.
"""

from __future__ import annotations

import asyncio
import threading
import time


class DelayLink:
    def __init__(self, upstream_port: int, rtt_s: float = 0.040, host: str = "127.0.0.1"):
        if rtt_s < 0:
            raise ValueError(f"a round trip cannot be negative, got {rtt_s}")
        self.upstream = (host, upstream_port)
        self.one_way_s = rtt_s / 2
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="delay-link")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay link did not start")

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
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        pumps = [asyncio.ensure_future(self._delay(client_r, server_w)),
                 asyncio.ensure_future(self._delay(server_r, client_w))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the link is closing: end this connection quietly
        finally:
            for p in pumps:
                p.cancel()
            server_w.close()
            client_w.close()

    async def _delay(self, reader, writer):
        """Forward reader -> writer, each chunk `one_way_s` after it was read (in order, overlapping)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while True:
                due, chunk = await queue.get()
                if chunk is None:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                await queue.put((time.monotonic() + self.one_way_s, chunk or None))
                if not chunk:
                    break
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()

    def close(self):
        async def stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
