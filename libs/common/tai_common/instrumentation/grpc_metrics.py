"""gRPC metrics under the names the common gRPC exporters use (go-grpc-prometheus,
py-grpc-prometheus), so stock dashboards and alerts work on TAI unchanged.

Written here because no maintained Python library instruments grpc.aio servers and clients with
these names (py-grpc-prometheus supports only the synchronous API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from tai_common.grpc import BehaviorInterceptor, Context, StreamBehavior, UnaryBehavior

log = logging.getLogger(__name__)

_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SERVER_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total", "RPCs completed on the server.", [*_LABELS, "grpc_code"]
)
SERVER_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to complete an RPC on the server (streams: their whole life).",
    _LABELS,
    buckets=_BUCKETS,
)
SERVER_MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Stream messages sent by the server.", _LABELS
)
CLIENT_STARTED = Counter("grpc_client_started_total", "RPCs started by clients.", _LABELS)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total", "RPCs completed by clients.", [*_LABELS, "grpc_code"]
)
CLIENT_HANDLING = Histogram(
    "grpc_client_handling_seconds",
    "Time for a client's RPC to complete.",
    _LABELS,
    buckets=_BUCKETS,
)


def _access_log(method: str, code: str, started: float) -> None:
    # DEBUG: an access log on demand (TAI_LOG_LEVEL=DEBUG), free when off.
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s in %.2f ms",
            method,
            code,
            (time.perf_counter() - started) * 1000,
            extra={"grpc_method": method, "grpc_code": code},
        )


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.strip("/").rpartition("/")
    return service, name


def _code_of(context: Context, error: BaseException | None) -> str:
    if error is None:
        return "OK"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    # A call whose client went away (or whose deadline passed) ends with the task cancelled.
    if isinstance(error, asyncio.CancelledError) or context.cancelled():
        return "CANCELLED"
    return "UNKNOWN"


class _MethodSeries:
    """One method's server series, resolved once when its handler is wrapped: `labels()` per
    call showed in the profile."""

    def __init__(self, kind: str, method: str) -> None:
        self.labels = (kind, *_split(method))
        self.started = SERVER_STARTED.labels(*self.labels)
        self.handled_ok = SERVER_HANDLED.labels(*self.labels, "OK")
        self.handling = SERVER_HANDLING.labels(*self.labels)

    def handled(self, code: str) -> Counter:
        return SERVER_HANDLED.labels(*self.labels, code)


class ServerMetricsInterceptor(BehaviorInterceptor):
    """Counts and times every call. Outermost, so it sees the final status of each."""

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        series = _MethodSeries("unary", method)

        async def measured(request: Any, context: Context) -> Any:
            series.started.inc()
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as error:
                code = _code_of(context, error)
                series.handled(code).inc()
                _access_log(method, code, started)
                raise
            finally:
                series.handling.observe(time.perf_counter() - started)
            series.handled_ok.inc()
            _access_log(method, "OK", started)
            return response

        return measured

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        series = _MethodSeries("server_stream", method)
        sent = SERVER_MSG_SENT.labels(*series.labels)

        async def measured(request: Any, context: Context) -> AsyncIterator[Any]:
            series.started.inc()
            started = time.perf_counter()
            try:
                async for item in behavior(request, context):
                    sent.inc()
                    yield item
            except BaseException as error:
                series.handled(_code_of(context, error)).inc()
                raise
            finally:
                series.handling.observe(time.perf_counter() - started)
            series.handled_ok.inc()

        return measured


class _ClientMetrics:
    @staticmethod
    def _labels(details: grpc.aio.ClientCallDetails, kind: str) -> tuple[str, str, str]:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        return (kind, *_split(method))


class UnaryClientMetrics(_ClientMetrics, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        labels = self._labels(client_call_details, "unary")
        CLIENT_STARTED.labels(*labels).inc()
        started = time.perf_counter()
        call = await continuation(client_call_details, request)
        try:
            code = (await call.code()).name
        finally:
            CLIENT_HANDLING.labels(*labels).observe(time.perf_counter() - started)
        CLIENT_HANDLED.labels(*labels, code).inc()
        return call


class StreamClientMetrics(_ClientMetrics, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        labels = self._labels(client_call_details, "server_stream")
        CLIENT_STARTED.labels(*labels).inc()
        started = time.perf_counter()
        call = await continuation(client_call_details, request)

        def done(finished: Any) -> None:
            CLIENT_HANDLING.labels(*labels).observe(time.perf_counter() - started)
            code = finished.code() if hasattr(finished, "code") else None
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            CLIENT_HANDLED.labels(*labels, name).inc()

        call.add_done_callback(done)
        return call


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return [UnaryClientMetrics(), StreamClientMetrics()]
