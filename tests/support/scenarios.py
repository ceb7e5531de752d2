"""Scenarios that run on more than one set of backends (the embedded default and the
production adapters)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_test_executors import ledger as test_ledger

from support.processes import ServiceProcess

NS = 1_000_000_000
MakeProcess = Callable[..., ServiceProcess]


async def count_completed(client: SchedulerClient) -> int:
    return sum([1 async for _ in client.list_all(status="completed", task_type="test_record")])


async def workers_running_a_task(client: SchedulerClient, ledger: Path) -> set[str]:
    """The workers running one of the tasks now: their attempt is the task's latest and the
    executor has not recorded the task's completion yet. (A task listed as running may already
    be done, its status write still on the way: killing its worker then leaves no lost
    attempt.)"""
    page = await client.list_page(status="running")
    completed = test_ledger.completions(ledger)
    return {
        t.attempts[-1].worker
        for t in page.tasks
        if t.attempts and f"tai-task:{t.task_id}" not in completed
    }


async def exactly_once_across_replicas(
    service_processes: MakeProcess,
    backend_env: Mapping[str, str],
    ledger: Path,
    tasks_total: int,
    timeout: float = 90,
    lease_seconds: float = 3.0,
) -> None:
    """Three Scheduler processes share the backends and run `tasks_total` tasks of the
    `test_record` plug-in; one replica is SIGKILLed midway. Every task completes, and no
    idempotency key is executed to completion twice (checked against the executor's ledger)."""
    env = {
        **backend_env,
        "TAI_LEASE_SECONDS": str(lease_seconds),
        # A few claims held ahead at most: with the default (1,024) the replica that takes the
        # submissions first may hold them all, and the others would have nothing to compete
        # for, or to be killed while running.
        "TAI_CLAIM_AHEAD_LIMIT": "4",
        "TAI_TEST_LEDGER": str(ledger),
        "TAI_LOG_LEVEL": "WARNING",
    }
    replicas = [
        service_processes("tai_scheduler", TAI_REPLICA_ID=f"sched-{name}", **env)
        for name in ("a", "b", "c")
    ]
    await asyncio.gather(*(r.start() for r in replicas))

    async with open_channel(replicas[0].target) as channel:
        client = SchedulerClient(channel)
        # Due together shortly after submission, so all three replicas compete for them.
        due = time.time_ns() + 2 * NS
        semaphore = asyncio.Semaphore(32)

        async def submit(index: int) -> None:
            async with semaphore:
                await client.submit(
                    task_id=f"once-{index:03d}",
                    task_type="test_record",
                    parameters={"sleep_ms": "150"},
                    scheduled_time_ns=due,
                    # The Firestore emulator makes contending transactions wait seconds for
                    # its locks while the replicas claim; the default deadline is too short.
                    timeout=60,
                )

        await asyncio.gather(*(submit(i) for i in range(tasks_total)))

        deadline = time.monotonic() + timeout

        async def replica_running_a_task() -> ServiceProcess | None:
            done = len(test_ledger.completions(ledger))
            assert done < tasks_total, "every task completed before a replica could be killed"
            assert time.monotonic() < deadline, f"{done} of {tasks_total} tasks completed"
            if done < tasks_total // 3:
                return None
            running = await workers_running_a_task(client, ledger)
            return next((r for r in replicas[1:] if r.replica_id in running), None)

        # Once the work is well under way, kill a replica at a moment it runs a task: the first
        # of sched-b and sched-c seen running one (the client's replica, sched-a, lives). Either
        # will do: on the Firestore emulator's lock waits one replica may claim nothing for a
        # while, and the others may finish everything meanwhile. Killed at once when seen: its
        # task (150 ms) may end soon after. Polled: the state is in the store and the ledger.
        while (victim := await replica_running_a_task()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        victim.kill()

        while (completed := await count_completed(client)) < tasks_total:
            assert time.monotonic() < deadline, f"{completed} of {tasks_total} tasks completed"
            await asyncio.sleep(0.25)
        tasks = {t.task_id: t async for t in client.list_all(task_type="test_record")}

    assert len(tasks) == tasks_total
    assert {t.status for t in tasks.values()} == {"completed"}

    completions = test_ledger.completions(ledger)
    runs = test_ledger.executions(ledger)
    first_runs = collections.Counter(r.key for r in runs if not r.replay)
    assert len(completions) == tasks_total
    assert set(first_runs.values()) == {1}, "a key was executed to completion twice"
    runs_per_task = collections.Counter(r.task_id for r in runs)
    lost = 0
    for task in tasks.values():
        key = f"tai-task:{task.task_id}"
        assert task.result["completion_id"] == completions[key]
        assert task.attempts[-1].outcome == "completed"
        lost_attempts = [a for a in task.attempts if a.outcome == "lease_lost"]
        # Mostly the killed replica's; on a loaded machine a live replica's lease may lapse
        # too, which is what the fencing tokens and idempotency keys are there for.
        lost += sum(a.worker == victim.replica_id for a in lost_attempts)
        # A task ran more than once only when it lost an attempt that way.
        assert runs_per_task[task.task_id] <= 1 + len(lost_attempts)
        assert all(a.idempotency_key == key for a in task.attempts)
    assert lost >= 1, "the killed replica held no task; the test proved nothing"
