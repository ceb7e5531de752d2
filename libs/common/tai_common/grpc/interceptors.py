"""One way to write a server interceptor: wrap the behaviours of the unary and
server-streaming handlers (the only kinds TAI serves) with an async function that runs around
each call. The error mapping, authentication and rate limiting are each such a wrapper."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


class BehaviorInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses override `wrap_unary` and `wrap_stream` (given the method name).

    grpc.aio runs `intercept_service` for every call; the wrapped handler is built once per
    method and handler and reused, so a call pays for the wrapper's work only."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        return behavior

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        return behavior

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # The stubs type behaviours as synchronous; on grpc.aio they are coroutines.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(method, cast(Any, handler.unary_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(method, cast(Any, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class GuardInterceptor(BehaviorInterceptor):
    """Runs `guard(method, context)` before each call; raising refuses the call."""

    def __init__(self, guard: Callable[[str, Context], Awaitable[None]]) -> None:
        super().__init__()
        self._guard = guard

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def guarded(request: Any, context: Context) -> Any:
            await self._guard(method, context)
            return await behavior(request, context)

        return guarded

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            await self._guard(method, context)
            async for item in behavior(request, context):
                yield item

        return guarded
