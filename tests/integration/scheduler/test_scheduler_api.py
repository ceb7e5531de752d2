"""Every Scheduler RPC over real gRPC against a real server (SQLite store and bus), with the
test executors of tests/plugins/executors loaded as plug-ins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scheduler_helpers import NS, MakeScheduler, RunningScheduler, wait_status, wait_until
from support.rpc_errors import expect_error, field_violations
from tai.v1 import scheduler_pb2, scheduler_pb2_grpc
from tai_test_executors import ledger as test_ledger

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def submit(s: RunningScheduler, ledger: Path, **kwargs: Any) -> str:
    parameters = {"ledger": str(ledger), **kwargs.pop("parameters", {})}
    kwargs.setdefault("task_type", "test_record")
    receipt = await s.client.submit(parameters=parameters, **kwargs)
    return receipt.resource_id


async def test_submit_runs_the_task_and_records_its_attempt(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    receipt = await scheduler.client.submit(
        task_type="test_record", parameters={"ledger": str(ledger)}
    )
    assert receipt.status == "success"
    assert receipt.resource_id.startswith("task-")
    assert receipt.result_data["status"] == "pending"
    assert receipt.resource_version == 1

    task = await wait_status(scheduler.client, receipt.resource_id)
    assert task.status == "completed", task
    assert task.task_type == "test_record"
    assert task.priority == 5
    assert task.timeout_seconds == 60
    assert task.retry == scheduler_pb2.RetryConfig(
        max_attempts=3, min_backoff_ms=1000, max_backoff_ms=60000, max_doublings=16
    )
    assert task.created_by == "anonymous"
    assert task.started_at_ns >= task.scheduled_time_ns
    assert task.completed_at_ns >= task.started_at_ns
    [attempt] = task.attempts
    assert attempt.outcome == "completed"
    assert attempt.worker == "test-scheduler-0"
    assert attempt.idempotency_key == f"tai-task:{receipt.resource_id}"
    assert attempt.ended_at_ns >= attempt.started_at_ns > 0
    assert task.result["completion_id"] == test_ledger.completions(ledger)[attempt.idempotency_key]
    assert task.result["replayed"] == "false"


async def test_a_used_id_is_already_exists(scheduler: RunningScheduler, ledger: Path) -> None:
    await submit(
        scheduler, ledger, task_id="nightly-report", scheduled_time_ns=time.time_ns() + 60 * NS
    )
    error = await expect_error(
        submit(scheduler, ledger, task_id="nightly-report"), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "nightly-report" in (error.details() or "")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"task_type": ""}, "task_type"),
        ({"task_type": "no_such_executor"}, "task_type"),
        ({"priority": 11}, "priority"),
        ({"priority": -3}, "priority"),
        ({"scheduled_time_ns": -1}, "scheduled_time_ns"),
        ({"timeout_seconds": -1}, "timeout_seconds"),
        ({"cron_schedule": "every monday"}, "cron_schedule"),
        ({"cron_schedule": "* * * * * * *"}, "cron_schedule"),
        ({"overlap_policy": 9}, "overlap_policy"),
        ({"retry": scheduler_pb2.RetryConfig(max_attempts=-1)}, "retry.max_attempts"),
        ({"retry": scheduler_pb2.RetryConfig(max_attempts=1000)}, "retry.max_attempts"),
        (
            {"retry": scheduler_pb2.RetryConfig(min_backoff_ms=5000, max_backoff_ms=10)},
            "retry.max_backoff_ms",
        ),
        ({"retry": scheduler_pb2.RetryConfig(max_doublings=99)}, "retry.max_doublings"),
        ({"task_id": "bad id"}, "task_id"),
        ({"task_id": "x" * 129}, "task_id"),
        ({"parameters": {f"k{i}": "v" for i in range(101)}}, "parameters"),
        ({"parameters": {"big": "v" * 4097}}, "parameters['big']"),
        ({"task_type": "enforce_policy", "parameters": {}}, "parameters[policy_id]"),
        (
            {"task_type": "enforce_policy", "parameters": {"policy_id": "p", "dry_run": "maybe"}},
            "parameters[dry_run]",
        ),
        ({"task_type": "request_action", "parameters": {}}, "parameters[action_type]"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    scheduler: RunningScheduler, kwargs: dict[str, Any], field: str
) -> None:
    kwargs.setdefault("task_type", "test_record")
    error = await expect_error(scheduler.client.submit(**kwargs), INVALID)
    assert field_violations(error) == [field]
    assert (error.details() or "").startswith(field)


async def test_unknown_task_type_lists_the_known_types(scheduler: RunningScheduler) -> None:
    error = await expect_error(scheduler.client.submit(task_type="nope"), INVALID)
    details = error.details() or ""
    for known in ("enforce_policy", "revoke_policy", "request_action", "test_record"):
        assert known in details


async def test_bad_ids_on_every_rpc(scheduler: RunningScheduler) -> None:
    stub = scheduler_pb2_grpc.SchedulerStub(scheduler.channel)
    for call in (
        scheduler.client.get(""),
        scheduler.client.get("no spaces"),
        scheduler.client.cancel(""),
        scheduler.client.cancel("x" * 300),
        scheduler.client.list_page(parent_task_id="a b"),
    ):
        error = await expect_error(call, INVALID)
        assert field_violations(error) in (["task_id"], ["parent_task_id"])
    stream = stub.StreamTaskUpdates(scheduler_pb2.StreamTaskUpdatesRequest(task_id="a b"))
    error = await expect_error(stream.read(), INVALID)
    assert field_violations(error) == ["task_id"]
    error = await expect_error(scheduler.client.cancel("t", reason="r" * 1001), INVALID)
    assert field_violations(error) == ["reason"]


async def test_unknown_task_is_not_found(scheduler: RunningScheduler) -> None:
    await expect_error(scheduler.client.get("task-missing"), grpc.StatusCode.NOT_FOUND)
    await expect_error(scheduler.client.cancel("task-missing"), grpc.StatusCode.NOT_FOUND)
    await expect_error(scheduler.client.watch("task-missing").read(), grpc.StatusCode.NOT_FOUND)


async def test_a_task_scheduled_ahead_runs_once_at_its_time(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    at = time.time_ns() + 2 * NS
    task_id = await submit(scheduler, ledger, scheduled_time_ns=at)
    early = await scheduler.client.get(task_id)
    assert (early.status, early.next_run_ns, early.scheduled_time_ns) == ("pending", at, at)

    task = await wait_status(scheduler.client, task_id)
    assert task.status == "completed"
    assert task.started_at_ns >= at
    assert len(task.attempts) == 1
    runs = test_ledger.executions(ledger)
    assert [(r.task_id, r.replay) for r in runs] == [(task_id, False)]
    assert runs[0].started_ns >= at
    assert task.result["completion_id"]


async def test_a_cancelled_task_never_runs(scheduler: RunningScheduler, ledger: Path) -> None:
    # Due soon, but far enough ahead that a slow machine still submits and cancels it in time.
    at = time.time_ns() + 5 * NS
    task_id = await submit(scheduler, ledger, scheduled_time_ns=at)
    receipt = await scheduler.client.cancel(task_id, reason="changed my mind")
    assert receipt.result_data["status"] == "cancelled"
    await asyncio.sleep(max(0.0, (at - time.time_ns()) / NS) + 1.0)
    task = await scheduler.client.get(task_id)
    assert task.status == "cancelled"
    assert task.error_message == "cancelled: changed my mind"
    assert task.attempts == []
    assert test_ledger.executions(ledger) == []


async def test_cancelling_a_finished_task_is_failed_precondition(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    task_id = await submit(scheduler, ledger)
    await wait_status(scheduler.client, task_id)
    error = await expect_error(
        scheduler.client.cancel(task_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "completed" in (error.details() or "")


async def test_cancelling_a_running_task_stops_it_and_discards_its_outcome(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    task_id = await submit(scheduler, ledger, task_type="test_sleep", parameters={"seconds": "30"})
    await wait_status(scheduler.client, task_id, ("running",))
    await scheduler.client.cancel(task_id, reason="too slow")
    task = await scheduler.client.get(task_id)
    assert task.status == "cancelled"
    assert task.attempts[-1].outcome == "cancelled"
    await asyncio.sleep(1.0)
    assert (await scheduler.client.get(task_id)).status == "cancelled"
    assert test_ledger.completions(ledger) == {}


async def test_a_failing_executor_is_retried_with_backoff_then_fails(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    retry = scheduler_pb2.RetryConfig(max_attempts=3, min_backoff_ms=300, max_backoff_ms=2000)
    task_id = await submit(
        scheduler, ledger, task_type="test_flaky", parameters={"fail_times": "10"}, retry=retry
    )
    task = await wait_status(scheduler.client, task_id)
    assert task.status == "failed"
    assert [a.outcome for a in task.attempts] == ["failed"] * 3
    assert "attempt 3 failed on purpose" in task.error_message
    assert "attempt 3 of 3" in task.error_message
    # Each retry waits at least its backoff: 300 ms, then 600 ms.
    starts = [a.started_at_ns for a in task.attempts]
    ends = [a.ended_at_ns for a in task.attempts]
    assert starts[1] - ends[0] >= 300_000_000
    assert starts[2] - ends[1] >= 600_000_000
    keys = {a.idempotency_key for a in task.attempts}
    assert keys == {f"tai-task:{task_id}"}


async def test_a_flaky_executor_succeeds_on_a_later_attempt(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    retry = scheduler_pb2.RetryConfig(max_attempts=5, min_backoff_ms=100)
    task_id = await submit(
        scheduler, ledger, task_type="test_flaky", parameters={"fail_times": "2"}, retry=retry
    )
    task = await wait_status(scheduler.client, task_id)
    assert task.status == "completed"
    assert [a.outcome for a in task.attempts] == ["failed", "failed", "completed"]
    runs = test_ledger.executions(ledger)
    assert [(r.attempt, r.outcome.split(":")[0]) for r in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert task.result["completion_id"] == test_ledger.completions(ledger)[f"tai-task:{task_id}"]


async def test_a_permanent_error_fails_without_retries(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    task_id = await submit(
        scheduler, ledger, task_type="test_flaky", parameters={"permanent": "true"}
    )
    task = await wait_status(scheduler.client, task_id)
    assert task.status == "failed"
    assert len(task.attempts) == 1
    assert "refused for good" in task.error_message


async def test_an_attempt_past_its_timeout_fails(scheduler: RunningScheduler, ledger: Path) -> None:
    task_id = await submit(
        scheduler,
        ledger,
        task_type="test_sleep",
        parameters={"seconds": "30"},
        timeout_seconds=1,
        retry=scheduler_pb2.RetryConfig(max_attempts=1),
    )
    task = await wait_status(scheduler.client, task_id)
    assert task.status == "failed"
    assert "timed out after 1s" in task.error_message


async def test_higher_priority_runs_first_among_due_tasks(
    make_scheduler: MakeScheduler, ledger: Path
) -> None:
    scheduler = await make_scheduler(worker_concurrency=1)
    # Every submit must commit before the tasks fall due, or the worker takes an early one.
    at = time.time_ns() + 5 * NS
    priorities = [3, 9, 5, 1, 10, 7]
    ids = {
        await submit(scheduler, ledger, scheduled_time_ns=at, priority=p, task_id=f"prio-{p}"): p
        for p in priorities
    }
    for task_id in ids:
        await wait_status(scheduler.client, task_id)
    order = [ids[r.task_id] for r in test_ledger.executions(ledger)]
    assert order == sorted(priorities, reverse=True)


async def test_list_tasks_filters_and_pages(scheduler: RunningScheduler, ledger: Path) -> None:
    later = time.time_ns() + 60 * NS
    pending = [await submit(scheduler, ledger, scheduled_time_ns=later) for _ in range(3)]
    done = await submit(scheduler, ledger, task_type="test_flaky")
    await wait_status(scheduler.client, done)

    everything = [t.task_id async for t in scheduler.client.list_all()]
    # Newest first.
    assert everything == [done, *reversed(pending)]
    by_type = [t.task_id async for t in scheduler.client.list_all(task_type="test_flaky")]
    assert by_type == [done]
    by_status = [t.task_id async for t in scheduler.client.list_all(status="pending")]
    assert set(by_status) == set(pending)

    first = await scheduler.client.list_page(page_size=2)
    assert len(first.tasks) == 2
    assert first.next_page_token
    second = await scheduler.client.list_page(page_size=2, page_token=first.next_page_token)
    assert [t.task_id for t in [*first.tasks, *second.tasks]] == everything
    assert not second.next_page_token

    error = await expect_error(scheduler.client.list_page(status="done"), INVALID)
    assert field_violations(error) == ["status"]
    error = await expect_error(
        scheduler.client.list_page(status="pending", page_token=first.next_page_token), INVALID
    )
    assert field_violations(error) == ["page_token"]
    error = await expect_error(scheduler.client.list_page(page_size=5000), INVALID)
    assert field_violations(error) == ["page_size"]


async def test_stream_of_one_task_ends_at_its_final_status(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    task_id = await submit(
        scheduler,
        ledger,
        task_type="test_sleep",
        parameters={"seconds": "0.3"},
        # Due after the watch below has surely reached the server and sent "pending".
        scheduled_time_ns=time.time_ns() + 3 * NS,
    )
    updates = [u async for u in scheduler.client.watch(task_id)]
    assert [u.status for u in updates] == ["pending", "running", "completed"]
    assert all(u.task_id == task_id and u.task_type == "test_sleep" for u in updates)
    assert updates[1].attempt == 1
    assert updates[1].message == "attempt 1 started on test-scheduler-0"
    assert [u.timestamp_ns for u in updates] == sorted(u.timestamp_ns for u in updates)
    # A finished task's stream is its status alone.
    assert [u.status async for u in scheduler.client.watch(task_id)] == ["completed"]


async def test_stream_of_every_task_sees_updates_live(
    scheduler: RunningScheduler, ledger: Path
) -> None:
    stream = scheduler.client.watch()
    received: list[scheduler_pb2.TaskUpdate] = []

    async def read() -> None:
        async for update in stream:
            received.append(update)

    reader = asyncio.create_task(read())
    # The stream listens once the call has reached the server: a probe task's update proves
    # it does, and the task submitted after it is seen from its submission on.
    probe = await submit(scheduler, ledger, scheduled_time_ns=time.time_ns() + 600 * NS)
    await wait_until(lambda: any(u.task_id == probe for u in received))
    task_id = await submit(
        scheduler,
        ledger,
        task_type="test_flaky",
        parameters={"fail_times": "1"},
        retry=scheduler_pb2.RetryConfig(min_backoff_ms=100),
    )
    await wait_until(
        lambda: any(u.task_id == task_id and u.status == "completed" for u in received)
    )
    stream.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    statuses = [u.status for u in received if u.task_id == task_id]
    assert statuses == ["pending", "running", "pending", "running", "completed"]
    retrying = [u for u in received if u.task_id == task_id][2]
    assert "attempt 1 failed" in retrying.message


async def test_health(scheduler: RunningScheduler) -> None:
    status = await scheduler.client.health()
    assert status.status == "healthy"
    assert status.service_name == "tai.v1.Scheduler"
    stub = health_pb2_grpc.HealthStub(scheduler.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="tai.v1.Scheduler"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
