"""OpenTelemetry tracing: the provider (parent-based sampling, OTLP export over gRPC or HTTP).
The spans themselves come from `tai_common.core.trace_context`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

from tai_common.core import ServiceSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter


def tracing_enabled(settings: ServiceSettings) -> bool:
    """Whether spans are made at all: only with an OTLP endpoint to send them to. Without one,
    no tracing code runs per call (no server or client interceptor, no traced adapters), and
    the logs carry no trace ids."""
    return bool(settings.otlp_endpoint)


def configure_tracing(settings: ServiceSettings) -> TracerProvider | None:
    """Installs this process's tracer provider when tracing is enabled (`tracing_enabled`);
    otherwise OpenTelemetry's default no-op tracer stays, and None is returned."""
    if not tracing_enabled(settings):
        return None
    # The SDK is imported only then: a process that does not trace does not load it.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    ratio = settings.trace_sample_ratio
    if ratio is None:
        ratio = 1.0 if settings.environment == "development" else 0.1
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": _resource_name(settings.service_name),
                "service.namespace": "tai",
                "service.instance.id": settings.replica_id,
            }
        ),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(settings: ServiceSettings) -> SpanExporter:
    if settings.otlp_protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint
        if not endpoint.endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return OTLPSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return GrpcSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)


def _resource_name(service_name: str) -> str:
    """tai-governor, …, and tai-server for the single process (not tai-tai-server)."""
    return service_name if service_name.startswith("tai-") else f"tai-{service_name}"
