"""Requests whose bytes are not a message of their type get INVALID_ARGUMENT.

grpc.aio parses each request with its method handler's `request_deserializer` before any
interceptor or handler runs, and answers a parse error with UNKNOWN ("Unexpected
DecodeError"). `RequestParsingInterceptor` gives every handler a deserializer that returns an
`Unparsable` marker instead of raising, and answers the marker with INVALID_ARGUMENT before the
handler sees it: at the start of a call taking one request, and in the middle of a request
stream, where it ends the call. A request that parses costs one `try` and one type check.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from tai_common.core import InvalidArgument
from tai_common.grpc.errors import abort_for
from tai_common.grpc.interceptors import Context, Continuation
from tai_common.grpc.streams import as_generator

Deserializer = Callable[[bytes], Any]
# Any behaviour of a handler: unary or streaming, coroutine or async generator.
Behavior = Callable[[Any, Context], Any]

# The field the error names: the request as a whole.
REQUEST_FIELD = "request"


@dataclass(frozen=True, slots=True)
class Unparsable:
    """What a request's bytes become when they are not a message of the method's type."""

    type_name: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(REQUEST_FIELD, f"could not be parsed as {self.type_name}")


def _type_name(deserializer: Deserializer, method: str) -> str:
    # Generated handlers deserialize with the message class's `FromString`.
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return full_name if isinstance(full_name, str) else f"the request message of {method}"


def tolerant(deserializer: Deserializer, method: str) -> Deserializer:
    """`deserializer`, returning an `Unparsable` marker where it would raise DecodeError."""
    marker = Unparsable(_type_name(deserializer, method))

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return marker

    return parse


def _one_request(behavior: Behavior) -> Behavior:
    """Answers a marker in place of the request with INVALID_ARGUMENT, else runs `behavior`."""
    if inspect.isasyncgenfunction(behavior):

        async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
            if type(request) is Unparsable:
                await abort_for(request.error(), context)
            async for item in behavior(request, context):
                yield item

        return streamed

    async def called(request: Any, context: Context) -> Any:
        if type(request) is Unparsable:
            await abort_for(request.error(), context)
        return await behavior(request, context)

    return called


async def _checked(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        if type(request) is Unparsable:
            # Raises AbortError through the handler's loop, which ends the call.
            await abort_for(request.error(), context)
        yield request


def _request_stream(behavior: Behavior) -> Behavior:
    """Ends the call with INVALID_ARGUMENT at the first marker the handler reads from its
    request iterator (a handler reading with `context.read()` gets the marker itself)."""
    if inspect.isasyncgenfunction(behavior):

        async def streamed(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
            async for item in behavior(_checked(requests, context), context):
                yield item

        return streamed

    async def called(requests: AsyncIterable[Any], context: Context) -> Any:
        return await behavior(_checked(requests, context), context)

    return called


class RequestParsingInterceptor(grpc.aio.ServerInterceptor):
    """Answers requests that do not parse with INVALID_ARGUMENT, naming the message type.

    Innermost, so it sees the servicers' own handlers (the interceptors outside copy its
    deserializer), and authentication and rate limits apply before it. Being innermost, it
    also serves a stream written with `context.write` as an async generator (see
    `tai_common.grpc.streams`). Each method's handler is rebuilt once and reused."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # no handler, or one that takes the raw bytes
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    deserializer = tolerant(cast(Deserializer, handler.request_deserializer), method)
    serializer = handler.response_serializer
    # The stubs type behaviours as synchronous; on grpc.aio they are coroutines or async
    # generators.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _one_request(cast(Any, handler.unary_unary)), deserializer, serializer
        )
    if handler.unary_stream is not None:
        behavior = cast(Any, handler.unary_stream)
        if inspect.iscoroutinefunction(behavior):
            # Written with `context.write`: the interceptors outside need a generator.
            behavior = as_generator(behavior)
        return grpc.unary_stream_rpc_method_handler(
            _one_request(behavior), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _request_stream(cast(Any, handler.stream_unary)), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _request_stream(cast(Any, handler.stream_stream)), deserializer, serializer
        )
    return handler
