"""Fencing, step by step: two workers (replicas) on one real SQLite store; the first claims a
task and stalls without renewing its lease, the second takes the task over when the lease
lapses and completes it, then the first finishes its attempt — and its outcome is discarded,
because its fencing token is stale.

The workers are driven directly (no gRPC) so that the stall is exact: the first worker's
lease renewal is simply not running, and its executor returns only when the test says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from scheduler_helpers import wait_until
from tai_common.core import SystemClock, UuidFactory
from tai_common.messaging import OUTBOX_INDEXES, AuditTrail, events
from tai_common.sqlite import SqliteStore
from tai_scheduler import repository
from tai_scheduler.executors import ExecutorRegistry, TaskContext
from tai_scheduler.repository import TaskRepository
from tai_scheduler.service import TaskService, Wakeup
from tai_scheduler.task import Submission, Task, TaskState
from tai_scheduler.worker import Worker, WorkerConfig


class GateExecutor:
    """Returns `result` once `gate` is open."""

    def __init__(self, result: str, gate: asyncio.Event) -> None:
        self.result = result
        self.gate = gate
        self.started = asyncio.Event()

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        self.started.set()
        await self.gate.wait()
        return {"by": self.result}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "tai.db", synchronous="NORMAL")
    await store.ensure_indexes([*repository.INDEXES, *OUTBOX_INDEXES])
    yield store
    await store.close()


def worker(store: SqliteStore, name: str, executor: Any, concurrency: int = 16) -> Worker:
    return Worker(
        store,
        SystemClock(),
        events.EventFactory("scheduler", SystemClock(), UuidFactory()),
        ExecutorRegistry({"gate": executor}),
        WorkerConfig(
            replica_id=name,
            concurrency=concurrency,
            lease_seconds=0.5,
            fallback_poll_seconds=0.1,
        ),
        on_committed=lambda: None,
    )


async def test_a_stale_owner_cannot_overwrite_the_new_owners_result(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    stalled_gate, open_gate = asyncio.Event(), asyncio.Event()
    open_gate.set()
    stalled = GateExecutor("a", stalled_gate)
    event_factory = events.EventFactory("scheduler", SystemClock(), UuidFactory())
    service = TaskService(
        store,
        SystemClock(),
        UuidFactory(),
        event_factory,
        ExecutorRegistry({"gate": stalled}),
        on_committed=lambda: None,
        wakeup=Wakeup(),
        until_stopping=lambda awaitable: awaitable,
        audit=AuditTrail(store, SystemClock(), UuidFactory(), event_factory, lambda: None),
    )
    task = await service.submit(Submission(task_type="gate"), principal="test")
    repo = TaskRepository(store)

    async def current() -> Task:
        found = await repo.get(task.id)
        assert found is not None
        return found

    # One slot, held by the stalled attempt: the first worker cannot re-claim the task itself.
    a = worker(store, "replica-a", stalled, concurrency=1)
    b = worker(store, "replica-b", GateExecutor("b", open_gate))
    # Only the claim loops run: neither worker renews its leases.
    loops = [asyncio.create_task(a.run())]
    try:
        await asyncio.wait_for(stalled.started.wait(), 10)
        claimed_by_a = await current()
        assert (claimed_by_a.status, claimed_by_a.lease_owner) == (TaskState.RUNNING, "replica-a")

        loops.append(asyncio.create_task(b.run()))
        done = None
        for _ in range(200):
            done = await current()
            if done.status is TaskState.COMPLETED:
                break
            await asyncio.sleep(0.05)
        assert done is not None
        assert done.status is TaskState.COMPLETED
        assert done.result == {"by": "b"}
        assert done.fencing_token == claimed_by_a.fencing_token + 1
        assert [(x.worker, x.outcome) for x in done.attempts] == [
            ("replica-a", "lease_lost"),
            ("replica-b", "completed"),
        ]

        with caplog.at_level(logging.WARNING, logger="tai_scheduler.worker"):
            stalled_gate.set()
            await wait_until(lambda: "discarded" in caplog.text, timeout=10)
        assert await current() == done
    finally:
        await a.stop(0)
        await b.stop(0)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
