"""The task domain without gRPC or a store: backoff math, cron fires, overlap decisions,
validation and the lifecycle."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from tai_common.core import FailedPrecondition, InvalidArgument
from tai_common.core.units import NS_PER_SECOND
from tai_scheduler.task import (
    HELD_NS,
    INTERNAL_LIMITS,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    AttemptOutcome,
    CronSchedule,
    FireDecision,
    OverlapPolicy,
    RetryConfig,
    Submission,
    Task,
    TaskState,
    child_task_id,
    decide_fire,
    idempotency_key,
    new_task,
    validate_submission,
)

KNOWN = ("enforce_policy", "request_action", "test_record")
S = NS_PER_SECOND


def utc_ns(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp()) * S  # type: ignore[misc]


# --- retry ---


def test_backoff_doubles_then_grows_linearly_then_caps() -> None:
    # Cloud Tasks' documented example: min 10 s, max 300 s, 3 doublings.
    retry = RetryConfig(
        max_attempts=10, min_backoff_ms=10_000, max_backoff_ms=300_000, max_doublings=3
    )
    waits = [retry.backoff_ms(n) // 1000 for n in range(1, 10)]
    assert waits == [10, 20, 40, 80, 160, 240, 300, 300, 300]


def test_backoff_without_doublings_is_linear() -> None:
    retry = RetryConfig(min_backoff_ms=100, max_backoff_ms=1000, max_doublings=0)
    assert [retry.backoff_ms(n) for n in range(1, 6)] == [100, 200, 300, 400, 500]


def test_default_backoff_doubles_up_to_the_maximum() -> None:
    retry = RetryConfig()
    assert [retry.backoff_ms(n) for n in range(1, 9)] == [
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        60000,
        60000,
    ]


def test_zeros_in_a_request_mean_defaults() -> None:
    assert RetryConfig.from_request() == RetryConfig()
    # A minimum above the default maximum raises the maximum with it.
    raised = RetryConfig.from_request(min_backoff_ms=120_000)
    assert (raised.min_backoff_ms, raised.max_backoff_ms) == (120_000, 120_000)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": -1}, "retry.max_attempts"),
        ({"max_attempts": 101}, "retry.max_attempts"),
        ({"min_backoff_ms": -5}, "retry.min_backoff_ms"),
        ({"min_backoff_ms": 86_400_001}, "retry.min_backoff_ms"),
        ({"min_backoff_ms": 5000, "max_backoff_ms": 1000}, "retry.max_backoff_ms"),
        ({"max_doublings": 31}, "retry.max_doublings"),
        ({"max_doublings": -1}, "retry.max_doublings"),
    ],
)
def test_retry_values_out_of_range_name_the_field(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RetryConfig.from_request(**kwargs)
    assert caught.value.field == field


# --- cron ---


def test_five_field_cron_fires_on_the_next_minute_in_utc() -> None:
    schedule = CronSchedule.parse("*/15 * * * *")
    assert schedule.next_fire_ns(utc_ns(2025, 3, 1, 10, 7, 30)) == utc_ns(2025, 3, 1, 10, 15)
    # Strictly after: a time on a fire gives the following fire.
    assert schedule.next_fire_ns(utc_ns(2025, 3, 1, 10, 15)) == utc_ns(2025, 3, 1, 10, 30)


def test_six_field_cron_has_seconds_first() -> None:
    schedule = CronSchedule.parse("*/10 * * * * *")
    assert schedule.has_seconds
    assert schedule.next_fire_ns(utc_ns(2025, 3, 1, 10, 0, 3) + 500_000_000) == utc_ns(
        2025, 3, 1, 10, 0, 10
    )


def test_macros_are_accepted() -> None:
    assert CronSchedule.parse("@hourly").next_fire_ns(utc_ns(2025, 1, 1, 0, 30)) == utc_ns(
        2025, 1, 1, 1, 0
    )


@pytest.mark.parametrize(
    "expression",
    ["", "* * * *", "* * * * * * *", "61 * * * *", "nonsense here * * *", "0 0 30 2 *"],
)
def test_bad_cron_is_refused_naming_the_field(expression: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        CronSchedule.parse(expression)
    assert caught.value.field == "cron_schedule"


def test_first_fire_is_never_in_the_past() -> None:
    now = utc_ns(2025, 1, 1, 12, 0, 0) + 200_000_000
    task = new_task(
        Submission(task_type="test_record", cron_schedule="* * * * * *"),
        task_id="t",
        now_ns=now,
        principal="me",
        schedule=CronSchedule.parse("* * * * * *"),
    )
    assert task.next_run_ns == utc_ns(2025, 1, 1, 12, 0, 1)
    assert task.is_recurring


def test_child_ids_name_the_fire_time() -> None:
    assert child_task_id("nightly", utc_ns(2025, 6, 1, 2, 0, 5)) == "nightly-20250601T020005Z"


# --- overlap ---


@pytest.mark.parametrize(
    ("policy", "active", "buffered", "decision"),
    [
        (OverlapPolicy.SKIP, None, None, FireDecision.RUN),
        (OverlapPolicy.SKIP, TaskState.COMPLETED, None, FireDecision.RUN),
        (OverlapPolicy.SKIP, TaskState.RUNNING, None, FireDecision.SKIP),
        (OverlapPolicy.SKIP, TaskState.PENDING, None, FireDecision.SKIP),
        (OverlapPolicy.BUFFER_ONE, None, None, FireDecision.RUN),
        (OverlapPolicy.BUFFER_ONE, TaskState.FAILED, None, FireDecision.RUN),
        (OverlapPolicy.BUFFER_ONE, TaskState.RUNNING, None, FireDecision.BUFFER),
        (OverlapPolicy.BUFFER_ONE, TaskState.RUNNING, TaskState.PENDING, FireDecision.SKIP),
        (OverlapPolicy.BUFFER_ONE, TaskState.RUNNING, TaskState.CANCELLED, FireDecision.BUFFER),
        (
            OverlapPolicy.BUFFER_ONE,
            TaskState.COMPLETED,
            TaskState.PENDING,
            FireDecision.RELEASE_BUFFERED,
        ),
    ],
)
def test_overlap_decisions(
    policy: OverlapPolicy,
    active: TaskState | None,
    buffered: TaskState | None,
    decision: FireDecision,
) -> None:
    assert decide_fire(policy, active, buffered) is decision


# --- validation ---


def submission(**overrides: Any) -> Submission:
    base: dict[str, Any] = {"task_type": "test_record", "parameters": {"a": "b"}}
    base.update(overrides)
    return Submission(**base)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"task_type": "no_such_type"}, "task_type"),
        ({"priority": 11}, "priority"),
        ({"priority": -1}, "priority"),
        ({"scheduled_time_ns": -1}, "scheduled_time_ns"),
        ({"timeout_seconds": -1}, "timeout_seconds"),
        ({"timeout_seconds": 86_401}, "timeout_seconds"),
        ({"cron_schedule": "every day"}, "cron_schedule"),
        ({"cron_schedule": "   "}, "cron_schedule"),
        ({"task_id": "has space"}, "task_id"),
        ({"task_id": "-leading-dash"}, "task_id"),
        ({"task_id": "x" * 129}, "task_id"),
        ({"parameters": {f"k{i}": "v" for i in range(101)}}, "parameters"),
        ({"parameters": {"": "v"}}, "parameters"),
    ],
)
def test_invalid_submissions_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(submission(**overrides), KNOWN)
    assert caught.value.field == field


def test_oversized_parameter_keys_and_values_name_the_entry() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(submission(parameters={"k" * 129: "v"}), KNOWN)
    assert caught.value.field.startswith("parameters[")
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(submission(parameters={"big": "v" * 4097}), KNOWN)
    assert caught.value.field == "parameters['big']"


def test_unknown_task_type_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(submission(task_type="nope"), KNOWN)
    assert "enforce_policy, request_action, test_record" in caught.value.reason


def test_internal_limits_accept_what_events_carry() -> None:
    big = submission(parameters={"payload_b64": "A" * 100_000})
    with pytest.raises(InvalidArgument):
        validate_submission(big, KNOWN)
    validate_submission(big, KNOWN, INTERNAL_LIMITS)


def test_idempotency_keys_stay_within_request_id_bounds() -> None:
    assert idempotency_key("t-1") == "tai-task:t-1"
    long_key = idempotency_key("x" * 200)
    assert len(long_key) <= MAX_IDEMPOTENCY_KEY_LENGTH
    assert long_key == idempotency_key("x" * 200)
    assert long_key != idempotency_key("y" * 200)


# --- lifecycle ---


def make_task(**overrides: Any) -> Task:
    base: dict[str, Any] = {
        "id": "t-1",
        "task_type": "test_record",
        "parameters": {},
        "priority": 5,
        "scheduled_time_ns": 100,
        "created_at_ns": 100,
        "retry": RetryConfig(max_attempts=3, min_backoff_ms=1000, max_backoff_ms=10_000),
        "timeout_seconds": 60,
        "next_run_ns": 100,
    }
    base.update(overrides)
    return Task(**base)


def test_claim_starts_an_attempt_and_bumps_the_fencing_token() -> None:
    task = make_task()
    running = task.claimed(1_000, "replica-a", lease_ns=10 * S)
    assert running.status is TaskState.RUNNING
    assert running.fencing_token == task.fencing_token + 1
    assert running.lease_owner == "replica-a"
    assert running.lease_until_ns == 1_000 + 10 * S
    assert running.started_at_ns == 1_000
    assert running.attempts[-1].attempt == 1
    assert running.attempts[-1].idempotency_key == "tai-task:t-1"
    assert running.version == task.version + 1
    with pytest.raises(FailedPrecondition):
        running.claimed(2_000, "replica-b", lease_ns=S)


def test_a_failed_attempt_is_retried_after_its_backoff_then_fails() -> None:
    task = make_task().claimed(1_000, "a", lease_ns=S)
    retrying = task.attempt_failed(2_000, "boom", permanent=False)
    assert retrying.status is TaskState.PENDING
    assert retrying.next_run_ns == 2_000 + 1000 * 1_000_000
    assert retrying.attempts[-1].outcome == AttemptOutcome.FAILED
    second = retrying.claimed(retrying.next_run_ns, "b", lease_ns=S)
    retrying = second.attempt_failed(second.next_run_ns + 5, "boom", permanent=False)
    assert retrying.next_run_ns == second.next_run_ns + 5 + 2000 * 1_000_000
    third = retrying.claimed(retrying.next_run_ns, "a", lease_ns=S)
    failed = third.attempt_failed(third.next_run_ns + 5, "boom", permanent=False)
    assert failed.status is TaskState.FAILED
    assert "attempt 3 of 3" in failed.error_message
    assert [a.attempt for a in failed.attempts] == [1, 2, 3]


def test_a_permanent_error_fails_at_once() -> None:
    task = make_task().claimed(1_000, "a", lease_ns=S)
    failed = task.attempt_failed(2_000, "refused", permanent=True)
    assert failed.status is TaskState.FAILED
    assert failed.completed_at_ns == 2_000
    assert "permanent" in failed.error_message


def test_a_lapsed_lease_is_recorded_and_the_task_is_due_again() -> None:
    task = make_task().claimed(1_000, "a", lease_ns=S)
    lapsed = task.lease_lapsed(5 * S)
    assert lapsed.status is TaskState.PENDING
    assert lapsed.next_run_ns == 5 * S
    assert lapsed.attempts[-1].outcome == AttemptOutcome.LEASE_LOST
    assert lapsed.attempts[-1].ended_at_ns == 5 * S
    again = lapsed.claimed(5 * S, "b", lease_ns=S)
    assert again.fencing_token == task.fencing_token + 1
    assert again.attempts[-1].idempotency_key == task.attempts[-1].idempotency_key


def test_a_lapsed_lease_on_the_last_attempt_fails_the_task() -> None:
    task = make_task(retry=RetryConfig(max_attempts=1)).claimed(1_000, "a", lease_ns=S)
    failed = task.lease_lapsed(5 * S)
    assert failed.status is TaskState.FAILED
    assert "lease" in failed.error_message


def test_a_released_attempt_does_not_use_up_an_attempt() -> None:
    task = make_task(retry=RetryConfig(max_attempts=1)).claimed(1_000, "a", lease_ns=S)
    released = task.released(2_000, "shutting down")
    assert released.status is TaskState.PENDING
    assert released.attempts_used == 0
    assert released.attempts[-1].outcome == AttemptOutcome.LEASE_LOST
    assert released.claimed(3_000, "b", lease_ns=S).attempts[-1].attempt == 2


def test_a_task_claimed_ahead_plans_its_attempt_at_its_due_time() -> None:
    task = make_task(next_run_ns=5 * S)
    claimed = task.claimed(4 * S, "a", lease_ns=10 * S)
    assert claimed.status is TaskState.RUNNING
    assert claimed.next_run_ns == 5 * S
    assert claimed.lease_until_ns == 14 * S
    attempt = claimed.attempts[-1]
    assert (attempt.claimed_at_ns, attempt.started_at_ns) == (4 * S, 5 * S)
    assert claimed.started_at_ns == 5 * S
    # Claimed once due, it starts at the claim.
    late = task.claimed(6 * S, "a", lease_ns=S).attempts[-1]
    assert (late.claimed_at_ns, late.started_at_ns) == (6 * S, 6 * S)


def test_an_attempt_records_when_its_replica_started_it() -> None:
    claimed = make_task(next_run_ns=5 * S).claimed(4 * S, "a", lease_ns=10 * S)
    started = claimed.started(5 * S + 7)
    assert started.attempts[-1].started_at_ns == 5 * S + 7
    assert started.started_at_ns == 5 * S + 7
    assert started.version == claimed.version
    done = started.succeeded(6 * S, {})
    assert done.attempts[-1].started_at_ns == 5 * S + 7
    # A later attempt's start leaves the task's first start alone.
    retry = claimed.attempt_failed(5 * S, "boom", permanent=False)
    second = retry.claimed(retry.next_run_ns, "b", lease_ns=S).started(retry.next_run_ns + 3)
    assert second.started_at_ns == 5 * S
    assert second.attempts[-1].started_at_ns == retry.next_run_ns + 3
    assert done.started(1) == done  # no attempt running: nothing to record


def test_a_claim_released_before_it_started_keeps_the_due_time() -> None:
    claimed = make_task(next_run_ns=5 * S).claimed(4 * S, "a", lease_ns=10 * S)
    released = claimed.released(4 * S + 1, "shutting down", started=False)
    assert released.status is TaskState.PENDING
    assert released.next_run_ns == 5 * S
    assert released.attempts_used == 0
    assert (released.lease_owner, released.lease_until_ns) == ("", 0)
    assert released.fencing_token == claimed.fencing_token
    # One that started is due again at once.
    assert claimed.released(6 * S, "shutting down").next_run_ns == 6 * S


def test_cancel_fences_off_the_running_attempt_and_finished_tasks_refuse() -> None:
    running = make_task().claimed(1_000, "a", lease_ns=S)
    cancelled = running.cancelled(2_000, "not needed")
    assert cancelled.status is TaskState.CANCELLED
    assert cancelled.fencing_token == running.fencing_token + 1
    assert cancelled.attempts[-1].outcome == AttemptOutcome.CANCELLED
    assert cancelled.error_message == "cancelled: not needed"
    with pytest.raises(FailedPrecondition):
        cancelled.cancelled(3_000, "")
    done = running.succeeded(2_000, {"ok": "1"})
    with pytest.raises(FailedPrecondition):
        done.cancelled(3_000, "")


def test_a_buffered_child_is_held_until_released() -> None:
    parent = make_task(cron_schedule="* * * * * *", overlap_policy=OverlapPolicy.BUFFER_ONE)
    child = parent.child(5 * S, 5 * S, held=True)
    assert child.parent_task_id == parent.id
    assert (child.held, child.next_run_ns) == (True, HELD_NS)
    assert not child.is_recurring
    released = child.released_from_hold(7 * S)
    assert (released.held, released.next_run_ns) == (False, 7 * S)


def test_documents_round_trip() -> None:
    task = make_task(parameters={"a": "b"}).claimed(1_000, "a", lease_ns=S)
    task = task.attempt_failed(2_000, "boom", permanent=False)
    assert Task.from_doc(task.to_doc()) == task
    ahead = make_task(next_run_ns=5 * S).claimed(4 * S, "a", lease_ns=S)
    assert Task.from_doc(ahead.to_doc()).attempts[-1].claimed_at_ns == 4 * S
