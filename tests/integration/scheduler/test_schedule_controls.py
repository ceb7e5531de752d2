"""Recurring tasks under an operator's hand, over real gRPC against real Schedulers (SQLite
store and bus): time zones across daylight-saving changes (as ListUpcomingRuns shows them),
pause and resume, trigger, backfill (each occurrence once, also across replicas), and the
errors each method gives for what it cannot do. Catch-up after an outage is in
`test_schedule_catchup.py`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from scheduler_helpers import NS, MakeScheduler, RunningScheduler, eventually, wait_status
from support.rpc_errors import expect_error, field_violations
from support.running import RunningGovernor
from tai.v1 import scheduler_pb2
from tai_client.scheduler import SchedulerClient
from tai_test_executors import ledger as test_ledger

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
BUFFER_ALL = scheduler_pb2.OVERLAP_POLICY_BUFFER_ALL
BUFFER_ONE = scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()) * NS


async def recurring(
    s: RunningScheduler,
    ledger: Path,
    cron: str,
    parameters: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    kwargs.setdefault("task_type", "test_record")
    receipt = await s.client.submit(
        cron_schedule=cron, parameters={"ledger": str(ledger), **(parameters or {})}, **kwargs
    )
    return receipt.resource_id


async def runs_of(client: SchedulerClient, parent_id: str) -> list[scheduler_pb2.TaskStatus]:
    """The recurring task's runs, oldest occurrence first."""
    runs = [t async for t in client.list_all(parent_task_id=parent_id)]
    return sorted(runs, key=lambda t: (t.scheduled_time_ns, t.task_id))


# --- time zones ----------------------------------------------------------------------------


async def test_upcoming_runs_of_a_paris_schedule_across_both_daylight_saving_changes(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    # Daily at 02:30 in Paris, from just before the 2027 spring-forward day (28 March).
    nightly = await recurring(
        scheduler,
        ledger,
        "30 2 * * *",
        task_id="nightly",
        time_zone="Europe/Paris",
        scheduled_time_ns=utc_ns(2027, 3, 26, 12),
    )
    task = await client.get(nightly)
    assert (task.time_zone, task.catchup_window_seconds) == ("Europe/Paris", 0)
    upcoming = await client.upcoming(nightly, count=4)
    assert upcoming.time_zone == "Europe/Paris"
    assert not upcoming.paused
    assert [(r.scheduled_time_ns, r.local_time) for r in upcoming.runs] == [
        (utc_ns(2027, 3, 27, 1, 30), "2027-03-27T02:30:00+01:00"),
        # 02:30 does not exist on 28 March: one run, at 03:00 CEST, the end of the gap.
        (utc_ns(2027, 3, 28, 1, 0), "2027-03-28T03:00:00+02:00"),
        (utc_ns(2027, 3, 29, 0, 30), "2027-03-29T02:30:00+02:00"),
        (utc_ns(2027, 3, 30, 0, 30), "2027-03-30T02:30:00+02:00"),
    ]
    assert upcoming.runs[1].run_task_id == "nightly-20270328T010000Z"
    assert task.next_run_ns == upcoming.runs[0].scheduled_time_ns

    # From just before the fall-back day (31 October), when 02:30 happens twice: one run.
    autumn = await recurring(
        scheduler,
        ledger,
        "30 2 * * *",
        time_zone="Europe/Paris",
        scheduled_time_ns=utc_ns(2027, 10, 30, 12),
    )
    runs = (await client.upcoming(autumn, count=3)).runs
    assert [r.local_time for r in runs] == [
        "2027-10-31T02:30:00+02:00",  # the first pass only (00:30 UTC, not 01:30 UTC)
        "2027-11-01T02:30:00+01:00",
        "2027-11-02T02:30:00+01:00",
    ]

    # Hourly across both changes: one run per real hour, none skipped, none doubled.
    for start, local in (
        (utc_ns(2027, 3, 27, 23, 30), ["01:00:00+01:00", "03:00:00+02:00", "04:00:00+02:00"]),
        (utc_ns(2027, 10, 30, 23, 30), ["02:00:00+02:00", "02:00:00+01:00", "03:00:00+01:00"]),
    ):
        hourly = await recurring(
            scheduler, ledger, "0 * * * *", time_zone="Europe/Paris", scheduled_time_ns=start
        )
        runs = (await client.upcoming(hourly, count=3)).runs
        assert [r.local_time[11:] for r in runs] == local
        times = [r.scheduled_time_ns for r in runs]
        assert [b - a for a, b in itertools.pairwise(times)] == [3600 * NS] * 2

    # Ten by default, a hundred at most.
    assert len((await client.upcoming(nightly)).runs) == 10
    assert len((await client.upcoming(nightly, count=100)).runs) == 100


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron_schedule": "0 3 * * *", "time_zone": "Europe/Pariss"}, "time_zone"),
        ({"cron_schedule": "0 3 * * *", "time_zone": "europe/paris"}, "time_zone"),
        ({"time_zone": "Europe/Paris"}, "time_zone"),
        ({"catchup_window_seconds": 60}, "catchup_window_seconds"),
        ({"cron_schedule": "0 3 * * *", "catchup_window_seconds": 5}, "catchup_window_seconds"),
        ({"cron_schedule": "0 3 * * *", "catchup_window_seconds": -1}, "catchup_window_seconds"),
        ({"cron_schedule": "0 3 * * *", "overlap_policy": BUFFER_ALL}, "overlap_policy"),
    ],
)
async def test_bad_schedule_settings_are_invalid_argument_naming_the_field(
    scheduler: RunningScheduler, kwargs: dict[str, Any], field: str
) -> None:
    error = await expect_error(scheduler.client.submit(task_type="test_record", **kwargs), INVALID)
    assert field_violations(error) == [field]
    assert (error.details() or "").startswith(field)


async def test_bad_requests_to_the_schedule_methods_name_the_field(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    every_second = await recurring(scheduler, ledger, "* * * * * *", task_id="every-second")
    daily = await recurring(scheduler, ledger, "0 3 * * *", time_zone="Europe/Paris")
    start = utc_ns(2026, 1, 1)
    for call, field in (
        (client.pause("bad id"), "task_id"),
        (client.resume(""), "task_id"),
        (client.trigger("x" * 300), "task_id"),
        (client.upcoming("a b"), "task_id"),
        (client.pause(daily, note="n" * 1001), "note"),
        (client.resume(daily, note="n" * 1001), "note"),
        (client.upcoming(daily, count=101), "count"),
        (client.upcoming(daily, count=-1), "count"),
        (client.backfill(daily, start_ns=-1, end_ns=start), "start_ns"),
        (client.backfill(daily, start_ns=start, end_ns=start), "end_ns"),
        # A day of a schedule firing every second: more than 1000 occurrences.
        (client.backfill(every_second, start_ns=start, end_ns=start + 3600 * NS), "end_ns"),
        # Seconds where nanoseconds are meant: a window in 1970 without an occurrence.
        (client.backfill(daily, start_ns=1_767_225_600, end_ns=1_767_312_000), "end_ns"),
        (
            client.backfill(daily, start_ns=start, end_ns=start + NS, overlap_policy=9),
            "overlap_policy",
        ),
    ):
        error = await expect_error(call, INVALID)
        assert field_violations(error) == [field], error.details()
    error = await expect_error(
        client.backfill(every_second, start_ns=start, end_ns=start + 3600 * NS), INVALID
    )
    # The message says how far a backfill of at most 1000 may reach.
    assert f"end_ns at most {start + 1000 * NS}" in (error.details() or "")


async def test_what_is_not_a_live_schedule_is_refused(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    one_off = (
        await client.submit(
            task_type="test_record",
            parameters={"ledger": str(ledger)},
            scheduled_time_ns=time.time_ns() + 3600 * NS,
        )
    ).resource_id
    start = utc_ns(2026, 1, 1)
    for call in (
        client.pause(one_off),
        client.resume(one_off),
        client.trigger(one_off),
        client.backfill(one_off, start_ns=start, end_ns=start + 86400 * NS),
        client.upcoming(one_off),
    ):
        error = await expect_error(call, PRECONDITION)
        assert "is a one-off task" in (error.details() or "")

    parent = await recurring(scheduler, ledger, "0 3 * * *", task_id="daily")
    trigger = await client.trigger(parent)
    run = trigger.result_data["run_task_id"]
    error = await expect_error(client.pause(run), PRECONDITION)
    assert f"run of recurring task {parent!r}" in (error.details() or "")

    error = await expect_error(client.resume(parent), PRECONDITION)
    assert "is not paused" in (error.details() or "")
    await client.pause(parent, note="first")
    error = await expect_error(client.pause(parent), PRECONDITION)
    assert "already paused (by anonymous" in (error.details() or "")
    assert ": first)" in (error.details() or "")

    await client.cancel(parent)
    error = await expect_error(client.resume(parent), PRECONDITION)
    assert "is cancelled" in (error.details() or "")
    assert list((await client.upcoming(parent)).runs) == []

    for call in (
        client.pause("nope"),
        client.resume("nope"),
        client.trigger("nope"),
        client.backfill("nope", start_ns=start, end_ns=start + NS),
        client.upcoming("nope"),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)


# --- pause and resume ------------------------------------------------------------------------


async def test_a_paused_schedule_fires_nothing_until_resumed_from_now(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    parent = await recurring(scheduler, ledger, "* * * * * *", task_id="ticker")
    await eventually(lambda: runs_of(client, parent), lambda runs: len(runs) >= 2)
    updates: list[scheduler_pb2.TaskUpdate] = []

    async def watch() -> None:
        async for update in client.watch(parent):
            updates.append(update)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    receipt = await client.pause(parent, note="storage migration")
    paused_at = time.time_ns()
    assert receipt.result_data["paused"] == "true"
    task = await client.get(parent)
    assert (task.status, task.paused, task.paused_by, task.pause_note) == (
        "pending",
        True,
        "anonymous",
        "storage migration",
    )
    assert task.paused_at_ns <= paused_at
    assert task.next_run_ns == 0
    upcoming = await client.upcoming(parent, count=2)
    assert upcoming.paused
    assert upcoming.runs[0].scheduled_time_ns >= paused_at - NS  # where it would fire now

    made_before = {r.task_id for r in await runs_of(client, parent)}
    await asyncio.sleep(3)
    runs = await runs_of(client, parent)
    assert {r.task_id for r in runs} == made_before  # nothing fired while paused

    resumed_at = time.time_ns()
    receipt = await client.resume(parent, note="done")
    assert int(receipt.result_data["skipped_while_paused"]) >= 2
    task = await client.get(parent)
    assert not task.paused
    assert (task.resumed_by, task.resume_note) == ("anonymous", "done")
    assert task.next_run_ns >= resumed_at - NS  # from now on, not the missed ones
    assert task.skipped_runs["paused"] >= 2
    await eventually(
        lambda: runs_of(client, parent),
        lambda runs: any(r.scheduled_time_ns >= resumed_at - NS for r in runs),
    )
    # No run for an occurrence that came while it was paused.
    runs = await runs_of(client, parent)
    assert not [r for r in runs if paused_at + NS < r.scheduled_time_ns < resumed_at - NS]
    await client.cancel(parent)
    await asyncio.wait_for(watching, 10)
    messages = [u.message for u in updates]
    assert "paused by anonymous: storage migration" in messages
    assert any(
        m.startswith("next run at")
        for m in messages[messages.index("paused by anonymous: storage migration") :]
    )


async def test_a_pause_cancels_the_waiting_run_and_lets_the_running_one_finish(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    parent = await recurring(
        scheduler,
        ledger,
        "* * * * * *",
        {"seconds": "2.5"},
        task_type="test_sleep",
        overlap_policy=BUFFER_ONE,
    )
    runs = await eventually(
        lambda: runs_of(client, parent),
        lambda runs: (
            any(r.status == "running" for r in runs)
            and any(r.status == "pending" and r.next_run_ns == 0 for r in runs)
        ),
    )
    running = next(r for r in runs if r.status == "running")
    waiting = next(r for r in runs if r.status == "pending")
    receipt = await client.pause(parent, note="too slow")
    assert receipt.result_data["cancelled_runs"] == "1"
    cancelled = await client.get(waiting.task_id)
    assert cancelled.status == "cancelled"
    assert cancelled.error_message == (
        f"cancelled: recurring task {parent} was paused by anonymous: too slow"
    )
    assert (await wait_status(client, running.task_id)).status == "completed"
    count = len(await runs_of(client, parent))
    await asyncio.sleep(1.5)
    assert len(await runs_of(client, parent)) == count
    assert (await client.get(parent)).skipped_runs["paused"] == 1


async def test_a_pause_just_before_a_fire_stops_that_fire(
    make_scheduler: MakeScheduler, ledger: Path
) -> None:
    # Claims 1.5 s ahead: the fire is within the worker's horizon when the pause lands.
    scheduler = await make_scheduler(claim_ahead_seconds=1.5)
    client = scheduler.client
    parent = await recurring(scheduler, ledger, "*/5 * * * * *")
    task = await client.get(parent)
    fire = task.next_run_ns
    if fire - time.time_ns() < NS:  # too close to pause ahead of it: take the next one
        await eventually(lambda: runs_of(client, parent), lambda runs: len(runs) >= 1)
        fire = (await client.get(parent)).next_run_ns
    await asyncio.sleep(max(0.0, (fire - time.time_ns()) / NS - 0.4))
    await client.pause(parent)
    assert time.time_ns() < fire, "paused too late to test a pause before the fire"
    await asyncio.sleep((fire - time.time_ns()) / NS + 1.5)
    late = [r.task_id for r in await runs_of(client, parent) if r.scheduled_time_ns >= fire]
    assert late == []
    assert all(e.started_ns < fire for e in test_ledger.executions(ledger))


# --- trigger ---------------------------------------------------------------------------------


async def test_trigger_runs_one_occurrence_now_under_the_overlap_policy(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    parent = await recurring(
        scheduler, ledger, "0 3 * * *", {"seconds": "2"}, task_type="test_sleep"
    )
    next_fire = (await client.get(parent)).next_run_ns
    before = time.time_ns()
    first = await client.trigger(parent)
    assert first.result_data["outcome"] == "started"
    run_id = first.result_data["run_task_id"]
    assert run_id.startswith(f"{parent}-")
    assert run_id.endswith("Z")
    assert "." in run_id  # milliseconds: never the id of one of the cadence's runs
    run = await client.get(run_id)
    assert (run.parent_task_id, run.run_origin) == (parent, "trigger")
    assert before <= run.scheduled_time_ns <= time.time_ns()
    # SKIP (the default): a second trigger while the first runs makes no run.
    second = await client.trigger(parent)
    assert second.result_data["outcome"] == "skipped"
    assert (
        second.result_data["reason"] == f"run {run_id} is unfinished and the overlap policy is skip"
    )
    assert (await wait_status(client, run_id)).status == "completed"
    parent_task = await client.get(parent)
    assert parent_task.next_run_ns == next_fire  # the cadence did not move
    assert parent_task.skipped_runs["overlap"] == 1
    assert [r.task_id for r in await runs_of(client, parent)] == [run_id]

    # BUFFER_ONE: started, then waiting, then skipped; the waiting one runs after.
    buffered = await recurring(
        scheduler,
        ledger,
        "0 3 * * *",
        {"seconds": "1"},
        task_type="test_sleep",
        overlap_policy=BUFFER_ONE,
    )
    outcomes = [(await client.trigger(buffered)).result_data for _ in range(3)]
    assert [o["outcome"] for o in outcomes] == ["started", "waiting", "skipped"]
    done = [await wait_status(client, o["run_task_id"]) for o in outcomes[:2]]
    assert [t.status for t in done] == ["completed", "completed"]
    assert done[1].started_at_ns >= done[0].completed_at_ns

    # Also while paused: an operator's explicit request.
    await client.pause(buffered)
    paused_trigger = await client.trigger(buffered)
    assert paused_trigger.result_data["outcome"] == "started"
    assert (await wait_status(client, paused_trigger.result_data["run_task_id"])).status == (
        "completed"
    )


# --- backfill --------------------------------------------------------------------------------


async def test_a_backfill_runs_each_occurrence_once_one_after_another(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    parent = await recurring(
        scheduler,
        ledger,
        "0 3 * * *",
        {"seconds": "0.3"},
        task_id="report",
        task_type="test_sleep",
        time_zone="Europe/Paris",
    )
    # 26 March to 31 March 2026 at 03:00 in Paris: 02:00 UTC, then 01:00 UTC from the 29th.
    start, end = utc_ns(2026, 3, 26), utc_ns(2026, 4, 1)
    expected = [
        f"report-202603{day}T{hour}0000Z"
        for day, hour in (
            ("26", "02"),
            ("27", "02"),
            ("28", "02"),
            ("29", "01"),
            ("30", "01"),
            ("31", "01"),
        )
    ]
    receipt = await client.backfill(parent, start_ns=start, end_ns=end, overlap_policy=BUFFER_ALL)
    assert {
        k: receipt.result_data[k]
        for k in ("occurrences", "already_run", "started", "waiting", "skipped")
    } == {
        "occurrences": "6",
        "already_run": "0",
        "started": "1",
        "waiting": "5",
        "skipped": "0",
    }
    progress = (await client.get(parent)).backfill
    assert (progress.end_ns, progress.requested_by) == (end, "anonymous")
    error = await expect_error(
        client.backfill(parent, start_ns=start, end_ns=end, overlap_policy=BUFFER_ALL), PRECONDITION
    )
    assert "backfill in progress" in (error.details() or "")

    runs = await eventually(
        lambda: runs_of(client, parent),
        lambda runs: len(runs) == 6 and all(r.status == "completed" for r in runs),
        timeout=30,
    )
    assert [r.task_id for r in runs] == expected
    assert {r.run_origin for r in runs} == {"backfill"}
    executions = sorted(test_ledger.executions(ledger), key=lambda e: e.started_ns)
    assert [e.task_id for e in executions] == expected  # in order, each once
    for previous, current in itertools.pairwise(executions):
        assert current.started_ns >= previous.ended_ns  # one after another
    assert not (await client.get(parent)).HasField("backfill")

    # Again: every occurrence has its run; nothing runs twice.
    again = await client.backfill(parent, start_ns=start, end_ns=end, overlap_policy=BUFFER_ALL)
    assert (again.result_data["already_run"], again.result_data["started"]) == ("6", "0")
    await asyncio.sleep(1)
    assert len(test_ledger.executions(ledger)) == 6


async def test_a_backfill_under_skip_or_buffer_one_offers_the_occurrences_at_once(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    client = scheduler.client
    start, end = utc_ns(2026, 1, 1), utc_ns(2026, 1, 6)  # five daily occurrences
    skip = await recurring(scheduler, ledger, "0 3 * * *", {"seconds": "1"}, task_type="test_sleep")
    result = (await client.backfill(skip, start_ns=start, end_ns=end)).result_data
    assert (result["overlap_policy"], result["started"], result["waiting"], result["skipped"]) == (
        "skip",
        "1",
        "0",
        "4",
    )
    assert (await client.get(skip)).skipped_runs["overlap"] == 4

    buffer_one = await recurring(
        scheduler,
        ledger,
        "0 3 * * *",
        {"seconds": "1"},
        task_type="test_sleep",
        overlap_policy=BUFFER_ONE,
    )
    result = (await client.backfill(buffer_one, start_ns=start, end_ns=end)).result_data
    assert (result["started"], result["waiting"], result["skipped"]) == ("1", "1", "3")
    runs = await eventually(
        lambda: runs_of(client, buffer_one),
        lambda runs: len(runs) == 2 and all(r.status == "completed" for r in runs),
    )
    assert [r.scheduled_time_ns for r in runs] == [utc_ns(2026, 1, 1, 3), utc_ns(2026, 1, 2, 3)]


async def test_a_backfill_runs_each_occurrence_once_across_replicas(
    make_scheduler: MakeScheduler, ledger: Path
) -> None:
    replicas = [await make_scheduler(replica_id=f"replica-{i}") for i in range(2)]
    client = replicas[0].client
    parent = await recurring(replicas[0], ledger, "0 */6 * * *", {"sleep_ms": "100"})
    start, end = utc_ns(2026, 2, 1), utc_ns(2026, 2, 4)  # twelve occurrences
    receipt = await replicas[1].client.backfill(
        parent, start_ns=start, end_ns=end, overlap_policy=BUFFER_ALL
    )
    assert receipt.result_data["occurrences"] == "12"
    runs = await eventually(
        lambda: runs_of(client, parent),
        lambda runs: len(runs) == 12 and all(r.status == "completed" for r in runs),
        timeout=40,
    )
    assert [r.scheduled_time_ns for r in runs] == list(range(start, end, 6 * 3600 * NS))
    executions = test_ledger.executions(ledger)
    assert sorted(e.task_id for e in executions) == sorted(r.task_id for r in runs)  # each once
    assert {e.replay for e in executions} == {False}
    ordered = sorted(executions, key=lambda e: e.started_ns)
    for previous, current in itertools.pairwise(ordered):
        assert current.started_ns >= previous.ended_ns


# --- audit -----------------------------------------------------------------------------------


async def test_every_schedule_change_is_audited(
    scheduler: RunningScheduler, governor: RunningGovernor, ledger: Path
) -> None:
    client = scheduler.client
    parent = await recurring(scheduler, ledger, "0 3 * * *", task_id="audited")
    await client.pause(parent, note="why")
    await client.resume(parent)
    await client.trigger(parent)
    start = utc_ns(2026, 1, 1)
    await client.backfill(parent, start_ns=start, end_ns=start + 86400 * NS)

    def actions(page: Any) -> list[str]:
        return [r.action.rsplit("/", 1)[-1] for r in page.records if r.resource == f"task/{parent}"]

    page = await eventually(
        lambda: governor.client.audit_page(page_size=100),
        lambda page: len(actions(page)) >= 5,
    )
    assert actions(page) == [
        "SubmitTask",
        "PauseSchedule",
        "ResumeSchedule",
        "TriggerSchedule",
        "BackfillSchedule",
    ]
    records = [r for r in page.records if r.resource == f"task/{parent}"]
    assert all(r.principal == "anonymous" and r.outcome == "ok" for r in records)
    assert all(r.old_digest != r.new_digest for r in records[1:])
