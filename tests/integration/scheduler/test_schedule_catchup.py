"""Catch-up after an outage, over real gRPC against real Schedulers (SQLite store and bus).

A Scheduler runs the schedules, then stops (every replica down); another starts with its clock
moved minutes or a day ahead (the outage), on the same store. It finds the occurrences missed
meanwhile: those within each schedule's catch-up window run, under its overlap policy, and the
rest are skipped and counted (`skipped_runs`, `tai_scheduler_skipped_runs_total`). A pause
stored before the outage still holds after it, and the resume counts what came meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from scheduler_helpers import NS, MakeScheduler, RunningScheduler, eventually
from tai.v1 import scheduler_pb2
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_common.core import SystemClock
from tai_common.runtime import Dependencies
from tai_scheduler.app import SchedulerSettings, create_app

MINUTE = 60 * NS
StartAfterOutage = Callable[..., Awaitable[RunningScheduler]]


class ShiftedClock(SystemClock):
    """The real clock, moved ahead: a Scheduler that starts after an outage."""

    def __init__(self, shift_ns: int) -> None:
        self._shift_ns = shift_ns

    def now_ns(self) -> int:
        return super().now_ns() + self._shift_ns


@pytest.fixture
async def after_outage(sqlite_url: str) -> AsyncIterator[StartAfterOutage]:
    """Starts a Scheduler on the test's store whose clock reads `now_ns` at its start."""
    started: list[RunningScheduler] = []

    async def start(now_ns: int, **overrides: Any) -> RunningScheduler:
        settings = SchedulerSettings(
            **{
                "auth": "off",
                "grpc_port": 0,
                "metrics_port": 0,
                "store": sqlite_url,
                "bus": sqlite_url,
                "replica_id": "after-outage",
                "shutdown_grace_seconds": 1.0,
                "lease_seconds": 3.0,
                "sqlite_synchronous": "NORMAL",
                **overrides,
            }
        )
        deps = await Dependencies.open(settings)
        runtime = create_app(replace(deps, clock=ShiftedClock(now_ns - time.time_ns())))
        port = await runtime.start()
        channel = open_channel(f"127.0.0.1:{port}")
        running = RunningScheduler(runtime, channel, SchedulerClient(channel), f"127.0.0.1:{port}")
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            await running.channel.close()
            await running.runtime.stop()


def skipped_total(reason: str) -> float:
    return REGISTRY.get_sample_value("tai_scheduler_skipped_runs_total", {"reason": reason}) or 0.0


async def runs_of(client: SchedulerClient, parent_id: str) -> list[scheduler_pb2.TaskStatus]:
    runs = [t async for t in client.list_all(parent_task_id=parent_id)]
    return sorted(runs, key=lambda t: t.scheduled_time_ns)


async def clear_of_the_next_minute() -> None:
    """Waits, if need be, so that the next minute's fire is a few seconds away."""
    into_minute = time.time_ns() % MINUTE
    if into_minute > MINUTE - 5 * NS:
        await asyncio.sleep((MINUTE - into_minute) / NS + 0.5)


async def test_after_an_outage_the_missed_runs_within_the_window_run_and_the_rest_are_skipped(
    make_scheduler: MakeScheduler, after_outage: StartAfterOutage, tmp_path: Path
) -> None:
    ledger = str(tmp_path / "ledger.db")
    await clear_of_the_next_minute()
    before = await make_scheduler()
    ids = {}
    for name, window, policy in (
        ("latest", 0, scheduler_pb2.OVERLAP_POLICY_SKIP),
        ("window-skip", 135, scheduler_pb2.OVERLAP_POLICY_SKIP),
        ("window-buffer", 135, scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE),
    ):
        receipt = await before.client.submit(
            task_id=name,
            task_type="test_record",
            parameters={"ledger": ledger},
            cron_schedule="* * * * *",
            catchup_window_seconds=window,
            overlap_policy=policy,
        )
        ids[name] = receipt.resource_id
    first = (await before.client.get("latest")).next_run_ns
    assert first > time.time_ns()
    await before.runtime.stop()  # every replica down, before the first fire
    catchup, overlap = skipped_total("catchup"), skipped_total("overlap")

    # Back 10 min 30 s after the first missed fire: eleven occurrences missed.
    after = await after_outage(first + 10 * MINUTE + 30 * NS)
    client = after.client
    done = {}
    for name in ids:
        want = 2 if name == "window-buffer" else 1
        done[name] = await eventually(
            functools.partial(runs_of, client, name),
            lambda runs, want=want: (
                len(runs) >= want and all(r.status == "completed" for r in runs)
            ),
        )
    # Default window: only the latest missed occurrence runs.
    assert [r.scheduled_time_ns for r in done["latest"]] == [first + 10 * MINUTE]
    # 135 s back: 00:09 and 00:10 are within. SKIP: the first runs, the second overlaps it.
    assert [r.scheduled_time_ns for r in done["window-skip"]] == [first + 9 * MINUTE]
    # BUFFER_ONE: the second waits for the first, then runs.
    buffered = done["window-buffer"]
    assert [r.scheduled_time_ns for r in buffered] == [first + 9 * MINUTE, first + 10 * MINUTE]
    assert buffered[1].started_at_ns >= buffered[0].completed_at_ns

    statuses = {name: await client.get(name) for name in ids}
    assert dict(statuses["latest"].skipped_runs) == {"catchup": 10}
    assert dict(statuses["window-skip"].skipped_runs) == {"catchup": 9, "overlap": 1}
    assert dict(statuses["window-buffer"].skipped_runs) == {"catchup": 9}
    for status in statuses.values():
        assert status.next_run_ns == first + 11 * MINUTE
    assert skipped_total("catchup") - catchup == 28
    assert skipped_total("overlap") - overlap == 1


async def submit_between_fires(client: SchedulerClient, task_id: str, ledger: Path) -> int:
    """Submits a schedule firing every 10 s, well before its first fire; returns that fire."""
    into = time.time_ns() % (10 * NS)
    if into > 6 * NS:
        await asyncio.sleep((10 * NS - into) / NS + 0.2)
    await client.submit(
        task_id=task_id,
        task_type="test_record",
        parameters={"ledger": str(ledger)},
        cron_schedule="*/10 * * * * *",
    )
    first = (await client.get(task_id)).next_run_ns
    assert first - time.time_ns() > 3 * NS
    return first


async def test_a_day_long_outage_of_a_fast_schedule_is_counted_exactly(
    make_scheduler: MakeScheduler, after_outage: StartAfterOutage, tmp_path: Path
) -> None:
    """8,640 missed occurrences: more than one pass handles (500), so the Scheduler that
    comes back goes on pass after pass; every one skipped is counted, the latest runs."""
    before = await make_scheduler()
    first = await submit_between_fires(before.client, "every-10s", tmp_path / "ledger.db")
    await before.runtime.stop()

    client = (await after_outage(time.time_ns() + 86400 * NS)).client
    runs = await eventually(lambda: runs_of(client, "every-10s"), lambda runs: bool(runs))
    caught_up = runs[0].scheduled_time_ns
    assert (caught_up - first) // (10 * NS) > 8600  # a day of them
    status = await client.get("every-10s")
    # Every occurrence from the first missed one up to the one that ran was skipped.
    assert status.skipped_runs["catchup"] == (caught_up - first) // (10 * NS)


async def test_a_pause_holds_across_the_outage_and_the_resume_counts_what_came(
    make_scheduler: MakeScheduler, after_outage: StartAfterOutage, tmp_path: Path
) -> None:
    before = await make_scheduler()
    first = await submit_between_fires(before.client, "paused-10s", tmp_path / "ledger.db")
    await before.client.pause("paused-10s", note="maintenance")
    await before.runtime.stop()

    client = (await after_outage(time.time_ns() + 86400 * NS)).client
    status = await client.get("paused-10s")
    assert (status.paused, status.pause_note, status.next_run_ns) == (True, "maintenance", 0)
    await asyncio.sleep(1.5)
    assert await runs_of(client, "paused-10s") == []  # still paused after the restart

    receipt = await client.resume("paused-10s")
    status = await client.get("paused-10s")
    resumed_at = status.resumed_at_ns
    next_fire = -(-resumed_at // (10 * NS)) * (10 * NS)  # the first occurrence from the resume
    assert status.next_run_ns == next_fire
    # A day of occurrences is more than one pass counts: the resume counts the first ones,
    # the worker the rest.
    assert receipt.result_data["skipped_counting"] == "true"
    expected = (next_fire - first) // (10 * NS)
    await eventually(
        lambda: client.get("paused-10s"),
        lambda task: task.skipped_runs["paused"] == expected,
    )
    runs = await eventually(lambda: runs_of(client, "paused-10s"), lambda runs: bool(runs))
    assert runs[0].scheduled_time_ns == next_fire
    assert "catchup" not in (await client.get("paused-10s")).skipped_runs
