"""Translation between the Scheduler's protobuf messages and its domain types."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tai.v1 import scheduler_pb2
from tai_common.core import InvalidArgument
from tai_common.core.units import NS_PER_SECOND

from tai_scheduler.task import (
    AttemptOutcome,
    OverlapPolicy,
    RetryConfig,
    Submission,
    Task,
    TaskState,
)

OVERLAP_TO_PROTO = {
    OverlapPolicy.SKIP: scheduler_pb2.OVERLAP_POLICY_SKIP,
    OverlapPolicy.BUFFER_ONE: scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE,
    OverlapPolicy.BUFFER_ALL: scheduler_pb2.OVERLAP_POLICY_BUFFER_ALL,
}
OVERLAP_FROM_PROTO = {value: key for key, value in OVERLAP_TO_PROTO.items()}


def overlap_from_proto(value: int) -> OverlapPolicy:
    """The policy a request names (UNSPECIFIED: SKIP)."""
    return optional_overlap_from_proto(value) or OverlapPolicy.SKIP


def optional_overlap_from_proto(value: int) -> OverlapPolicy | None:
    """The policy a request names, None for UNSPECIFIED."""
    if value == scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED:
        return None
    if value not in OVERLAP_FROM_PROTO:
        raise InvalidArgument("overlap_policy", f"unknown overlap policy {value}")
    return OVERLAP_FROM_PROTO[value]  # type: ignore[index]


def submission_from_request(request: scheduler_pb2.SubmitTaskRequest) -> Submission:
    """The domain's view of a SubmitTask request (range checks on the retry config here,
    everything else in `validate_submission`)."""
    retry = request.retry
    return Submission(
        task_type=request.task_type,
        parameters=dict(request.parameters),
        task_id=request.task_id,
        scheduled_time_ns=request.scheduled_time_ns,
        priority=request.priority,
        retry=RetryConfig.from_request(
            max_attempts=retry.max_attempts,
            min_backoff_ms=retry.min_backoff_ms,
            max_backoff_ms=retry.max_backoff_ms,
            max_doublings=retry.max_doublings,
        ),
        cron_schedule=request.cron_schedule,
        overlap_policy=overlap_from_proto(request.overlap_policy),
        timeout_seconds=request.timeout_seconds,
        time_zone=request.time_zone,
        catchup_window_seconds=request.catchup_window_seconds,
    )


def retry_to_proto(retry: RetryConfig) -> scheduler_pb2.RetryConfig:
    return scheduler_pb2.RetryConfig(
        max_attempts=retry.max_attempts,
        min_backoff_ms=retry.min_backoff_ms,
        max_backoff_ms=retry.max_backoff_ms,
        max_doublings=retry.max_doublings,
    )


def task_to_proto(task: Task) -> scheduler_pb2.TaskStatus:
    return scheduler_pb2.TaskStatus(
        task_id=task.id,
        status=task.status.value,
        created_at_ns=task.created_at_ns,
        started_at_ns=task.started_at_ns,
        completed_at_ns=task.completed_at_ns,
        error_message=task.error_message,
        result=dict(task.result),
        task_type=task.task_type,
        parameters=dict(task.parameters),
        scheduled_time_ns=task.scheduled_time_ns,
        priority=task.priority,
        attempts=[
            scheduler_pb2.TaskAttempt(
                attempt=a.attempt,
                started_at_ns=a.started_at_ns,
                ended_at_ns=a.ended_at_ns,
                outcome=a.outcome,
                error_message=a.error_message,
                worker=a.worker,
                idempotency_key=a.idempotency_key,
            )
            for a in task.attempts
        ],
        retry=retry_to_proto(task.retry),
        cron_schedule=task.cron_schedule,
        overlap_policy=(
            OVERLAP_TO_PROTO[task.overlap_policy]
            if task.is_recurring
            else scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED
        ),
        # A held run has no due time until its predecessor ends, nor a paused schedule.
        next_run_ns=0 if task.held or task.paused else _next_fire(task),
        created_by=task.created_by,
        parent_task_id=task.parent_task_id,
        timeout_seconds=task.timeout_seconds,
        **_schedule_fields(task),
    )


def _next_fire(task: Task) -> int:
    if task.is_recurring and 0 < task.next_run_ns < task.resumed_at_ns and not task.is_final:
        # Just resumed after a long pause, the worker still skipping what came meanwhile: the
        # next fire is the first from the resume on.
        return task.schedule.next_fire_ns(task.resumed_at_ns - 1)
    return task.next_run_ns


def _schedule_fields(task: Task) -> dict[str, Any]:
    if task.parent_task_id:
        return {"run_origin": task.run_origin}
    if not task.is_recurring:
        return {}
    backfill = task.backfill
    return {
        "time_zone": task.time_zone,
        "catchup_window_seconds": task.catchup_window_seconds,
        "paused": task.paused,
        "paused_by": task.paused_by,
        "paused_at_ns": task.paused_at_ns,
        "pause_note": task.pause_note,
        "resumed_by": task.resumed_by,
        "resumed_at_ns": task.resumed_at_ns,
        "resume_note": task.resume_note,
        "skipped_runs": dict(task.skipped_runs),
        "backfill": (
            scheduler_pb2.BackfillProgress(
                next_ns=backfill.next_ns,
                end_ns=backfill.end_ns,
                remaining=backfill.remaining,
                requested_by=backfill.requested_by,
                requested_at_ns=backfill.requested_at_ns,
            )
            if backfill
            else None
        ),
    }


def update_message(status: scheduler_pb2.TaskStatus) -> str:
    """A one-line account of a task's latest change, for TaskUpdate.message (read from the
    TaskStatus, so a replica that only saw the task's event says the same)."""
    last = status.attempts[-1] if status.attempts else None
    if status.status == TaskState.RUNNING and last is not None:
        return f"attempt {last.attempt} started on {last.worker}"
    if status.status == TaskState.PENDING:
        if status.paused:
            note = f": {status.pause_note}" if status.pause_note else ""
            return f"paused by {status.paused_by or '-'}{note}"
        if status.cron_schedule:
            return f"next run at {_format_ns(status.next_run_ns)}"
        if not status.next_run_ns:
            return "waiting for the previous run to end"
        if last is not None and last.outcome:
            what = "ended" if last.outcome == AttemptOutcome.LEASE_LOST else last.outcome
            return (
                f"attempt {last.attempt} {what}: {last.error_message}; "
                f"next attempt at {_format_ns(status.next_run_ns)}"
            )
        return f"due at {_format_ns(status.next_run_ns)}"
    if status.status == TaskState.COMPLETED:
        return "completed"
    return status.error_message


def _format_ns(value: int) -> str:
    moment = dt.datetime.fromtimestamp(value / NS_PER_SECOND, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
