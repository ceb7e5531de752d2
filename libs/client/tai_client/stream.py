"""A server stream whose failures raise `tai_client` errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar, cast

import grpc

from tai_client.errors import mapped_errors

T = TypeVar("T")


class Stream(Generic[T]):
    """The messages of a server-streaming call: iterate it (`async for`) or `read()` them one
    at a time; `cancel()` it to stop. The call has no deadline.

    When the call fails (the server refuses it, or stops), the read raises the `TaiError` for
    its status, as the unary methods do.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, T]) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[T]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[T]:
        with mapped_errors():
            async for message in self._call:
                yield message

    async def read(self) -> T | grpc.aio._EOF:
        """The next message, or `grpc.aio.EOF` when the server ended the stream."""
        with mapped_errors():
            message = await self._call.read()
        if message is grpc.aio.EOF:
            return grpc.aio.EOF
        # grpc's stubs type read() as returning `object`.
        return cast(T, message)

    def cancel(self) -> bool:
        """Ends the call (True if it was still running)."""
        return self._call.cancel()

    def cancelled(self) -> bool:
        return self._call.cancelled()

    def done(self) -> bool:
        return self._call.done()
