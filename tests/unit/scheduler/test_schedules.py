"""Schedules in a time zone, across daylight-saving changes, and under an operator's hand
(pause, resume, catch-up after an outage, upcoming runs), without gRPC or a store.

The instants are checked exactly: Europe/Paris goes from 02:00 CET to 03:00 CEST on
2026-03-29 (01:00 UTC) and from 03:00 CEST back to 02:00 CET on 2026-10-25 (01:00 UTC).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tai_common.core import FailedPrecondition, InvalidArgument
from tai_common.core.units import NS_PER_SECOND
from tai_scheduler.task import (
    HELD_NS,
    AttemptOutcome,
    Backfill,
    CronSchedule,
    OverlapPolicy,
    RetryConfig,
    RunOrigin,
    SkipReason,
    Submission,
    Task,
    TaskState,
    check_time_zone,
    child_task_id,
    new_task,
    plan_catch_up,
    trigger_task_id,
    validate_submission,
)

S = NS_PER_SECOND
PARIS = ZoneInfo("Europe/Paris")
KNOWN = ("test_record",)


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, sec, tzinfo=dt.UTC).timestamp()) * S


def paris(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // S, tz=PARIS).isoformat()


def fires(expression: str, after_ns: int, count: int, time_zone: str = "Europe/Paris") -> list[int]:
    schedule = CronSchedule.parse(expression, time_zone=time_zone)
    return list(itertools.islice(schedule.fires_after(after_ns), count))


# --- daylight-saving changes ------------------------------------------------------------------


def test_a_fixed_time_in_the_hour_clocks_skip_fires_once_at_the_end_of_the_gap() -> None:
    # 02:30 does not exist on 29 March in Paris: the run comes at 03:00 CEST, the end of the gap.
    daily = fires("30 2 * * *", utc_ns(2026, 3, 27, 12), 4)
    assert daily == [
        utc_ns(2026, 3, 28, 1, 30),  # 02:30 CET
        utc_ns(2026, 3, 29, 1, 0),  # 03:00 CEST
        utc_ns(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc_ns(2026, 3, 31, 0, 30),
    ]
    assert [paris(f) for f in daily[:3]] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_fixed_time_in_the_hour_clocks_repeat_fires_once_at_its_first_pass() -> None:
    # 02:30 happens twice on 25 October (00:30 and 01:30 UTC): one run, at the first.
    daily = fires("30 2 * * *", utc_ns(2026, 10, 23, 12), 4)
    assert daily == [
        utc_ns(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc_ns(2026, 10, 25, 0, 30),  # 02:30 CEST, the first pass
        utc_ns(2026, 10, 26, 1, 30),  # 02:30 CET
        utc_ns(2026, 10, 27, 1, 30),
    ]
    assert utc_ns(2026, 10, 25, 1, 30) not in daily  # the second pass
    assert paris(daily[1]) == "2026-10-25T02:30:00+02:00"
    # Also when the search starts between the two passes.
    assert fires("30 2 * * *", utc_ns(2026, 10, 25, 1, 0), 1) == [utc_ns(2026, 10, 26, 1, 30)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ((2026, 3, 28, 20), (2026, 3, 29, 8)),  # spring forward
        ((2026, 10, 24, 20), (2026, 10, 25, 8)),  # fall back
    ],
)
def test_an_hourly_schedule_fires_every_real_hour_across_a_change(
    start: tuple[int, int, int, int], end: tuple[int, int, int, int]
) -> None:
    first, last = utc_ns(*start), utc_ns(*end)
    hourly = [f for f in fires("0 * * * *", first - 1, 40) if f < last]
    # No skipped and no doubled hour: exactly one fire per real hour.
    assert hourly == list(range(first, last, 3600 * S))


def test_the_local_hours_of_an_hourly_schedule_across_both_changes() -> None:
    spring = [paris(f) for f in fires("0 * * * *", utc_ns(2026, 3, 28, 23, 30), 3)]
    assert spring == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist
        "2026-03-29T04:00:00+02:00",
    ]
    fall = [paris(f) for f in fires("0 * * * *", utc_ns(2026, 10, 24, 23, 30), 3)]
    assert fall == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # 02:00 again: a real hour later
        "2026-10-25T03:00:00+01:00",
    ]


def test_a_repeating_schedule_has_no_fire_in_the_skipped_hour() -> None:
    # Quarter past every hour: 02:15 does not exist and is not moved to 03:00.
    assert [paris(f) for f in fires("15 * * * *", utc_ns(2026, 3, 29, 0), 2)] == [
        "2026-03-29T01:15:00+01:00",
        "2026-03-29T03:15:00+02:00",
    ]


def test_fixed_hours_in_a_repeated_hour_fire_once_each() -> None:
    assert fires("0 2-3 * * *", utc_ns(2026, 10, 24, 22), 3) == [
        utc_ns(2026, 10, 25, 0),  # 02:00 CEST (not again at 02:00 CET)
        utc_ns(2026, 10, 25, 2),  # 03:00 CET
        utc_ns(2026, 10, 26, 1),  # 02:00 CET the next day
    ]


def test_utc_has_no_changes() -> None:
    assert fires("30 2 * * *", utc_ns(2026, 3, 28, 12), 2, "UTC") == [
        utc_ns(2026, 3, 29, 2, 30),
        utc_ns(2026, 3, 30, 2, 30),
    ]
    assert CronSchedule.parse("30 2 * * *").time_zone == "UTC"


def test_fixed_time_schedules_are_told_from_repeating_ones() -> None:
    for expression in ("30 2 * * *", "@daily", "0 2-3 * * 1-5", "*/10 30 2 * * *"):
        assert CronSchedule.parse(expression).fixed_time, expression
    for expression in ("0 * * * *", "@hourly", "*/15 * * * *", "0 */2 * * *", "* 2 * * *"):
        assert not CronSchedule.parse(expression).fixed_time, expression


def test_run_ids_tell_the_two_passes_of_a_repeated_hour_apart() -> None:
    first, second = fires("0 * * * *", utc_ns(2026, 10, 24, 23, 30), 2)
    assert child_task_id("hourly", first) == "hourly-20261025T000000Z"
    assert child_task_id("hourly", second) == "hourly-20261025T010000Z"


def test_local_time_names_the_offset() -> None:
    schedule = CronSchedule.parse("30 2 * * *", time_zone="Europe/Paris")
    assert schedule.local_time(utc_ns(2026, 10, 25, 0, 30)) == "2026-10-25T02:30:00+02:00"


# --- time zones and submissions ------------------------------------------------------------


def test_time_zones_are_iana_names() -> None:
    assert check_time_zone("") == "UTC"
    assert check_time_zone("Europe/Paris") == "Europe/Paris"
    assert check_time_zone("America/New_York") == "America/New_York"
    with pytest.raises(InvalidArgument, match="did you mean 'Europe/Paris'") as error:
        check_time_zone("europe/paris")
    assert error.value.field == "time_zone"
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "CEST", "+02:00"):
        with pytest.raises(InvalidArgument, match="not an IANA time zone"):
            check_time_zone(bad)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"time_zone": "Europe/Paris"}, "time_zone"),
        ({"catchup_window_seconds": 60}, "catchup_window_seconds"),
        ({"cron_schedule": "* * * * *", "time_zone": "Paris"}, "time_zone"),
        ({"cron_schedule": "* * * * *", "catchup_window_seconds": 9}, "catchup_window_seconds"),
        ({"cron_schedule": "* * * * *", "catchup_window_seconds": -1}, "catchup_window_seconds"),
        (
            {"cron_schedule": "* * * * *", "catchup_window_seconds": 367 * 86400},
            "catchup_window_seconds",
        ),
        (
            {"cron_schedule": "* * * * *", "overlap_policy": OverlapPolicy.BUFFER_ALL},
            "overlap_policy",
        ),
    ],
)
def test_schedule_settings_are_checked(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_submission(Submission(task_type="test_record", **overrides), KNOWN)
    assert error.value.field == field


def test_a_recurring_task_keeps_its_zone_and_first_fires_in_it() -> None:
    submission = Submission(
        task_type="test_record",
        cron_schedule="30 2 * * *",
        time_zone="Europe/Paris",
        catchup_window_seconds=3600,
    )
    schedule = validate_submission(submission, KNOWN)
    now = utc_ns(2026, 3, 28, 12)
    task = new_task(submission, task_id="nightly", now_ns=now, principal="p", schedule=schedule)
    assert (task.time_zone, task.catchup_window_seconds) == ("Europe/Paris", 3600)
    assert task.next_run_ns == utc_ns(2026, 3, 29, 1, 0)  # 03:00 CEST, the spring-forward day
    assert Task.from_doc(task.to_doc()) == task


# --- catch-up after an outage ----------------------------------------------------------------

MINUTELY = CronSchedule.parse("* * * * *")


def test_by_default_only_the_latest_missed_occurrence_runs() -> None:
    # Down from 00:00 to 00:10:30: eleven occurrences due, the latest (00:10) runs.
    plan = plan_catch_up(
        MINUTELY, utc_ns(2026, 1, 1, 0, 0), utc_ns(2026, 1, 1, 0, 10, 30), window_seconds=0
    )
    assert plan.offered == (utc_ns(2026, 1, 1, 0, 10),)
    assert plan.skipped == {SkipReason.CATCHUP: 10}
    assert plan.next_fire_ns == utc_ns(2026, 1, 1, 0, 11)


def test_a_catchup_window_runs_the_missed_occurrences_within_it() -> None:
    plan = plan_catch_up(
        MINUTELY, utc_ns(2026, 1, 1, 0, 0), utc_ns(2026, 1, 1, 0, 10, 30), window_seconds=150
    )
    # Back to 00:08:00: 00:08, 00:09 and 00:10 run; 00:00 to 00:07 are skipped.
    assert plan.offered == tuple(utc_ns(2026, 1, 1, 0, m) for m in (8, 9, 10))
    assert plan.skipped == {SkipReason.CATCHUP: 8}


def test_a_fire_that_merely_comes_late_runs() -> None:
    fire = utc_ns(2026, 1, 1, 0, 5)
    for window in (0, 10):
        plan = plan_catch_up(MINUTELY, fire, fire + 3 * S, window_seconds=window)
        assert (plan.offered, plan.skipped) == ((fire,), {})


def test_occurrences_before_a_resume_are_skipped_as_paused() -> None:
    resumed = utc_ns(2026, 1, 1, 0, 4, 30)
    plan = plan_catch_up(
        MINUTELY,
        utc_ns(2026, 1, 1, 0, 0),
        utc_ns(2026, 1, 1, 0, 6, 10),
        window_seconds=0,
        skip_before_ns=resumed,
    )
    # 00:00 to 00:04 came while paused; of 00:05 and 00:06 (the outage after it) the latest.
    assert plan.skipped == {SkipReason.PAUSED: 5, SkipReason.CATCHUP: 1}
    assert plan.offered == (utc_ns(2026, 1, 1, 0, 6),)


def test_a_long_outage_is_worked_through_a_pass_at_a_time() -> None:
    start, now = utc_ns(2026, 1, 1, 0, 0), utc_ns(2026, 1, 1, 1, 0, 30)
    first = plan_catch_up(MINUTELY, start, now, window_seconds=0, limit=25)
    assert (first.offered, first.skipped) == ((), {SkipReason.CATCHUP: 25})
    assert first.next_fire_ns == utc_ns(2026, 1, 1, 0, 25)  # still due: the next pass goes on
    total = dict(first.skipped)
    plan = first
    while plan.next_fire_ns <= now:
        plan = plan_catch_up(MINUTELY, plan.next_fire_ns, now, window_seconds=0, limit=25)
        for reason, count in plan.skipped.items():
            total[reason] = total.get(reason, 0) + count
    assert total == {SkipReason.CATCHUP: 60}
    assert plan.offered == (utc_ns(2026, 1, 1, 1, 0),)


# --- pause, resume, upcoming ----------------------------------------------------------------


def recurring(**overrides: Any) -> Task:
    base: dict[str, Any] = {
        "id": "nightly",
        "task_type": "test_record",
        "parameters": {},
        "priority": 5,
        "scheduled_time_ns": 0,
        "created_at_ns": 0,
        "retry": RetryConfig(),
        "timeout_seconds": 60,
        "cron_schedule": "30 2 * * *",
        "time_zone": "Europe/Paris",
        "next_run_ns": utc_ns(2026, 3, 29, 1, 0),
    }
    base.update(overrides)
    return Task(**base)


def test_a_paused_schedule_is_due_never_and_remembers_its_place() -> None:
    task = recurring(buffered_child_id="nightly-x")
    now = utc_ns(2026, 3, 28, 12)
    paused = task.paused_now(now, "olga", "storage migration", {SkipReason.PAUSED: 1})
    assert (paused.paused, paused.paused_by, paused.pause_note) == (
        True,
        "olga",
        "storage migration",
    )
    assert paused.paused_at_ns == now
    assert paused.next_run_ns == HELD_NS
    assert paused.paused_next_ns == task.next_run_ns
    assert paused.buffered_child_id == ""
    assert paused.skipped_runs == {"paused": 1}
    with pytest.raises(FailedPrecondition, match=r"already paused.*olga.*storage migration"):
        paused.paused_now(now + S, "ada", "", {})

    later = utc_ns(2026, 4, 2, 12)
    resumed = paused.resumed_now(later, "ada", "done")
    assert not resumed.paused
    assert (resumed.resumed_by, resumed.resumed_at_ns, resumed.resume_note) == (
        "ada",
        later,
        "done",
    )
    # Due where it stopped; the occurrences before the resume are skipped when it fires.
    assert resumed.next_run_ns == task.next_run_ns
    plan = plan_catch_up(
        resumed.schedule,
        resumed.next_run_ns,
        later - 1,
        window_seconds=0,
        skip_before_ns=later,
    )
    assert plan.skipped == {SkipReason.PAUSED: 5}  # 29 March to 2 April (00:30 UTC)
    assert plan.next_fire_ns == utc_ns(2026, 4, 3, 0, 30)
    with pytest.raises(FailedPrecondition, match="not paused"):
        resumed.resumed_now(later, "ada", "")


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (recurring(cron_schedule=""), "one-off task; pause applies to recurring tasks only"),
        (recurring(parent_task_id="daily"), "run of recurring task 'daily'"),
        (recurring(status=TaskState.CANCELLED), "is cancelled; pause applies to a live"),
    ],
)
def test_only_a_live_recurring_task_can_be_paused(task: Task, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        task.paused_now(0, "olga", "", {})


def test_a_run_has_started_once_an_attempt_counted_or_is_due() -> None:
    parent = recurring()
    now = utc_ns(2026, 3, 28, 12)
    waiting = parent.child(now, now, held=True)
    assert not waiting.has_started(now)
    claimed_ahead = parent.child(now, now, held=False)
    claimed_ahead = Task.from_doc({**claimed_ahead.to_doc(), "next_run_ns": now + 2 * S})
    claimed_ahead = claimed_ahead.claimed(now, "replica-a", 10 * S)
    assert not claimed_ahead.has_started(now)  # planned to start in 2 s
    assert claimed_ahead.has_started(now + 2 * S)
    released = claimed_ahead.released(now + S, "shutdown", started=False)
    assert not released.has_started(now + 3 * S)
    retrying = claimed_ahead.attempt_failed(now + 3 * S, "boom", permanent=False)
    assert retrying.has_started(now + 3 * S)
    assert retrying.attempts[-1].outcome == AttemptOutcome.FAILED


def test_upcoming_runs() -> None:
    task = recurring()
    now = utc_ns(2026, 3, 28, 12)
    assert task.upcoming(now, 3) == [
        utc_ns(2026, 3, 29, 1, 0),
        utc_ns(2026, 3, 30, 0, 30),
        utc_ns(2026, 3, 31, 0, 30),
    ]
    # Paused: where it would fire if resumed at `later`.
    paused = task.paused_now(now, "olga", "", {})
    later = utc_ns(2026, 4, 10, 12)
    assert paused.upcoming(later, 1) == [utc_ns(2026, 4, 11, 0, 30)]
    assert task.cancelled(now, "").upcoming(now, 3) == []


def test_trigger_ids_never_collide_with_occurrence_ids() -> None:
    at = utc_ns(2026, 3, 28, 12) + 123_456_789
    assert trigger_task_id("nightly", at) == "nightly-20260328T120000.123Z"
    assert trigger_task_id("nightly", at) != child_task_id("nightly", at)


def test_schedule_state_round_trips() -> None:
    now = utc_ns(2026, 3, 28, 12)
    task = recurring(
        catchup_window_seconds=600,
        skipped_runs={"catchup": 3, "overlap": 1},
        backfill=Backfill(next_ns=now, end_ns=now + 86400 * S, remaining=2, requested_by="ada"),
    ).paused_now(now, "olga", "why", {})
    assert Task.from_doc(task.to_doc()) == task
    run = task.child(now, now, held=False, origin=RunOrigin.BACKFILL)
    assert Task.from_doc(run.to_doc()).run_origin == "backfill"
    # A document from before the reasons were counted apart.
    old = {**recurring().to_doc(), "skipped_fires": 4}
    del old["skipped_runs"], old["time_zone"], old["paused"]
    assert Task.from_doc(old).skipped_runs == {"overlap": 4}
    assert Task.from_doc(old).time_zone == "UTC"
