"""Recurring tasks under an operator's hand on the production adapters: Scheduler processes on
Firestore and Pub/Sub (emulators) and Redis. Time zones across a daylight-saving change, pause
and resume surviving a replica's SIGKILL, trigger, a backfill run once across replicas, and the
catch-up after every replica was down."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from support.processes import ServiceProcess
from support.scenarios import MakeProcess
from tai.v1 import scheduler_pb2
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_test_executors import ledger as test_ledger

pytestmark = pytest.mark.slow

NS = 1_000_000_000
T = TypeVar("T")


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()) * NS


async def runs_of(client: SchedulerClient, parent_id: str) -> list[scheduler_pb2.TaskStatus]:
    runs = [t async for t in client.list_all(parent_task_id=parent_id)]
    return sorted(runs, key=lambda t: (t.scheduled_time_ns, t.task_id))


async def until(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 60.0
) -> T:
    """Calls `probe` until `accept` holds for its value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {value}"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)  # four process starts, and maybe the emulators' JVM start
async def test_schedules_under_an_operators_hand_on_the_emulators(
    service_processes: MakeProcess, production_env: dict[str, str], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    test_ledger.connect(ledger).close()  # made (and in WAL mode) before any replica opens it
    env = {
        **production_env,
        "TAI_TEST_LEDGER": str(ledger),
        "TAI_LEASE_SECONDS": "5",
    }

    def replica(name: str) -> ServiceProcess:
        return service_processes("tai_scheduler", TAI_REPLICA_ID=name, **env)

    first, second = replica("sched-a"), replica("sched-b")
    await asyncio.gather(first.start(timeout=60), second.start(timeout=60))
    async with open_channel(first.target) as a, open_channel(second.target) as b:
        on_a, on_b = SchedulerClient(a), SchedulerClient(b)

        # A schedule in Paris, read back from Firestore by the other replica.
        await on_a.submit(
            task_id="nightly",
            task_type="test_record",
            cron_schedule="30 2 * * *",
            time_zone="Europe/Paris",
            catchup_window_seconds=3600,
            scheduled_time_ns=utc_ns(2027, 10, 30, 12),
        )
        upcoming = await on_b.upcoming("nightly", count=2)
        assert [r.local_time for r in upcoming.runs] == [
            "2027-10-31T02:30:00+02:00",  # once, though 02:30 happens twice that night
            "2027-11-01T02:30:00+01:00",
        ]
        status = await on_b.get("nightly")
        assert (status.time_zone, status.catchup_window_seconds) == ("Europe/Paris", 3600)

        # Paused through one replica, which then dies: the pause holds on the other.
        await on_a.submit(task_id="ticker", task_type="test_record", cron_schedule="*/2 * * * * *")
        await until(lambda: runs_of(on_b, "ticker"), lambda runs: len(runs) >= 1)
        await on_a.pause("ticker", note="incident 42")
        paused_at = time.time_ns()
        first.kill()
        status = await on_b.get("ticker")
        assert (status.paused, status.pause_note, status.next_run_ns) == (True, "incident 42", 0)
        made = {r.task_id for r in await runs_of(on_b, "ticker")}
        await asyncio.sleep(5)
        assert {r.task_id for r in await runs_of(on_b, "ticker")} == made  # nothing fired
        resumed = await on_b.resume("ticker")
        assert int(resumed.result_data["skipped_while_paused"]) >= 2
        resumed_at = time.time_ns()
        runs = await until(
            lambda: runs_of(on_b, "ticker"),
            lambda runs: any(r.scheduled_time_ns >= resumed_at - NS for r in runs),
        )
        assert not [r for r in runs if paused_at + NS < r.scheduled_time_ns < resumed_at - NS]
        await on_b.cancel("ticker")

        # Trigger, and a backfill run once across two replicas, one after another.
        third = await replica("sched-c").start(timeout=60)
        triggered = await on_b.trigger("nightly")
        assert triggered.result_data["outcome"] == "started"
        await until(
            lambda: on_b.get(triggered.result_data["run_task_id"]),
            lambda task: task.status == "completed",
        )
        start, end = utc_ns(2026, 3, 27), utc_ns(2026, 3, 31)
        receipt = await on_b.backfill(
            "nightly",
            start_ns=start,
            end_ns=end,
            overlap_policy=scheduler_pb2.OVERLAP_POLICY_BUFFER_ALL,
        )
        assert receipt.result_data["occurrences"] == "4"
        runs = await until(
            lambda: runs_of(on_b, "nightly"),
            lambda runs: (
                sum(r.run_origin == "backfill" and r.status == "completed" for r in runs) == 4
            ),
            timeout=120,
        )
        backfilled = [r for r in runs if r.run_origin == "backfill"]
        assert [r.task_id for r in backfilled] == [
            "nightly-20260327T013000Z",
            "nightly-20260328T013000Z",
            "nightly-20260329T010000Z",  # 03:00 CEST, the end of the spring-forward gap
            "nightly-20260330T003000Z",
        ]
        done = sorted(
            (
                e
                for e in test_ledger.executions(ledger)
                if e.task_id.startswith("nightly-") and e.outcome == "completed" and not e.replay
            ),
            key=lambda e: e.started_ns,
        )
        assert sorted(e.task_id for e in done) == sorted(
            [triggered.result_data["run_task_id"], *(r.task_id for r in backfilled)]
        )  # each once
        for previous, current in itertools.pairwise(done):
            assert current.started_ns >= previous.ended_ns  # one after another

        # Catch-up: every replica down for 14 s and more; a 10 s window lets the last missed
        # occurrences run, under BUFFER_ONE (one runs, one waits, the others overlap).
        await on_b.submit(
            task_id="catchup",
            task_type="test_record",
            cron_schedule="*/2 * * * * *",
            catchup_window_seconds=10,
            overlap_policy=scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE,
        )
        await until(lambda: runs_of(on_b, "catchup"), lambda runs: len(runs) >= 1)
    second.terminate()
    third.terminate()
    down_at = time.time_ns()
    await asyncio.sleep(14)
    back_at = time.time_ns()
    fourth = await replica("sched-d").start(timeout=60)
    async with open_channel(fourth.target) as d:
        on_d = SchedulerClient(d)
        runs = await until(
            lambda: runs_of(on_d, "catchup"),
            lambda runs: any(r.created_at_ns >= back_at for r in runs),
        )
        status = await on_d.get("catchup")
    # The runs the returning replica made in its first pass (one transaction: one time).
    first_pass = min(r.created_at_ns for r in runs if r.created_at_ns >= back_at)
    caught_up = [r for r in runs if r.created_at_ns == first_pass]
    assert 1 <= len(caught_up) <= 2
    assert all(first_pass - 10 * NS <= r.scheduled_time_ns <= first_pass for r in caught_up)
    # The occurrences older than the window made no run.
    older = [r for r in runs if down_at + 3 * NS < r.scheduled_time_ns < first_pass - 10 * NS]
    assert older == []
    assert status.skipped_runs["catchup"] >= 2
