"""Helpers shared by the Scheduler's integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from support.running import RunningScheduler
from tai.v1 import scheduler_pb2
from tai_client.scheduler import SchedulerClient

T = TypeVar("T")


MakeScheduler = Callable[..., Awaitable[RunningScheduler]]

FINAL = ("completed", "failed", "cancelled")
NS = 1_000_000_000


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> T:
    """Calls `probe` until `accept` holds for its value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last value:\n{value}")
        await asyncio.sleep(interval)


async def wait_status(
    client: SchedulerClient, task_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 20
) -> scheduler_pb2.TaskStatus:
    return await eventually(
        lambda: client.get(task_id), lambda t: t.status in statuses, timeout=timeout
    )


async def wait_until(condition: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """Waits until `condition()` holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(0.05)
