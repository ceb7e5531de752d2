"""OpenTelemetry tracing: the provider (parent-based sampling, OTLP export over gRPC or HTTP),
and helpers to carry a trace across the bus and across stored work (actions, tasks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from tai_common.config import ServiceSettings

TRACER_NAME = "tai"


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


# A proxy that resolves the installed provider's tracer on first use and keeps it:
# `trace.get_tracer` builds a new tracer per call, which showed in the profile of cached reads.
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    """The tracer every TAI span comes from."""
    return _TRACER


def current_context_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued(
    name: str,
    carrier: Mapping[str, str],
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str] | None = None,
) -> Iterator[trace.Span]:
    """A span continuing the trace whose context `carrier` holds (e.g. stored with a task,
    or carried by a bus message)."""
    parent = propagate.extract(dict(carrier))
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(
            name, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str]:
    """The current trace and span ids as hex ("" when there is no span)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
