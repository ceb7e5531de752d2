"""`tai_scheduler_due_tasks`: the tasks that are due and that no live lease holds (pending and
due, or running under a lapsed lease), as real Scheduler processes report it on /metrics, on
the embedded SQLite store and on Firestore (its emulator).

Every replica counts the same store, so each shows the same number: the chart's KEDA trigger
takes the max across pods.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scheduler_helpers import NS, wait_status
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from support.processes import ServiceProcess, free_port
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_common.gcp import FirestoreStore
from tai_common.ports import DocumentStore
from tai_common.sqlite import SqliteStore
from tai_scheduler.repository import INDEXES, TASKS, TaskRepository
from tai_scheduler.task import HELD_NS, RetryConfig, Task, TaskState
from tai_test_executors import ledger as test_ledger

MakeProcess = Callable[..., ServiceProcess]

# Loopback scrapes never go through a proxy the environment may configure.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(params=["sqlite", "firestore"])
def store_env(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[dict[str, str]]:
    """TAI_* settings for the store under test (the bus stays the embedded one)."""
    if request.param == "sqlite":
        yield {"TAI_STORE": sqlite_url, "TAI_BUS": sqlite_url, "TAI_SQLITE_SYNCHRONOUS": "NORMAL"}
        return
    # Looked up here, so that the SQLite run never starts the JVM.
    emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
    project = emulator.new_project()
    yield {
        "TAI_STORE": f"firestore://{project}",
        "TAI_BUS": sqlite_url,
        "FIRESTORE_EMULATOR_HOST": emulator.host,
    }
    emulator.wipe(project)


@pytest.fixture
async def store(
    request: pytest.FixtureRequest, store_env: dict[str, str]
) -> AsyncIterator[DocumentStore]:
    """The store of `store_env`, opened in this process with the Scheduler's indexes."""
    url = store_env["TAI_STORE"]
    opened: DocumentStore
    if url.startswith("sqlite:///"):
        opened = await SqliteStore.open(Path(url.removeprefix("sqlite:///")))
    else:
        emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
        with emulator.environ():
            opened = await FirestoreStore.open(url.removeprefix("firestore://"))
    await opened.ensure_indexes(INDEXES)
    try:
        yield opened
    finally:
        await opened.close()


def due_tasks_on(metrics_port: int) -> float:
    """The value of tai_scheduler_due_tasks on a process's /metrics."""
    with _http.open(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "tai_scheduler_due_tasks":
            (sample,) = family.samples
            return sample.value
    raise AssertionError(f"no tai_scheduler_due_tasks on :{metrics_port}/metrics:\n{text}")


async def wait_gauge(metrics_port: int, expected: float, timeout: float = 30.0) -> None:
    """Waits until the process's gauge reads `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(due_tasks_on, metrics_port)
        if value == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tai_scheduler_due_tasks is {value}, not {expected}")
        await asyncio.sleep(0.1)


def task(task_id: str, status: TaskState, *, next_run_ns: int = 0, lease_until_ns: int = 0) -> Task:
    return Task(
        id=task_id,
        task_type="test_record",
        parameters={},
        priority=5,
        scheduled_time_ns=0,
        created_at_ns=1,
        retry=RetryConfig(),
        timeout_seconds=60,
        status=status,
        next_run_ns=next_run_ns,
        lease_until_ns=lease_until_ns,
        lease_owner="replica-x" if status is TaskState.RUNNING else "",
    )


async def test_count_due_counts_what_a_free_replica_would_claim(store: DocumentStore) -> None:
    now = 1_000 * NS
    tasks = [
        # Counted: due now, overdue, and running under leases that ended.
        task("due-now", TaskState.PENDING, next_run_ns=now),
        task("overdue", TaskState.PENDING, next_run_ns=now - 60 * NS),
        task("lease-lapsed", TaskState.RUNNING, next_run_ns=now - 5 * NS, lease_until_ns=now),
        task("lease-long-gone", TaskState.RUNNING, lease_until_ns=now - 60 * NS),
        # Not counted: not due yet, held behind its predecessor, running under a live lease,
        # and finished.
        task("later", TaskState.PENDING, next_run_ns=now + 1),
        task("held", TaskState.PENDING, next_run_ns=HELD_NS),
        task("leased", TaskState.RUNNING, next_run_ns=now - NS, lease_until_ns=now + 1),
        task("done", TaskState.COMPLETED),
        task("failed", TaskState.FAILED),
        task("cancelled", TaskState.CANCELLED),
    ]
    for each in tasks:
        await store.set(TASKS, each.id, each.to_doc())
    repo = TaskRepository(store)
    assert await repo.count_due(now) == 4
    # An hour on, the pending one falls due and the live lease has lapsed.
    assert await repo.count_due(now + 3600 * NS) == 6


@pytest.mark.slow
async def test_replicas_report_due_unclaimed_tasks_on_metrics(
    service_processes: MakeProcess, store_env: dict[str, str], tmp_path: Path
) -> None:
    """Two replicas that can run one attempt each, both busy: what is submitted next waits, and
    so does a task whose replica died holding it, once its lease lapses. Both replicas count
    the same tasks; running under a live lease or scheduled later does not count; cancelled,
    the gauge is back to 0."""
    ledger = tmp_path / "ledger.db"
    test_ledger.connect(ledger).close()  # made (and in WAL mode) before any replica opens it
    ports = {"a": free_port(), "b": free_port()}

    def replica(name: str) -> ServiceProcess:
        return service_processes(
            "tai_scheduler",
            **store_env,
            TAI_TEST_LEDGER=str(ledger),
            TAI_REPLICA_ID=f"sched-{name}",
            TAI_METRICS_PORT=str(ports[name]),
            TAI_WORKER_CONCURRENCY="1",
            TAI_LEASE_SECONDS="1.5",
            TAI_DUE_TASKS_COUNT_SECONDS="0.2",
        )

    async def sleeping(client: SchedulerClient, *, later: bool = False) -> str:
        receipt = await client.submit(
            task_type="test_sleep",
            parameters={"seconds": "120"},
            scheduled_time_ns=time.time_ns() + 3600 * NS if later else 0,
            timeout_seconds=600,
        )
        return receipt.resource_id

    first = await replica("a").start()
    await wait_gauge(ports["a"], 0)
    # One running attempt per replica, each under a lease its replica renews.
    async with open_channel(first.target) as channel:
        client = SchedulerClient(channel)
        held_by_a = await sleeping(client)
        running = await wait_status(client, held_by_a, ("running",))
    assert running.attempts[-1].worker == "sched-a"
    second = await replica("b").start()
    async with open_channel(second.target) as channel:
        client = SchedulerClient(channel)
        held_by_b = await sleeping(client)
        running = await wait_status(client, held_by_b, ("running",))
        assert running.attempts[-1].worker == "sched-b"
        await sleeping(client, later=True)
        await wait_gauge(ports["b"], 0)

        waiting = [await sleeping(client), await sleeping(client)]
        await wait_gauge(ports["b"], 2)
        await wait_gauge(ports["a"], 2)  # the same number on every replica: max, not sum

        # Replica a dies without releasing its task; once the lease lapses the task is due
        # again, and b (busy) cannot take it.
        first.kill()
        await wait_gauge(ports["b"], 3)
        assert (await client.get(held_by_a)).status == "running"

        for task_id in (held_by_a, *waiting):
            await client.cancel(task_id, reason="test over")
        await wait_gauge(ports["b"], 0)
        assert (await client.get(held_by_b)).status == "running"
