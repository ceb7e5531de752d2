"""Circuit breakers for calls to other services: one per target, so a target that keeps failing
is left alone for a while instead of being hammered (and the caller fails fast meanwhile).

States: CLOSED (calls go through; `failure_threshold` consecutive failures open it), OPEN
(calls fail at once with `CircuitOpenError` until `reset_timeout_seconds` have passed), then
HALF_OPEN (at most `success_threshold` trial calls at a time; `success_threshold` successes in
a row close it, any failure opens it again).

Hand-written rather than taken from PyPI, after checking the two maintained candidates:
purgatory 3.0.1 is asyncio-native but closes a half-open circuit after a single success (no
success threshold) and reads `time.time()` directly; pybreaker 1.4.1 has `success_threshold`,
but wraps coroutines only through Tornado and keeps its own wall clock (`datetime.now`). Neither
lets tests pin time, and the state machine below is some sixty lines.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import grpc

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """The target's circuit is open: the call was not made. Retry later."""

    def __init__(self, target: str, retry_after_seconds: float) -> None:
        super().__init__(
            f"circuit to {target} is open after repeated failures; "
            f"retry in {max(retry_after_seconds, 0.0):.1f}s"
        )
        self.target = target
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class BreakerConfig:
    """When a circuit opens and closes (the suite's defaults: 5 failures → open, 30 s →
    half-open, 2 successes → closed)."""

    failure_threshold: int = 5
    reset_timeout_seconds: float = 30.0
    success_threshold: int = 2

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.reset_timeout_seconds < 0:
            raise ValueError("reset_timeout_seconds must not be negative")
        if self.success_threshold < 1:
            raise ValueError("success_threshold must be at least 1")


# Statuses that say something about the target's health. Others (INVALID_ARGUMENT, NOT_FOUND,
# FAILED_PRECONDITION, …) are answers from a healthy target to a bad request.
_FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


def is_target_failure(error: BaseException) -> bool:
    """True when `error` suggests the target is unhealthy (what a breaker counts). An error
    raised from a gRPC error (the client SDK's typed errors) counts as that gRPC error."""
    rpc_error = error if isinstance(error, grpc.aio.AioRpcError) else error.__cause__
    if isinstance(rpc_error, grpc.aio.AioRpcError):
        return rpc_error.code() in _FAILURE_CODES
    return isinstance(error, TimeoutError | ConnectionError | OSError)


class CircuitBreaker:
    """The breaker of one target. Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        target: str,
        config: BreakerConfig | None = None,
        *,
        is_failure: Callable[[BaseException], bool] = is_target_failure,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._config = config or BreakerConfig()
        self._is_failure = is_failure
        self._monotonic = monotonic
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        """The current state (an open circuit whose timeout has passed reads HALF_OPEN)."""
        if (
            self._state is BreakerState.OPEN
            and self._monotonic() - self._opened_at >= self._config.reset_timeout_seconds
        ):
            self._state = BreakerState.HALF_OPEN
            self._successes = 0
            self._trials = 0
        return self._state

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Runs `fn()` through the breaker.

        Raises:
            CircuitOpenError: the circuit is open (or half-open with enough trials already in
                flight); `fn` was not called.
            Exception: whatever `fn` raised, after counting it.
        """
        self._before()
        try:
            result = await fn()
        except BaseException as error:
            self._after(success=not self._is_failure(error))
            raise
        self._after(success=True)
        return result

    def _before(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            retry_after = self._config.reset_timeout_seconds - (self._monotonic() - self._opened_at)
            raise CircuitOpenError(self.target, retry_after)
        if state is BreakerState.HALF_OPEN:
            if self._trials >= self._config.success_threshold:
                raise CircuitOpenError(self.target, 0.0)
            self._trials += 1

    def _after(self, *, success: bool) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
            if not success:
                self._open()
                return
            self._successes += 1
            if self._successes >= self._config.success_threshold:
                self._state = BreakerState.CLOSED
                self._failures = 0
            return
        if self._state is BreakerState.OPEN:
            # A call admitted before the circuit opened finished late: it changes nothing.
            return
        if success:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self._config.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._monotonic()
        self._successes = 0
        self._trials = 0


class CircuitBreakers:
    """One breaker per target, made on first use with the same config."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_new: Callable[[CircuitBreaker], None] | None = None,
    ) -> None:
        """`on_new` is told of each breaker made (e.g. to export its state as a metric)."""
        self._config = config or BreakerConfig()
        self._monotonic = monotonic
        self._on_new = on_new
        self._breakers: dict[str, CircuitBreaker] = {}

    def for_target(self, target: str) -> CircuitBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            breaker = CircuitBreaker(target, self._config, monotonic=self._monotonic)
            self._breakers[target] = breaker
            if self._on_new is not None:
                self._on_new(breaker)
        return breaker
