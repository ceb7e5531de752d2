"""Recurring tasks over real gRPC: each fire creates a run (a child task), and the overlap
policy decides what a fire does while the previous run is unfinished.

The schedules use the six-field form (seconds first) so a test sees several fires in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from scheduler_helpers import NS, RunningScheduler, eventually, wait_status
from tai.v1 import scheduler_pb2


async def runs_of(s: RunningScheduler, parent_id: str) -> list[scheduler_pb2.TaskStatus]:
    """The recurring task's runs, oldest first."""
    runs = [t async for t in s.client.list_all(parent_task_id=parent_id)]
    return sorted(runs, key=lambda t: t.scheduled_time_ns)


async def test_a_five_field_schedule_fires_on_minute_boundaries(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    receipt = await scheduler.client.submit(
        task_type="test_record", parameters={"ledger": str(ledger)}, cron_schedule="*/5 * * * *"
    )
    task = await scheduler.client.get(receipt.resource_id)
    assert task.status == "pending"
    assert task.cron_schedule == "*/5 * * * *"
    assert task.overlap_policy == scheduler_pb2.OVERLAP_POLICY_SKIP
    assert task.next_run_ns > time.time_ns()
    assert task.next_run_ns % (300 * NS) == 0


async def test_skip_never_overlaps_runs(scheduler: RunningScheduler, ledger: Path) -> None:
    receipt = await scheduler.client.submit(
        task_id="every-second",
        task_type="test_sleep",
        parameters={"ledger": str(ledger), "seconds": "1.5"},
        cron_schedule="* * * * * *",
        overlap_policy=scheduler_pb2.OVERLAP_POLICY_SKIP,
    )
    parent_id = receipt.resource_id
    deadline = time.monotonic() + 20
    while True:
        runs = await runs_of(scheduler, parent_id)
        if sum(r.status == "completed" for r in runs) >= 2:
            break
        assert time.monotonic() < deadline, runs
        # At most one run is unfinished at any time.
        assert sum(r.status in ("pending", "running") for r in runs) <= 1
        await asyncio.sleep(0.1)
    await scheduler.client.cancel(parent_id)

    runs = [r for r in await runs_of(scheduler, parent_id) if r.status == "completed"]
    for run in runs:
        assert run.parent_task_id == parent_id
        assert run.task_id.startswith(f"{parent_id}-")
        assert run.started_at_ns >= run.scheduled_time_ns
    for previous, current in itertools.pairwise(runs):
        assert current.started_at_ns >= previous.completed_at_ns
        # The fires that came while the previous run ran were skipped.
        assert current.scheduled_time_ns - previous.scheduled_time_ns >= 2 * NS
    parent = await scheduler.client.get(parent_id)
    assert parent.status == "cancelled"


async def test_buffer_one_keeps_one_run_waiting(scheduler: RunningScheduler, ledger: Path) -> None:
    receipt = await scheduler.client.submit(
        task_type="test_sleep",
        parameters={"ledger": str(ledger), "seconds": "2.5"},
        cron_schedule="* * * * * *",
        overlap_policy=scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE,
    )
    parent_id = receipt.resource_id
    saw_waiting = False
    deadline = time.monotonic() + 25
    while True:
        runs = await runs_of(scheduler, parent_id)
        waiting = [r for r in runs if r.status == "pending" and r.next_run_ns == 0]
        assert len(waiting) <= 1, runs
        saw_waiting = saw_waiting or bool(waiting)
        if sum(r.status == "completed" for r in runs) >= 1 and any(
            r.status == "running" for r in runs[1:]
        ):
            break
        assert time.monotonic() < deadline, runs
        await asyncio.sleep(0.1)
    assert saw_waiting

    first, second = runs[0], runs[1]
    assert first.status == "completed"
    # The second run was fired while the first ran, waited, and started once it ended.
    assert second.scheduled_time_ns < first.completed_at_ns
    assert second.started_at_ns >= first.completed_at_ns

    # Cancelling the recurring task stops it and cancels its waiting run.
    # The next fire buffers a run behind the running one.
    await eventually(
        lambda: runs_of(scheduler, parent_id),
        lambda runs: any(r.status == "pending" and r.next_run_ns == 0 for r in runs[2:]),
    )
    await scheduler.client.cancel(parent_id)
    parent = await scheduler.client.get(parent_id)
    assert parent.status == "cancelled"
    runs = await runs_of(scheduler, parent_id)
    assert not [r for r in runs if r.status == "pending"]
    assert any(r.status == "cancelled" for r in runs)
    count = len(runs)
    await asyncio.sleep(1.5)
    assert len(await runs_of(scheduler, parent_id)) == count
    running = [r for r in runs if r.status == "running"]
    for run in running:
        assert (await wait_status(scheduler.client, run.task_id)).status == "completed"
