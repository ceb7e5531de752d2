"""The Scheduler's domain metrics (Prometheus, served on the service's /metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from tai_scheduler.task import RunOrigin, SkipReason, Task

DISPATCH_LAG = Histogram(
    "tai_scheduler_dispatch_lag_seconds",
    "Time from a task attempt's due time to the start of its executor on a replica.",
    buckets=(
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
    ),
)
ATTEMPTS = Counter(
    "tai_scheduler_attempts_total",
    "Task attempts by how they ended.",
    ["task_type", "outcome"],
)
RUNNING = Gauge("tai_scheduler_running_attempts", "Attempts running on this replica.")
CLAIMED_AHEAD = Gauge(
    "tai_scheduler_claimed_waiting_tasks",
    "Tasks this replica claimed and holds until their due time, or until a slot frees once due.",
)
LEASE_STEALS = Counter(
    "tai_scheduler_lease_steals_total",
    "Tasks taken over by a replica because another replica's lease on them lapsed.",
)
DUE_TASKS = Gauge(
    "tai_scheduler_due_tasks",
    "Tasks due and held by no live lease: pending and due, or running with a lapsed lease. "
    "Counted in the store every few seconds by each replica, so every replica reports the "
    "same number: aggregate with max, not sum.",
)
SKIPPED_RUNS = Counter(
    "tai_scheduler_skipped_runs_total",
    "Occurrences of recurring tasks that made no run, by reason: catchup (missed in an outage, "
    "older than the catch-up window), overlap (the overlap policy dropped it), paused (came "
    "while paused, or its run was waiting to start when the schedule was paused).",
    ["reason"],
)
SCHEDULE_RUNS = Counter(
    "tai_scheduler_schedule_runs_total",
    "Runs of recurring tasks created, by origin: schedule (the cadence, catch-up included), "
    "trigger, backfill.",
    ["origin"],
)
for _reason in SkipReason:
    SKIPPED_RUNS.labels(_reason.value)
for _origin in RunOrigin:
    SCHEDULE_RUNS.labels(_origin.value)


def count_schedule_changes(skipped: Mapping[SkipReason, int], created: Iterable[Task]) -> None:
    """Counts what a committed transaction did to schedules: the occurrences it skipped and
    the runs it created."""
    for reason, count in skipped.items():
        if count:
            SKIPPED_RUNS.labels(reason.value).inc(count)
    for task in created:
        if task.parent_task_id and task.run_origin:
            SCHEDULE_RUNS.labels(task.run_origin).inc()
