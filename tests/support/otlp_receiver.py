"""A test OTLP trace receiver: the collector's gRPC `TraceService` (from opentelemetry-proto),
keeping every span it is sent, with the name of the service that sent it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    # Attribute values as strings or ints, and the status code (0 unset, 1 ok, 2 error).
    attributes: dict[str, str | int] = field(default_factory=dict)
    status_code: int = 0


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={
                                a.key: (
                                    a.value.int_value
                                    if a.value.WhichOneof("value") == "int_value"
                                    else a.value.string_value
                                )
                                for a in span.attributes
                            },
                            status_code=span.status.code,
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    async def start(self) -> OtlpReceiver:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def traces_with(self, *services: str) -> list[str]:
        """Trace ids that have spans from every one of `services`."""
        by_trace: dict[str, set[str]] = {}
        for span in self.spans:
            by_trace.setdefault(span.trace_id, set()).add(span.service)
        return [t for t, seen in by_trace.items() if set(services) <= seen]

    async def wait_for(self, condition: Any, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"never happened; spans so far: {self.spans}")
            await asyncio.sleep(0.2)
