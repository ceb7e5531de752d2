"""A server stream written with `context.write`, served as an async generator.

grpc.aio accepts two styles of server-streaming behaviour: an async generator, and a coroutine
that writes each response with `context.write` (the stock health service's Watch). The
interceptors around TAI's handlers, OpenTelemetry's included, iterate the behaviour they wrap,
so they only work with the first style; `as_generator` turns the second into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tai_common.grpc.interceptors import Context

WritingBehavior = Callable[[Any, Context], Awaitable[None]]
GeneratorBehavior = Callable[[Any, Context], AsyncIterator[Any]]


class _WritesToQueue:
    """The call's context, except that `write` hands the response to the generator."""

    def __init__(self, context: Context, queue: asyncio.Queue[Any]) -> None:
        self._context = context
        self._queue = queue

    async def write(self, message: Any) -> None:
        await self._queue.put(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def as_generator(behavior: WritingBehavior) -> GeneratorBehavior:
    """`behavior`, yielding what it writes; its error, if any, ends the stream."""

    async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
        # One response at a time, so a write waits for the one before to be taken, as
        # `context.write` waits for it to be sent.
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        finished = object()

        async def run() -> None:
            try:
                await behavior(request, _WritesToQueue(context, queue))  # type: ignore[arg-type]
            finally:
                await queue.put(finished)

        writer = asyncio.ensure_future(run())
        try:
            while (message := await queue.get()) is not finished:
                yield message
            await writer  # raises the behaviour's error, if any
        finally:
            writer.cancel()

    return streamed
