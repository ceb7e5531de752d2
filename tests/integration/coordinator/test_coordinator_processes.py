"""Coordinator replicas as separate processes sharing one store and bus with a Governor: an
action created on one replica reaches a stream connected to another."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from support.processes import ServiceProcess
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, open_channel

pytestmark = pytest.mark.slow

MakeProcess = Callable[..., ServiceProcess]


async def test_action_created_on_one_replica_reaches_a_stream_on_another(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    shared = {"TAI_STORE": sqlite_url, "TAI_BUS": sqlite_url}
    governor = await service_processes("tai_governor", **shared).start()
    replicas = [
        await service_processes(
            "tai_coordinator",
            TAI_GOVERNOR_TARGET=governor.target,
            TAI_REPLICA_ID=f"co-{i}",
            **shared,
        ).start()
        for i in range(2)
    ]
    async with (
        open_channel(governor.target) as g,
        open_channel(replicas[0].target) as a,
        open_channel(replicas[1].target) as b,
    ):
        policy = await GovernorClient(g).propose(
            policy_type="security",
            name="block-scanner",
            condition='signal.type == "event" && signal.metadata["kind"] == "port-scan"',
            action=governor_pb2.ActionTemplate(action_type="block", target_service="firewall"),
        )
        await GovernorClient(g).enforce(policy.resource_id)
        stream = CoordinatorClient(b).stream_actions("firewall")

        receipt = None
        for _ in range(300):  # until replica A has applied the policy event
            receipt = await CoordinatorClient(a).submit_signal(
                signal_type="event", priority=5, metadata={"kind": "port-scan"}
            )
            if receipt.action_ids:
                break
            await asyncio.sleep(0.02)
        assert receipt is not None
        assert len(receipt.action_ids) == 1

        action = await asyncio.wait_for(stream.read(), timeout=15)
        assert action is not grpc.aio.EOF
        assert (action.id, action.status) == (
            receipt.action_ids[0],
            coordinator_pb2.ACTION_STATUS_DELIVERED,
        )
        await CoordinatorClient(b).acknowledge(action.id, "completed")
        settled = await CoordinatorClient(a).get_action(action.id)
        assert settled.status == coordinator_pb2.ACTION_STATUS_COMPLETED
        stream.cancel()


async def test_coordinator_waits_for_the_governor(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    """Started before the Governor, the Coordinator reports NOT_SERVING until it could load
    the policies, then serves."""
    shared = {"TAI_STORE": sqlite_url, "TAI_BUS": sqlite_url}
    governor = service_processes("tai_governor", **shared)
    coordinator = service_processes(
        "tai_coordinator", TAI_GOVERNOR_TARGET=governor.target, **shared
    )
    starting = asyncio.create_task(coordinator.start(timeout=60))
    await asyncio.sleep(2)
    assert not starting.done()
    await governor.start()
    await starting
    async with open_channel(coordinator.target) as channel:
        receipt = await CoordinatorClient(channel).submit_signal(signal_type="alert", priority=1)
        assert receipt.status == "success"


async def test_a_replica_that_misses_policy_events_catches_up_from_the_governor(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    """The Coordinator's bus here is not the Governor's, so no policy event ever reaches it
    (as if every one were lost): it sees from the Governor's revision that it is behind, lists
    the policies again, and the new policy matches signals."""
    governor = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url
    ).start()
    coordinator = await service_processes(
        "tai_coordinator",
        TAI_GOVERNOR_TARGET=governor.target,
        TAI_STORE=sqlite_url,
        TAI_BUS=f"sqlite:///{tmp_path / 'other-bus.db'}",
    ).start()
    async with open_channel(governor.target) as g, open_channel(coordinator.target) as c:
        governor_client, coordinator_client = GovernorClient(g), CoordinatorClient(c)
        receipt = await governor_client.propose(
            policy_type="operational",
            name="late",
            condition="signal.priority >= 8",
            action=governor_pb2.ActionTemplate(action_type="scale", target_service="api"),
        )
        enforced = await governor_client.enforce(receipt.resource_id)
        revision = int(enforced.result_data["revision"])

        async def caught_up() -> bool:
            status = await coordinator_client.health()
            return f"policy_revision={revision}" in status.details

        async with asyncio.timeout(30):
            while not await caught_up():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await coordinator_client.submit_signal(signal_id="s-1", signal_type="alert", priority=9)
        signal = await coordinator_client.get_signal("s-1")
    assert list(signal.matched_policy_ids) == [receipt.resource_id]
