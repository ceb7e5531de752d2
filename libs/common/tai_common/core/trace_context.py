"""The current trace: the tracer every TAI span comes from, its ids for the logs, and the helpers
that carry it across the bus and across stored work (actions, tasks). The provider that samples
and exports the spans is set up by `tai_common.instrumentation.tracing`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

TRACER_NAME = "tai"

# A proxy that resolves the installed provider's tracer on first use and keeps it:
# `trace.get_tracer` builds a new tracer per call, which showed in the profile of cached reads.
_TRACER = trace.get_tracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    """The tracer every TAI span comes from."""
    return _TRACER


def current_context_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`); empty when there
    is no trace (tracing off), without asking the propagators, which a signal asks several
    times."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued(
    name: str,
    carrier: Mapping[str, str],
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str] | None = None,
    *,
    errors_set_status: bool = True,
) -> Iterator[trace.Span]:
    """A span continuing the trace whose context `carrier` holds (e.g. stored with a task,
    carried by a bus message, or a call's metadata). `errors_set_status=False`: an exception
    leaving the span neither is recorded nor sets its status (the caller sets it)."""
    parent = propagate.extract(dict(carrier))
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(
            name,
            kind=kind,
            attributes=dict(attributes or {}),
            record_exception=errors_set_status,
            set_status_on_exception=errors_set_status,
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
