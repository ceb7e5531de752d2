"""The Scheduler per namespace, over the wire: each namespace's tasks run, are seen, changed and
streamed only in it, and the quota `max_open_tasks` admits exactly its number of open tasks,
however many replicas submit at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from scheduler_helpers import NS, MakeScheduler, wait_status, wait_until
from support.rpc_errors import expect_error
from support.running import RunningScheduler
from tai.v1 import scheduler_pb2
from tai_client import open_channel
from tai_client.errors import NotFound
from tai_client.scheduler import SchedulerClient
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace
from tai_common.namespacing import Quotas
from tai_rpc import ChannelOptions

NOT_FOUND = grpc.StatusCode.NOT_FOUND

ClientIn = Callable[[RunningScheduler, str], SchedulerClient]


@pytest.fixture
async def client_in() -> AsyncIterator[ClientIn]:
    """Clients of a Scheduler that work in a namespace (its `x-tai-namespace` on every call),
    their channels closed at the end."""
    async with AsyncExitStack() as channels:

        def make(scheduler: RunningScheduler, namespace: str) -> SchedulerClient:
            options = ChannelOptions(namespace=namespace)
            channel = open_channel(scheduler.target, options)
            channels.push_async_callback(channel.close)
            return SchedulerClient(channel, options)

        yield make


async def create_namespace(
    scheduler: RunningScheduler, name: str, quotas: Quotas | None = None
) -> None:
    """Creates the namespace in the store the Scheduler serves (as the Governor would, from a
    call in the default namespace: the store runs transactions only inside one)."""
    with in_namespace(DEFAULT_NAMESPACE):
        await scheduler.runtime.namespaces.create(
            name, description="test", quotas=quotas or Quotas(), created_by="test"
        )


async def submit(client: SchedulerClient, ledger: Path, **kwargs: object) -> str:
    receipt = await client.submit(
        task_type=str(kwargs.pop("task_type", "test_record")),
        parameters={"ledger": str(ledger)},
        **kwargs,  # type: ignore[arg-type]
    )
    return receipt.resource_id


async def test_tasks_of_two_namespaces_both_run_and_are_seen_only_in_their_own(
    scheduler: RunningScheduler, ledger: Path, client_in: ClientIn
) -> None:
    await create_namespace(scheduler, "team-a")
    await create_namespace(scheduler, "team-b")
    a, b = client_in(scheduler, "team-a"), client_in(scheduler, "team-b")

    a_task = await submit(a, ledger)
    b_task = await submit(b, ledger)
    assert (await wait_status(a, a_task)).status == "completed"
    assert (await wait_status(b, b_task)).status == "completed"

    # A recurring task of A's, so that pausing it would be possible in A.
    a_schedule = await submit(a, ledger, cron_schedule="0 0 1 1 *")
    for task_id in (a_task, a_schedule):
        await expect_error(b.get(task_id), NOT_FOUND)
        await expect_error(b.cancel(task_id, reason="not mine"), NOT_FOUND)
    await expect_error(b.pause(a_schedule), NOT_FOUND)
    # Nor does the default namespace see them.
    await expect_error(scheduler.client.get(a_task), NOT_FOUND)

    listed_b = {t.task_id async for t in b.list_all()}
    listed_a = {t.task_id async for t in a.list_all()}
    assert listed_b == {b_task}
    assert listed_a == {a_task, a_schedule}
    # A's schedule is untouched by B's attempts.
    assert (await a.get(a_schedule)).status == "pending"
    await a.pause(a_schedule)


async def test_a_stream_carries_only_its_namespaces_updates(
    scheduler: RunningScheduler, ledger: Path, client_in: ClientIn
) -> None:
    await create_namespace(scheduler, "team-a")
    await create_namespace(scheduler, "team-b")
    a, b = client_in(scheduler, "team-a"), client_in(scheduler, "team-b")
    streams = {"a": a.watch(), "b": b.watch()}
    received: dict[str, list[scheduler_pb2.TaskUpdate]] = {"a": [], "b": []}

    async def read(name: str) -> None:
        async for update in streams[name]:
            received[name].append(update)

    readers = [asyncio.create_task(read(name)) for name in streams]
    try:
        # Each stream listens once a probe task of its namespace shows on it.
        later = time.time_ns() + 600 * NS
        probes = {"a": await submit(a, ledger, scheduled_time_ns=later)}
        probes["b"] = await submit(b, ledger, scheduled_time_ns=later)

        def seen(name: str, task_id: str, status: str = "") -> Callable[[], bool]:
            return lambda: any(
                u.task_id == task_id and (not status or u.status == status) for u in received[name]
            )

        for name, probe in probes.items():
            await wait_until(seen(name, probe))

        a_task = await submit(a, ledger)
        b_task = await submit(b, ledger)
        for name, task_id in (("a", a_task), ("b", b_task)):
            await wait_until(seen(name, task_id, "completed"))
    finally:
        for stream in streams.values():
            stream.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    assert {u.task_id for u in received["b"]} == {probes["b"], b_task}
    assert {u.task_id for u in received["a"]} == {probes["a"], a_task}
    # Watching one of A's tasks from B: it is not there.
    with pytest.raises(NotFound):
        async for _ in b.watch(a_task):
            pass


async def test_max_open_tasks_admits_exactly_its_number_under_concurrent_submits(
    make_scheduler: MakeScheduler, ledger: Path, client_in: ClientIn
) -> None:
    first, second = await make_scheduler(), await make_scheduler()
    await create_namespace(first, "capped", Quotas(max_open_tasks=3))
    await create_namespace(first, "free")
    clients = [client_in(first, "capped"), client_in(second, "capped")]
    later = time.time_ns() + 600 * NS

    async def attempt(index: int) -> str | grpc.aio.AioRpcError | Exception:
        try:
            return await submit(clients[index % 2], ledger, scheduled_time_ns=later)
        except Exception as error:
            return error

    outcomes = await asyncio.gather(*(attempt(i) for i in range(12)))
    admitted = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(admitted) == 3, outcomes
    for error in refused:
        assert getattr(error, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED, repr(error)
        assert "namespace 'capped' quota max_open_tasks=3 reached" in str(error), repr(error)
    listed = [t.task_id async for t in clients[0].list_all()]
    assert sorted(listed) == sorted(admitted)

    # Another namespace is not held by it.
    free = client_in(first, "free")
    for _ in range(4):
        await submit(free, ledger, scheduled_time_ns=later)

    # A task that ends frees its place.
    await clients[0].cancel(admitted[0], reason="make room")
    await submit(clients[1], ledger, scheduled_time_ns=later)
    await expect_error(
        submit(clients[0], ledger, scheduled_time_ns=later), grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    # A quota set on a namespace that already holds open tasks counts them.
    with in_namespace(DEFAULT_NAMESPACE):
        await first.runtime.namespaces.set_quotas("free", Quotas(max_open_tasks=5))
    free_on_first = client_in(first, "free")
    await submit(free_on_first, ledger, scheduled_time_ns=later)  # the 5th
    error = await expect_error(
        submit(free_on_first, ledger, scheduled_time_ns=later), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "max_open_tasks=5" in str(error)
