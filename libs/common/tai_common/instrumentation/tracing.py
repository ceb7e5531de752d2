"""OpenTelemetry tracing: the provider (parent-based sampling, OTLP export over gRPC or HTTP).
The spans themselves come from `tai_common.core.trace_context`."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from tai_common.core import ServiceSettings


def configure_tracing(settings: ServiceSettings) -> TracerProvider:
    """Installs this process's tracer provider. Without an OTLP endpoint nothing is sampled,
    so spans cost little, but every request still has trace and span ids for the logs."""
    if settings.otlp_endpoint:
        ratio = settings.trace_sample_ratio
        if ratio is None:
            ratio = 1.0 if settings.environment == "development" else 0.1
    else:
        ratio = 0.0
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"tai-{settings.service_name}",
                "service.namespace": "tai",
                "service.instance.id": settings.replica_id,
            }
        ),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    if settings.otlp_endpoint:
        provider.add_span_processor(
            BatchSpanProcessor(_exporter(settings), schedule_delay_millis=500)
        )
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
