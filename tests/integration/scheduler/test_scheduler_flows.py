"""The Scheduler with the other services, over real gRPC and the real SQLite bus:

- a policy proposed with an effective time is enforced by a scheduled task at that time (a
  real Governor, in-process, on the same store and bus);
- an `action.deferred` event becomes a `request_action` task that hands the action to the
  Coordinator at its time. The Coordinator here is a small real gRPC server that records
  `RequestAction` calls (`RecordingCoordinator`): the test publishes the event itself, through
  the outbox and the bus exactly as the Coordinator does, so the contract is exercised without
  depending on the Coordinator's implementation;
- calls to an unreachable target fail the attempt (retryable), and after the breaker's
  threshold the circuit is open and attempts fail fast.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from scheduler_helpers import NS, MakeScheduler, eventually, wait_status
from support.processes import free_port
from support.running import RunningGovernor
from tai.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    events_pb2,
    governor_pb2,
    scheduler_pb2,
)
from tai_common.core import SystemClock, UuidFactory
from tai_common.factory import sqlite_path
from tai_common.messaging import OUTBOX_INDEXES, OutboxRelay, events, topics
from tai_common.ports import Transaction
from tai_common.sqlite import SqliteBus, SqliteStore


class RecordingCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Stands in for the Coordinator: records RequestAction calls, dedupes by action id."""

    def __init__(self) -> None:
        self.requests: list[coordinator_pb2.RequestActionRequest] = []

    async def RequestAction(
        self, request: coordinator_pb2.RequestActionRequest, context: Any
    ) -> common_pb2.Receipt:
        replayed = any(r.id == request.id for r in self.requests)
        self.requests.append(request)
        return common_pb2.Receipt(
            id=f"rcpt-{len(self.requests)}",
            status="success",
            resource_id=request.id,
            replayed=replayed,
        )


@pytest.fixture
async def coordinator() -> AsyncIterator[tuple[RecordingCoordinator, str]]:
    servicer = RecordingCoordinator()
    server = grpc.aio.server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_a_policy_is_enforced_at_its_effective_time(
    governor: RunningGovernor, make_scheduler: MakeScheduler
) -> None:
    scheduler = await make_scheduler(governor_target=governor.target)
    # Far enough ahead that the task is seen (over the bus) while the policy is still proposed.
    effective = time.time_ns() + 5 * NS
    receipt = await governor.client.propose(
        policy_type="operational",
        name="scale-at-nine",
        condition="signal.priority >= 8",
        action=governor_pb2.ActionTemplate(action_type="scale", target_service="api"),
        effective_time_ns=effective,
    )
    policy_id = receipt.resource_id
    task_id = f"enforce-{policy_id}-v1"

    task = await eventually(
        lambda: scheduler.client.list_page(task_type="enforce_policy"),
        lambda page: any(t.task_id == task_id for t in page.tasks),
    )
    [task] = [t for t in task.tasks if t.task_id == task_id]
    assert task.next_run_ns == effective
    assert dict(task.parameters)["policy_id"] == policy_id
    assert dict(task.parameters)["expected_version"] == "1"
    assert (await governor.client.get(policy_id)).state == governor_pb2.POLICY_STATE_PROPOSED

    task = await wait_status(scheduler.client, task_id)
    assert task.status == "completed", task
    assert task.started_at_ns >= effective
    assert task.result["state"] == "ENFORCED"
    assert task.result["version"] == "2"
    policy = await governor.client.get(policy_id)
    assert policy.state == governor_pb2.POLICY_STATE_ENFORCED
    assert policy.version == 2
    assert policy.updated_at_ns >= effective


async def test_an_enforce_task_for_a_policy_that_moved_on_fails_for_good(
    governor: RunningGovernor, make_scheduler: MakeScheduler
) -> None:
    scheduler = await make_scheduler(governor_target=governor.target)
    receipt = await governor.client.propose(policy_type="security", name="tls")
    policy_id = receipt.resource_id
    await governor.client.revoke(policy_id)
    submitted = await scheduler.client.submit(
        task_type="enforce_policy", parameters={"policy_id": policy_id, "expected_version": "1"}
    )
    task = await wait_status(scheduler.client, submitted.resource_id)
    assert task.status == "failed"
    assert len(task.attempts) == 1
    assert "ABORTED" in task.error_message


async def publish_deferred(sqlite_url: str, action: coordinator_pb2.Action) -> None:
    """Publishes `action.deferred` for `action` as the Coordinator does: an outbox entry
    written in a store transaction, published by the relay."""
    path = sqlite_path(sqlite_url)
    store = await SqliteStore.open(path, synchronous="NORMAL")
    bus = await SqliteBus.open(path, synchronous="NORMAL")
    try:
        await store.ensure_indexes(OUTBOX_INDEXES)
        factory = events.EventFactory("coordinator", SystemClock(), UuidFactory())
        event = factory.build(
            event_type="action.deferred",
            aggregate_type="action",
            aggregate_id=action.id,
            aggregate_version=1,
            payload=events_pb2.ActionEvent(action=action),
        )

        async def write(tx: Transaction) -> None:
            tx.publish(topics.ACTIONS, event)

        await store.run_transaction(write)
        # The store is shared: the Scheduler's relay may publish the entry first, and this one
        # may publish the Scheduler's entries too. Either way the event goes out once.
        await OutboxRelay(store, bus, SystemClock(), owner="test").drain()
    finally:
        await bus.close()
        await store.close()


async def test_a_deferred_action_is_requested_at_its_time(
    make_scheduler: MakeScheduler,
    coordinator: tuple[RecordingCoordinator, str],
    sqlite_url: str,
) -> None:
    recorder, target = coordinator
    scheduler = await make_scheduler(coordinator_target=target)
    not_before = time.time_ns() + 1500 * 1_000_000
    action = coordinator_pb2.Action(
        id="act-42",
        action_type="scale",
        target_service="api",
        source_service="monitor",
        parameters={"replicas": "+2", "zone": "eu-1"},
        payload=b"\x00\x01 binary payload",
        priority=7,
        ack_deadline_seconds=30,
        max_deliveries=4,
        next_delivery_ns=not_before,
        status=coordinator_pb2.ACTION_STATUS_PENDING,
    )
    await publish_deferred(sqlite_url, action)
    # At-least-once delivery: the same event again must not make a second task.
    await publish_deferred(sqlite_url, action)

    task = await eventually(
        lambda: scheduler.client.list_page(task_type="request_action"),
        lambda page: len(page.tasks) >= 1,
    )
    [task] = task.tasks
    assert task.task_id == "action-act-42"
    assert task.next_run_ns == not_before
    assert task.priority == 7
    assert dict(task.parameters) == {
        "action_id": "act-42",
        "action_type": "scale",
        "target_service": "api",
        "source_service": "monitor",
        "priority": "7",
        "ack_deadline_seconds": "30",
        "max_deliveries": "4",
        "payload_b64": "AAEgYmluYXJ5IHBheWxvYWQ=",
        "param.replicas": "+2",
        "param.zone": "eu-1",
    }

    task = await wait_status(scheduler.client, "action-act-42")
    assert task.status == "completed", task
    assert task.started_at_ns >= not_before
    assert task.result["action_id"] == "act-42"
    [request] = recorder.requests
    assert request.id == "act-42"
    assert request.not_before_ns == 0
    assert (request.action_type, request.target_service, request.source_service) == (
        "scale",
        "api",
        "monitor",
    )
    assert dict(request.parameters) == {"replicas": "+2", "zone": "eu-1"}
    assert request.payload == b"\x00\x01 binary payload"
    assert (request.priority, request.ack_deadline_seconds, request.max_deliveries) == (7, 30, 4)
    tasks = [t async for t in scheduler.client.list_all(task_type="request_action")]
    assert len(tasks) == 1


async def test_a_submitted_request_action_uses_the_idempotency_key_as_action_id(
    make_scheduler: MakeScheduler, coordinator: tuple[RecordingCoordinator, str]
) -> None:
    recorder, target = coordinator
    scheduler = await make_scheduler(coordinator_target=target)
    receipt = await scheduler.client.submit(
        task_id="page-oncall",
        task_type="request_action",
        parameters={"action_type": "page", "target_service": "oncall", "param.team": "sre"},
    )
    task = await wait_status(scheduler.client, receipt.resource_id)
    assert task.status == "completed", task
    [request] = recorder.requests
    assert request.id == "tai-task:page-oncall"
    assert dict(request.parameters) == {"team": "sre"}


async def test_an_open_circuit_fails_attempts_fast(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(
        coordinator_target=f"127.0.0.1:{free_port()}",
        breaker_failure_threshold=2,
        call_timeout_seconds=2.0,
    )
    receipt = await scheduler.client.submit(
        task_type="request_action",
        parameters={"action_type": "page", "target_service": "oncall"},
        retry=scheduler_pb2.RetryConfig(max_attempts=4, min_backoff_ms=50, max_backoff_ms=100),
    )
    task = await wait_status(scheduler.client, receipt.resource_id, timeout=60)
    assert task.status == "failed"
    errors = [a.error_message for a in task.attempts]
    assert len(errors) == 4
    assert all("UNAVAILABLE" in e for e in errors[:2]), errors
    # The open circuit answers without calling the target.
    assert all("circuit" in e and "open" in e for e in errors[2:]), errors
