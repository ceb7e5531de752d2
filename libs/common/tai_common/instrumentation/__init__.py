"""Observing the other layers: traced decorators of the store, bus and cache ports, the gRPC
metrics of servers and clients, the tracer provider, and logging."""

from tai_common.instrumentation.grpc_metrics import ServerMetricsInterceptor, client_interceptors
from tai_common.instrumentation.logging import configure_logging
from tai_common.instrumentation.server_tracing import ServerTracingInterceptor
from tai_common.instrumentation.traced_bus import TracedBus
from tai_common.instrumentation.traced_cache import TracedCache
from tai_common.instrumentation.traced_store import TracedStore
from tai_common.instrumentation.tracing import configure_tracing, tracing_enabled

__all__ = [
    "ServerMetricsInterceptor",
    "ServerTracingInterceptor",
    "TracedBus",
    "TracedCache",
    "TracedStore",
    "client_interceptors",
    "configure_logging",
    "configure_tracing",
    "tracing_enabled",
]
