"""The executor port: what runs a task of one type.

A plug-in registers a factory in the `tai.task_executors` entry-point group under the task
type it runs (the built-ins register themselves the same way, in the Scheduler's
pyproject.toml)::

    [project.entry-points."tai.task_executors"]
    my_type = "my_package.executors:create"

The factory takes the `ExecutorEnvironment` and returns a `TaskExecutor`. An executor may also
implement `ParameterValidator`, so bad parameters are refused at submit time.

Delivery is at least once: an attempt may be re-run after a replica crash, so executors use
`TaskContext.idempotency_key` (the same for every attempt of one task) to make their effect
happen once, e.g. by passing it on as the request id of the call they make.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import grpc
from tai_common.core import ServiceSettings
from tai_rpc.breaker import CircuitBreakers
from tai_rpc.channel import ChannelOptions, open_channel


@dataclass(frozen=True)
class TaskContext:
    """What an executor learns about the attempt it runs."""

    task_id: str
    task_type: str
    parameters: Mapping[str, str]
    # 1 for the first attempt.
    attempt: int
    max_attempts: int
    # The same for every attempt of this task.
    idempotency_key: str
    # When the attempt's time is up, on the `time.monotonic()` clock.
    deadline: float
    # The scheduler replica running the attempt.
    worker: str = ""

    def remaining(self) -> float:
        """Seconds left before the attempt's deadline (never negative): the timeout to give
        the calls the executor makes."""
        return max(0.0, self.deadline - time.monotonic())


class TaskExecutor(Protocol):
    """Runs tasks of one type."""

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        """Runs one attempt; returns the task's result.

        Raises:
            PermanentTaskError: the task cannot succeed; it fails without further attempts.
            Exception: anything else fails the attempt, which is retried per the task's retry
                config.
        """
        ...


@runtime_checkable
class ParameterValidator(Protocol):
    """Optional: checks a task's parameters when it is submitted."""

    def validate(self, parameters: Mapping[str, str]) -> None:
        """Raises `tai_common.core.InvalidArgument` naming the parameter
        (`parameters[policy_id]`)."""
        ...


class PermanentTaskError(Exception):
    """The task fails at once, without retries (bad parameters, a refused request)."""


class RetryableTaskError(Exception):
    """The attempt failed for a reason that may pass (a target unavailable or overloaded)."""


class ChannelPool:
    """One gRPC channel per target, opened on first use and shared by the executors."""

    def __init__(self, options: ChannelOptions | None = None) -> None:
        self.options = options or ChannelOptions()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = open_channel(target, self.options)
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


@dataclass
class ExecutorEnvironment:
    """What executor factories are built from."""

    settings: ServiceSettings
    channels: ChannelPool = field(default_factory=ChannelPool)
    breakers: CircuitBreakers = field(default_factory=CircuitBreakers)


ExecutorFactory = Callable[[ExecutorEnvironment], TaskExecutor]
