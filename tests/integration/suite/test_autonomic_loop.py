"""The three services together, in-process on one SQLite store and bus: the work that crosses
services through events and the Scheduler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from support import inprocess
from support.running import RunningCoordinator, RunningGovernor, RunningScheduler
from tai.v1 import coordinator_pb2, governor_pb2

NS = 1_000_000_000


@dataclass
class FullSuite:
    governor: RunningGovernor
    coordinator: RunningCoordinator
    scheduler: RunningScheduler


@pytest.fixture
async def full_suite(sqlite_url: str) -> AsyncIterator[FullSuite]:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target) as coordinator,
        inprocess.scheduler(sqlite_url, governor.target, coordinator.target) as scheduler,
    ):
        yield FullSuite(governor, coordinator, scheduler)


async def test_an_action_with_a_not_before_time_is_requested_then(full_suite: FullSuite) -> None:
    coordinator = full_suite.coordinator.client
    stream = coordinator.stream_actions("db")
    not_before = time.time_ns() + 2 * NS
    receipt = await coordinator.request_action(
        action_type="failover",
        target_service="db",
        not_before_ns=not_before,
        parameters={"replica": "db-2"},
        action_id="act-failover-1",
    )
    assert receipt.result_data["deferred_until_ns"] == str(not_before)

    action = await asyncio.wait_for(stream.read(), timeout=20)
    assert action is not grpc.aio.EOF
    assert action.id == "act-failover-1"
    assert dict(action.parameters) == {"replica": "db-2"}
    assert action.timestamp_ns >= not_before
    # The executor marks its task completed once RequestAction has returned, which can be
    # after the stream delivered the action.
    for _ in range(300):
        task = await full_suite.scheduler.client.get("action-act-failover-1")
        if task.status != "running":
            break
        await asyncio.sleep(0.05)
    assert (task.task_type, task.status) == ("request_action", "completed")
    stream.cancel()


async def test_a_policy_with_an_effective_time_is_enforced_then(full_suite: FullSuite) -> None:
    governor = full_suite.governor.client
    effective = time.time_ns() + 2 * NS
    receipt = await governor.propose(
        policy_type="operational",
        name="night-shift",
        condition='signal.type == "alert"',
        action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
        effective_time_ns=effective,
    )
    policy_id = receipt.resource_id
    assert (await governor.get(policy_id)).state == governor_pb2.POLICY_STATE_PROPOSED

    for _ in range(300):
        policy = await governor.get(policy_id)
        if policy.state == governor_pb2.POLICY_STATE_ENFORCED:
            break
        await asyncio.sleep(0.05)
    assert policy.state == governor_pb2.POLICY_STATE_ENFORCED
    assert policy.updated_at_ns >= effective
    assert policy.last_modified_by  # the Scheduler's executor, not a person

    # ...and the Coordinator acts on it.
    created: list[str] = []
    for _ in range(300):
        signal = await full_suite.coordinator.client.submit_signal(signal_type="alert", priority=5)
        created = list(signal.action_ids)
        if created:
            break
        await asyncio.sleep(0.02)
    action = await full_suite.coordinator.client.get_action(created[0])
    assert (action.policy_id, action.status) == (policy_id, coordinator_pb2.ACTION_STATUS_PENDING)
