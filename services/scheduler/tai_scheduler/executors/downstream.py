"""Calls from executors to other TAI services: through the target's circuit breaker, with the
attempt's remaining time as the deadline, and gRPC statuses turned into task errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from tai_client import TaiError
from tai_rpc.breaker import CircuitBreaker, CircuitOpenError

from tai_scheduler.executors.port import PermanentTaskError, RetryableTaskError, TaskContext

T = TypeVar("T")

# The target refused the request itself: sending it again cannot help.
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        # The Governor's answer to a stale expected version: the policy moved on.
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# The least time a call is given, so an attempt near its deadline still gets a clean answer.
MIN_CALL_TIMEOUT_SECONDS = 0.05


async def call(
    breaker: CircuitBreaker,
    ctx: TaskContext,
    fn: Callable[[float], Awaitable[T]],
    *,
    max_timeout: float,
) -> T:
    """Runs `fn(timeout)`, a `tai_client` call, through `breaker`, where `timeout` is the
    attempt's remaining time, at most `max_timeout`.

    Raises:
        PermanentTaskError: the target refused the request (a status in PERMANENT_CODES).
        RetryableTaskError: the circuit is open, or the target failed in a way that may pass.
    """
    timeout = max(MIN_CALL_TIMEOUT_SECONDS, min(max_timeout, ctx.remaining()))
    try:
        return await breaker.call(lambda: fn(timeout))
    except CircuitOpenError as error:
        raise RetryableTaskError(str(error)) from None
    except TaiError as error:
        message = f"{breaker.target}: {error.code.name}: {error.message}"
        if error.code in PERMANENT_CODES:
            raise PermanentTaskError(message) from None
        raise RetryableTaskError(message) from None
