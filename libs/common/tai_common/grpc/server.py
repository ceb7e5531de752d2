"""The gRPC server every service runs: grpc.aio, the standard health service, reflection, the
error-mapping interceptor, INVALID_ARGUMENT for requests that do not parse, message-size
limits, and a graceful stop that drains calls and ends streams."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tai_common.core import ServiceSettings, Unavailable
from tai_common.grpc.errors import ErrorMappingInterceptor
from tai_common.grpc.parsing import RequestParsingInterceptor

T = TypeVar("T")

Registrar = Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A grpc.aio server with health and reflection. `service_names` are the full names of the
    services registered by `registrars` (e.g. "tai.v1.Governor"); health reports each of them
    and the overall "" service."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        registrars: Sequence[Registrar],
        service_names: Sequence[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        outer_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """`credentials`: TLS for the port (None: plaintext, e.g. behind a mesh sidecar)."""
        self._settings = settings
        self._service_names = list(service_names)
        limit = settings.max_message_bytes
        self.server = grpc.aio.server(
            # The error mapping is outermost, so errors raised by the other interceptors (an
            # authentication failure, a rate limit) are mapped like the handlers' own. The
            # request parsing is innermost: it replaces the servicers' own deserializers.
            interceptors=[
                *outer_interceptors,
                ErrorMappingInterceptor(),
                *interceptors,
                RequestParsingInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Let idle streams survive proxies; tolerate client keepalive pings.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        for register in registrars:
            register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        # Set when a graceful stop begins: open streams end so their clients reconnect elsewhere.
        self.stopping = asyncio.Event()
        self.port = 0
        self._credentials = credentials

    async def start(self) -> int:
        """Binds and starts serving (health NOT_SERVING until `set_serving(True)`); returns
        the bound port."""
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        self.port = (
            self.server.add_secure_port(address, self._credentials)
            if self._credentials is not None
            else self.server.add_insecure_port(address)
        )
        await self.set_serving(False)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Stops gracefully: health NOT_SERVING, streams told to end, new calls refused,
        in-flight calls given `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        self.stopping.set()
        await self.server.stop(self._settings.shutdown_grace_seconds if grace is None else grace)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def until_stopping(self, awaitable: Awaitable[T]) -> T:
        """Awaits `awaitable` unless the server starts stopping first, in which case it raises
        `Unavailable` so the stream ends and its client reconnects (to another replica)."""
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        waiting: set[asyncio.Future[Any]] = {task, stop}
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise Unavailable("the server is shutting down; reconnect")
