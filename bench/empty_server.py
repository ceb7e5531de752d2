"""The baseline: a grpc.aio server with one empty unary method, `/bench.Empty/Call` (bytes in,
empty bytes out, no protobuf), served the way the services are served — one process, one
`asyncio.run` loop, the same server options as `tai_common.grpc.server.GrpcServer` — plus the
standard health service so it can be waited on like them.

It has none of the services' interceptors (tracing, metrics, error mapping, authentication):
the difference between a scenario and this baseline is everything TAI adds on top of gRPC.

Run: `python -m bench.empty_server` with `TAI_GRPC_PORT` (and optionally `TAI_HOST`) set.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "bench.Empty"
METHOD = f"/{SERVICE}/Call"
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # ServiceSettings.max_message_bytes' default

# The same options as tai_common.grpc.server.GrpcServer gives the services' servers.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


async def _call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


def generic_handler() -> grpc.GenericRpcHandler:
    """`bench.Empty/Call`, with no (de)serializers: the handler sees and returns raw bytes."""
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(_call)}
    )


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((generic_handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"empty handler serving on {host}:{bound}", flush=True)
    await _until_signalled()
    await server.stop(1.0)


async def _until_signalled() -> None:
    """Returns on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def serve_with_stack() -> None:
    # Imported here: the plain baseline must not even load TAI's code.
    from tai_common.core import ServiceSettings
    from tai_common.grpc import GrpcServer
    from tai_common.instrumentation import configure_tracing
    from tai_common.runtime import interceptor_stack

    settings = ServiceSettings(service_name="bench-empty")
    if os.environ.get("BENCH_EMPTY_STACK") == "traced":
        # Tracing on and every call sampled out: the cost of the tracing code itself (nothing
        # listens at the endpoint; a sampled-out span is never exported).
        settings = ServiceSettings(
            service_name="bench-empty", otlp_endpoint="127.0.0.1:9", trace_sample_ratio=0.0
        )
    provider = configure_tracing(settings)
    stack = interceptor_stack(settings, None, None)
    server = GrpcServer(
        settings,
        registrars=[lambda s: s.add_generic_rpc_handlers((generic_handler(),))],
        service_names=[SERVICE],
        outer_interceptors=stack.outer,
        interceptors=stack.inner,
    )
    port = await server.start()
    await server.set_serving(True)
    print(f"empty handler (with the services' interceptors) serving on port {port}", flush=True)
    await _until_signalled()
    await server.stop(1.0)
    if stack.close is not None:
        await stack.close()
    if provider is not None:
        provider.shutdown()


def main() -> None:
    if os.environ.get("BENCH_EMPTY_STACK") in ("1", "traced"):
        asyncio.run(serve_with_stack())
        return
    asyncio.run(
        serve(os.environ.get("TAI_HOST", "127.0.0.1"), int(os.environ.get("TAI_GRPC_PORT", "0")))
    )


if __name__ == "__main__":
    main()
