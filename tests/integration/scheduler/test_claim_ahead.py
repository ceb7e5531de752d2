"""Claim ahead: a replica claims the tasks falling due within its horizon (with their leases and
fencing tokens), holds them, and starts each at its due time — never before, the highest
priority first among those due at once. A task cancelled before it falls due never runs; a
replica that dies holding claims leaves them to another replica once their leases lapse, which
runs each once; a replica that stops releases them, keeping their due time.

On the embedded SQLite store and on Firestore (its emulator), with the embedded bus; through
real Scheduler servers over gRPC (in this process, or as processes where one is killed), and
one test drives the worker directly to cut the event path a cancel otherwise also takes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scheduler_helpers import NS, MakeScheduler, RunningScheduler, eventually, wait_status
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from support.scenarios import MakeProcess
from tai.v1 import scheduler_pb2
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_common.auth import ANONYMOUS
from tai_common.core import SystemClock, UuidFactory
from tai_common.gcp import FirestoreStore
from tai_common.messaging import OUTBOX_INDEXES, AuditTrail, events
from tai_common.ports import DocumentStore
from tai_common.sqlite import SqliteStore
from tai_scheduler import repository
from tai_scheduler.executors import ExecutorRegistry, TaskContext
from tai_scheduler.repository import TaskRepository
from tai_scheduler.service import TaskService, Wakeup
from tai_scheduler.task import Submission, TaskState
from tai_scheduler.worker import Worker, WorkerConfig
from tai_test_executors import ledger as test_ledger

# The conftest's schedulers hold leases of 3 s: the longest horizon they allow.
HORIZON_S = 1.5


@dataclass(frozen=True)
class Backend:
    """The store under test: its URL, and what a Scheduler process needs to reach it."""

    url: str
    env: Mapping[str, str] = field(default_factory=dict)


@pytest.fixture(params=["sqlite", "firestore"])
def backend(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Backend]:
    """The store of the test (the bus stays the embedded one, on `sqlite_url`)."""
    if request.param == "sqlite":
        yield Backend(sqlite_url)
        return
    # Looked up here, so that the SQLite run never starts the JVM.
    emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
    project = emulator.new_project()
    with emulator.environ():
        yield Backend(f"firestore://{project}", {"FIRESTORE_EMULATOR_HOST": emulator.host})
    emulator.wipe(project)


@pytest.fixture
def make(backend: Backend, make_scheduler: MakeScheduler) -> MakeScheduler:
    """Schedulers on the test's store, claiming `HORIZON_S` ahead unless told otherwise."""

    async def start(**overrides: Any) -> RunningScheduler:
        return await make_scheduler(
            **{"store": backend.url, "claim_ahead_seconds": HORIZON_S, **overrides}
        )

    return start


async def submit(
    s: RunningScheduler, ledger: Path, parameters: Mapping[str, str] | None = None, **kwargs: Any
) -> str:
    kwargs.setdefault("task_type", "test_record")
    receipt = await s.client.submit(
        parameters={"ledger": str(ledger), **(parameters or {})}, **kwargs
    )
    return receipt.resource_id


async def claimed_before(client: SchedulerClient, task_ids: list[str], at_ns: int) -> None:
    """Waits until every task is running (claimed), and checks it happened before `at_ns`."""
    for task_id in task_ids:
        task = await wait_status(client, task_id, ("running",), timeout=30)
        assert task.attempts[-1].started_at_ns == at_ns  # planned at its due time
    assert time.time_ns() < at_ns, "the tasks were not claimed ahead of their due time"


def starts(ledger: Path) -> dict[str, test_ledger.Execution]:
    return {r.task_id: r for r in test_ledger.executions(ledger)}


async def test_a_task_claimed_ahead_starts_at_its_due_time_not_before(
    make: MakeScheduler, ledger: Path
) -> None:
    scheduler = await make()
    at = time.time_ns() + 4 * NS
    task_id = await submit(scheduler, ledger, scheduled_time_ns=at)
    updates: list[scheduler_pb2.TaskUpdate] = []

    async def watch() -> None:
        async for update in scheduler.client.watch(task_id):
            updates.append(update)

    watching = asyncio.create_task(watch())
    await claimed_before(scheduler.client, [task_id], at)
    assert starts(ledger) == {}  # claimed, held, not started

    task = await wait_status(scheduler.client, task_id, timeout=30)
    await asyncio.wait_for(watching, 10)
    assert task.status == "completed"
    run = starts(ledger)[task_id]
    assert run.started_ns >= at
    assert run.started_ns - at < NS  # at its time, not at the next poll
    [attempt] = task.attempts
    # The attempt records when the replica started it: at its due time.
    assert at <= attempt.started_at_ns <= run.started_ns
    assert task.started_at_ns == attempt.started_at_ns
    assert [u.status for u in updates] == ["pending", "running", "completed"]
    assert updates[1].timestamp_ns < at  # the claim, ahead of the due time


async def test_a_claimed_task_cancelled_before_its_due_time_never_runs(
    make: MakeScheduler, ledger: Path
) -> None:
    holder = await make()
    # Claims only what is due: the task stays the holder's.
    other = await make(claim_ahead_seconds=0)
    at = time.time_ns() + 4 * NS
    task_id = await submit(holder, ledger, scheduled_time_ns=at)
    await claimed_before(holder.client, [task_id], at)
    assert (await other.client.get(task_id)).attempts[-1].worker == "test-scheduler-0"

    # Through the other replica: the holder hears of it from the task's event, or at the
    # latest from its own read at the due time.
    await other.client.cancel(task_id, reason="not needed after all")
    assert time.time_ns() < at, "cancelled too late to test a cancel before the due time"
    await asyncio.sleep((at - time.time_ns()) / NS + 1.5)
    task = await holder.client.get(task_id)
    assert task.status == "cancelled"
    assert task.attempts[-1].outcome == "cancelled"
    assert test_ledger.executions(ledger) == []


async def test_tasks_due_at_once_start_highest_priority_first(
    make: MakeScheduler, ledger: Path
) -> None:
    # One slot: all six are claimed ahead and held, then started one after another.
    scheduler = await make(worker_concurrency=1)
    at = time.time_ns() + 4 * NS
    priorities = [3, 9, 5, 1, 10, 7]
    ids = {
        await submit(scheduler, ledger, scheduled_time_ns=at, priority=p, task_id=f"ahead-{p}"): p
        for p in priorities
    }
    await claimed_before(scheduler.client, list(ids), at)
    for task_id in ids:
        assert (await wait_status(scheduler.client, task_id, timeout=30)).status == "completed"
    runs = test_ledger.executions(ledger)
    assert [ids[r.task_id] for r in runs] == sorted(priorities, reverse=True)
    assert all(r.started_ns >= at for r in runs)


async def test_a_held_claim_is_renewed_until_a_slot_frees(
    make: MakeScheduler, ledger: Path
) -> None:
    """Held past its lease (3 s) behind a running attempt, the claimed task keeps its lease
    (renewed like a running attempt's) and runs once, when the slot frees."""
    scheduler = await make(worker_concurrency=1)
    busy = await submit(scheduler, ledger, task_type="test_sleep", parameters={"seconds": "6"})
    await wait_status(scheduler.client, busy, ("running",))
    at = time.time_ns() + 2 * NS
    task_id = await submit(scheduler, ledger, scheduled_time_ns=at)
    await claimed_before(scheduler.client, [task_id], at)

    task = await wait_status(scheduler.client, task_id, timeout=30)
    assert task.status == "completed"
    [attempt] = task.attempts  # no lease lapsed, nobody else took it
    assert attempt.outcome == "completed"
    runs = starts(ledger)
    assert runs[task_id].started_ns >= runs[busy].ended_ns
    assert attempt.started_at_ns >= runs[busy].ended_ns > at  # when it started, not its plan


async def test_a_stopping_replica_releases_its_claims_keeping_their_due_time(
    make: MakeScheduler, ledger: Path
) -> None:
    first = await make(replica_id="first")
    at = time.time_ns() + 4 * NS
    task_id = await submit(first, ledger, scheduled_time_ns=at)
    await claimed_before(first.client, [task_id], at)
    await first.runtime.stop()

    # Claiming only what is due, the next replica finds the task as the first one left it.
    second = await make(replica_id="second", claim_ahead_seconds=0)
    released = await second.client.get(task_id)
    assert released.status == "pending"
    assert released.next_run_ns == at
    assert released.attempts[-1].outcome == "lease_lost"
    assert "before it started" in released.attempts[-1].error_message

    task = await wait_status(second.client, task_id, timeout=30)
    assert task.status == "completed"
    assert task.attempts[-1].worker == "second"
    run = starts(ledger)[task_id]
    assert (run.worker, run.replay) == ("second", False)
    assert run.started_ns >= at


@pytest.mark.slow
async def test_a_killed_replicas_claims_are_run_once_by_another(
    service_processes: MakeProcess, backend: Backend, sqlite_url: str, tmp_path: Path
) -> None:
    """A replica dies (SIGKILL) holding tasks it claimed ahead: once their leases lapse,
    another replica takes them over and runs each once."""
    ledger = tmp_path / "ledger.db"
    test_ledger.connect(ledger).close()  # made (and in WAL mode) before any replica opens it
    env = {
        "TAI_STORE": backend.url,
        "TAI_BUS": sqlite_url,
        "TAI_SQLITE_SYNCHRONOUS": "NORMAL",
        "TAI_TEST_LEDGER": str(ledger),
        "TAI_LEASE_SECONDS": "3",
        "TAI_CLAIM_AHEAD_SECONDS": str(HORIZON_S),
        **backend.env,
    }
    holder = await service_processes("tai_scheduler", TAI_REPLICA_ID="holder", **env).start()
    async with asyncio.timeout(120):
        async with open_channel(holder.target) as channel:
            client = SchedulerClient(channel)
            at = time.time_ns() + 5 * NS
            ids = [
                (await client.submit(task_type="test_record", scheduled_time_ns=at)).resource_id
                for _ in range(20)
            ]
            await claimed_before(client, ids, at)
        holder.kill()
        assert test_ledger.executions(ledger) == [], "the holder started a task before dying"

        heir = await service_processes("tai_scheduler", TAI_REPLICA_ID="heir", **env).start()
        async with open_channel(heir.target) as channel:
            client = SchedulerClient(channel)
            tasks = [await wait_status(client, task_id, timeout=60) for task_id in ids]
    for task in tasks:
        assert task.status == "completed", task
        assert [(a.worker, a.outcome) for a in task.attempts] == [
            ("holder", "lease_lost"),
            ("heir", "completed"),
        ]
    runs = test_ledger.executions(ledger)
    assert sorted(r.task_id for r in runs) == sorted(ids)  # each once
    assert {(r.worker, r.replay) for r in runs} == {("heir", False)}
    assert all(r.started_ns >= at for r in runs)


class _Recorder:
    """Records the tasks it starts (the executor of the directly driven worker)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        self.started.append(ctx.task_id)
        return {}


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    """The test's store, opened here with the Scheduler's indexes."""
    opened: DocumentStore
    if backend.url.startswith("sqlite:///"):
        opened = await SqliteStore.open(tmp_path / "direct.db", synchronous="NORMAL")
    else:
        opened = await FirestoreStore.open(backend.url.removeprefix("firestore://"))
    await opened.ensure_indexes([*repository.INDEXES, *OUTBOX_INDEXES])
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_claim_is_checked_at_its_due_time_when_no_event_tells_of_a_cancel(
    store: DocumentStore,
) -> None:
    """The worker hears of nothing (no bus, and the cancel goes through a service that does
    not know it): its read at the due time finds the task cancelled, and it never starts."""
    clock = SystemClock()
    event_factory = events.EventFactory("scheduler", clock, UuidFactory())
    recorder = _Recorder()
    registry = ExecutorRegistry({"record": recorder})
    service = TaskService(
        store,
        clock,
        UuidFactory(),
        event_factory,
        registry,
        on_committed=lambda: None,
        wakeup=Wakeup(),
        until_stopping=lambda awaitable: awaitable,
        audit=AuditTrail(store, clock, UuidFactory(), event_factory, lambda: None),
    )
    worker = Worker(
        store,
        clock,
        event_factory,
        registry,
        WorkerConfig(replica_id="holder", lease_seconds=10, claim_ahead_seconds=HORIZON_S),
        on_committed=lambda: None,
    )
    repo = TaskRepository(store)
    at = time.time_ns() + 3 * NS
    cancelled = await service.submit(
        Submission(task_type="record", scheduled_time_ns=at), principal="test"
    )
    kept = await service.submit(
        Submission(task_type="record", scheduled_time_ns=at), principal="test"
    )
    loop = asyncio.create_task(worker.run())
    try:
        for task_id in (cancelled.id, kept.id):
            await eventually(
                functools.partial(repo.get, task_id),
                lambda t: t is not None and t.status is TaskState.RUNNING,
            )
        assert time.time_ns() < at
        await service.cancel(cancelled.id, "", ANONYMOUS)
        assert worker.waiting == 2  # the worker did not hear of it
        await eventually(
            lambda: repo.get(kept.id), lambda t: t is not None and t.is_final, timeout=30
        )
        await asyncio.sleep(0.5)
        assert recorder.started == [kept.id]
        assert worker.waiting == 0
        done = await repo.get(cancelled.id)
        assert done is not None
        assert done.status is TaskState.CANCELLED
    finally:
        await worker.stop(0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
