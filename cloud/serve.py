"""The serve loop: a grpc.aio server with the Relay servicer, health and reflection, signal
handling and a graceful drain.

    running = await start(backend, config=ServerConfig(), port=50051)
    ...
    await running.drain(grace=10)   # health NOT_SERVING, in-flight calls finish, then stop

`serve_forever` is what `relayllm serve` runs: start, wait for SIGINT/SIGTERM, drain. The
tests and demos run the same server on a background thread (cloud/harness.py). Not here:
request handling (cloud/servicer.py) or flags and files (cloud/cli.py, cloud/settings.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from relayllm.cloud.backends.base import Backend
from relayllm.cloud.config import ServerConfig
from relayllm.cloud.metrics import Metrics
from relayllm.cloud.servicer import SERVICE, RelayServicer, handlers
from relayllm.protos import relay_pb2 as pb

log = logging.getLogger("relayllm.cloud")


@dataclass
class Running:
    """A started server: its port, servicer and health service."""

    server: grpc.aio.Server
    port: int
    servicer: RelayServicer
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def drain(self, grace: float | None) -> None:
        """Health goes NOT_SERVING (balancers stop sending), new calls are refused, calls in
        flight get `grace` seconds to finish (None: cancelled at once), then the server stops."""
        await self.set_serving(False)
        admission = self.servicer.admission
        admission.closed = True  # new calls are refused from now on
        log.info("draining: %d calls in flight, up to %s s", admission.in_flight(), grace)
        loop = asyncio.get_running_loop()
        end = loop.time() + (grace or 0.0)
        while admission.in_flight() > 0 and loop.time() < end:
            await asyncio.sleep(0.05)
        # Relay calls done (or out of time): stop once, ending the rest at once (health Watch
        # streams of balancers would otherwise hold the server). One stop call only: a second
        # stop while the first was pending crashed grpc.aio 1.85 (a segfault seen in CI).
        await self.server.stop(None if grace is None else 0)
        self.servicer.executor.shutdown(wait=False, cancel_futures=True)


async def start(backend: Backend, *, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None,
                metrics: Metrics | None = None) -> Running:
    """Build and start the aio server on host:port (0: any free port)."""
    config = config or ServerConfig()
    metrics = metrics or Metrics(None)
    servicer = RelayServicer(backend, config, metrics)
    metrics.watch(lambda: len(backend.sessions), servicer.admission.in_flight)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # above the admission limit, so that a call over it gets a clear RESOURCE_EXHAUSTED
        # instead of waiting in the HTTP/2 transport
        ("grpc.max_concurrent_streams", config.max_concurrent_streams + 16),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["Relay"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if config.tls_cert is not None:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    running = Running(server, bound, servicer, health_servicer)
    await running.set_serving(True)
    return running


async def serve_forever(backend: Backend, *, host: str, port: int, config: ServerConfig, metrics: Metrics | None = None,
                        on_ready: Callable[[Running], None] = lambda running: None) -> None:
    """Serve until SIGINT or SIGTERM, then drain for config.drain_s seconds."""
    running = await start(backend, host=host, port=port, config=config, metrics=metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_ready(running)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await running.drain(config.drain_s)
