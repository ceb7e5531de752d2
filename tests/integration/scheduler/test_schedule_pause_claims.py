"""A pause against claim-ahead: a run of a schedule that a replica claimed ahead of its due time
never starts once the schedule is paused, whether the replica hears of the pause (its run's
`task.cancelled`) or only finds out by its read at the due time.

The worker and the service are driven directly on a real SQLite store, as in
`test_claim_ahead.py`, so the test decides what the worker hears. The schedule's runs are made
at their fire time, so no API makes a run due later than now today; the run is written into
the store directly, due in a few seconds, as a run made ahead would be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from scheduler_helpers import NS, eventually
from tai_common.auth import ANONYMOUS
from tai_common.core import SystemClock, UuidFactory
from tai_common.messaging import OUTBOX_INDEXES, AuditTrail, events
from tai_common.ports import DocumentStore, Transaction
from tai_common.sqlite import SqliteStore
from tai_scheduler import repository
from tai_scheduler.executors import ExecutorRegistry, TaskContext
from tai_scheduler.repository import TaskRepository
from tai_scheduler.service import TaskService, Wakeup
from tai_scheduler.task import Submission, TaskState
from tai_scheduler.worker import Worker, WorkerConfig


class _Recorder:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        self.started.append(ctx.task_id)
        return {}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DocumentStore]:
    opened = await SqliteStore.open(tmp_path / "direct.db", synchronous="NORMAL")
    await opened.ensure_indexes([*repository.INDEXES, *OUTBOX_INDEXES])
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("hears", [True, False], ids=["hears-of-it", "reads-at-due-time"])
async def test_a_run_claimed_ahead_never_starts_once_its_schedule_is_paused(
    store: DocumentStore, hears: bool
) -> None:
    clock = SystemClock()
    event_factory = events.EventFactory("scheduler", clock, UuidFactory())
    recorder = _Recorder()
    registry = ExecutorRegistry({"record": recorder})
    wakeup = Wakeup()
    service = TaskService(
        store,
        clock,
        UuidFactory(),
        event_factory,
        registry,
        on_committed=lambda: None,
        wakeup=wakeup,
        until_stopping=lambda awaitable: awaitable,
        audit=AuditTrail(store, clock, UuidFactory(), event_factory, lambda: None),
    )
    worker = Worker(
        store,
        clock,
        event_factory,
        registry,
        WorkerConfig(replica_id="holder", lease_seconds=10, claim_ahead_seconds=1.5),
        on_committed=lambda: None,
    )
    if hears:
        wakeup.subscribe(worker.wake, ended=worker.task_ended)
    repo = TaskRepository(store)
    parent = await service.submit(
        Submission(task_type="record", task_id="yearly", cron_schedule="0 0 1 1 *"),
        principal="anonymous",
    )
    at = time.time_ns() + 3 * NS
    run = replace(parent.child(time.time_ns(), at, held=False), next_run_ns=at)

    async def write(tx: Transaction) -> None:
        repo.create_in(tx, run)
        repo.write_in(tx, replace(parent, active_child_id=run.id))

    await store.run_transaction(write)
    loop = asyncio.create_task(worker.run())
    try:
        claimed = await eventually(
            lambda: repo.get(run.id), lambda t: t is not None and t.status is TaskState.RUNNING
        )
        assert claimed is not None
        assert claimed.attempts[-1].started_at_ns == at  # claimed ahead, planned at its time
        assert time.time_ns() < at, "claimed too late to test a pause before the due time"
        change = await service.pause("yearly", "incident", ANONYMOUS)
        assert change.result["cancelled_runs"] == "1"
        assert time.time_ns() < at
        if hears:
            assert worker.waiting == 0  # given up at once
        await asyncio.sleep((at - time.time_ns()) / NS + 1.0)
        assert recorder.started == []
        assert worker.waiting == 0
        done = await repo.get(run.id)
        assert done is not None
        assert done.status is TaskState.CANCELLED
        assert done.error_message == (
            "cancelled: recurring task yearly was paused by anonymous: incident"
        )
    finally:
        await worker.stop(0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
