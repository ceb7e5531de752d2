"""The circuit breaker the Scheduler's executors call through, on a pinned clock."""

from __future__ import annotations

import grpc
import pytest
from tai_rpc.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpenError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Failure(ConnectionError):
    pass


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise Failure("down")


async def refused() -> str:
    # A healthy target's answer to a bad request: not the target's failure.
    raise ValueError("bad request")


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        "governor:50051",
        BreakerConfig(failure_threshold=5, reset_timeout_seconds=30, success_threshold=2),
        is_failure=lambda error: isinstance(error, Failure),
        monotonic=clock,
    )


async def test_five_consecutive_failures_open_the_circuit() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        with pytest.raises(Failure):
            await b.call(fail)
    assert b.state is BreakerState.CLOSED
    with pytest.raises(Failure):
        await b.call(fail)
    assert b.state is BreakerState.OPEN
    called = False

    async def spy() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(CircuitOpenError) as caught:
        await b.call(spy)
    assert not called
    assert caught.value.retry_after_seconds == pytest.approx(30)


async def test_a_success_resets_the_failure_count() -> None:
    b = breaker(FakeClock())
    for _ in range(4):
        with pytest.raises(Failure):
            await b.call(fail)
    await b.call(ok)
    for _ in range(4):
        with pytest.raises(Failure):
            await b.call(fail)
    assert b.state is BreakerState.CLOSED


async def test_answers_of_a_healthy_target_do_not_count() -> None:
    b = breaker(FakeClock())
    for _ in range(10):
        with pytest.raises(ValueError, match="bad request"):
            await b.call(refused)
    assert b.state is BreakerState.CLOSED


async def test_half_open_after_the_timeout_then_two_successes_close() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(5):
        with pytest.raises(Failure):
            await b.call(fail)
    clock.now += 29.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN
    assert await b.call(ok) == "ok"
    assert b.state is BreakerState.HALF_OPEN
    assert await b.call(ok) == "ok"
    assert b.state is BreakerState.CLOSED


async def test_a_failure_while_half_open_opens_again() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(5):
        with pytest.raises(Failure):
            await b.call(fail)
    clock.now += 31
    await b.call(ok)
    with pytest.raises(Failure):
        await b.call(fail)
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await b.call(ok)


def test_default_failures_are_statuses_of_an_unhealthy_target() -> None:
    from tai_rpc.breaker import is_target_failure

    class Rpc(grpc.aio.AioRpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="x")

    assert is_target_failure(Rpc(grpc.StatusCode.UNAVAILABLE))
    assert is_target_failure(Rpc(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not is_target_failure(Rpc(grpc.StatusCode.INVALID_ARGUMENT))
    assert not is_target_failure(Rpc(grpc.StatusCode.FAILED_PRECONDITION))


def test_one_breaker_per_target() -> None:
    breakers = CircuitBreakers()
    assert breakers.for_target("a:1") is breakers.for_target("a:1")
    assert breakers.for_target("a:1") is not breakers.for_target("b:2")
