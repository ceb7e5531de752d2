"""The events of one action on `tai-actions`, read from the bus as any consumer would: one per
version, with no gaps, across create, delivery, release, redelivery and acknowledgement."""

from __future__ import annotations

import asyncio

import grpc
from support.running import Suite
from tai.v1 import coordinator_pb2, coordinator_pb2_grpc, events_pb2
from tai_common.messaging import events, subscribe_events, topics
from tai_common.ports import SubscriptionSpec

DELIVERED = coordinator_pb2.ACTION_STATUS_DELIVERED
PENDING = coordinator_pb2.ACTION_STATUS_PENDING

# A client that reads nothing and grants the server no more than this flow-control window: a
# message bigger than it stays unsent, so the server's stream holds every later action in its
# queue, unsent, until the client goes away.
STALLED_CLIENT_OPTIONS = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]


async def test_every_version_of_an_action_has_its_event(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    target = "releases"
    seen: list[tuple[str, int, events_pb2.ActionEvent]] = []

    async def record(event: events_pb2.Event) -> None:
        payload = events.unpack(event, events_pb2.ActionEvent)
        seen.append((event.event_type, event.aggregate_version, payload))

    subscription = await subscribe_events(
        suite.coordinator.runtime.deps.bus,
        SubscriptionSpec(
            topics.ACTIONS, "test-action-events", start_at_latest=True, ephemeral=True
        ),
        record,
    )
    stalled_channel = grpc.aio.insecure_channel(
        suite.coordinator.target, options=STALLED_CLIENT_OPTIONS
    )
    try:
        stalled = coordinator_pb2_grpc.CoordinatorStub(stalled_channel).StreamActions(
            coordinator_pb2.StreamActionsRequest(service_name=target)
        )
        # Taken by the stalled stream, and stuck in its write.
        blocker = await coordinator.request_action(
            action_type="blocker", target_service=target, payload=b"x" * 60_000
        )
        await wait_for_status(suite, blocker.resource_id, DELIVERED)
        # Claimed for the stalled stream too, and queued behind the blocker.
        action_id = (
            await coordinator.request_action(action_type="job", target_service=target)
        ).resource_id
        delivered = await wait_for_status(suite, action_id, DELIVERED)
        # The stream goes away before acknowledging: its unsent action is released, due again
        # at once instead of at its ack deadline.
        stalled.cancel()
        released = await wait_for_release(suite, action_id, delivered.next_delivery_ns)
        assert (released.status, released.delivery_count) == (DELIVERED, 1)

        stream = coordinator.stream_actions(target)
        async for action in stream:
            if action.id == action_id:
                break
        assert action.delivery_count == 2
        await coordinator.acknowledge(action_id, "completed")
        stream.cancel()

        for _ in range(100):
            if len([s for s in seen if s[2].action.id == action_id]) >= 5:
                break
            await asyncio.sleep(0.05)
    finally:
        await stalled_channel.close()
        await subscription.close()

    mine = [(kind, version) for kind, version, payload in seen if payload.action.id == action_id]
    assert mine == [
        ("action.created", 1),
        ("action.delivered", 2),
        ("action.released", 3),
        ("action.delivered", 4),
        ("action.completed", 5),
    ]
    released_event = next(p for kind, _, p in seen if kind == "action.released")
    assert released_event.previous_status == DELIVERED
    assert released_event.action.id == action_id


async def wait_for_status(suite: Suite, action_id: str, status: int) -> coordinator_pb2.Action:
    for _ in range(100):
        action = await suite.coordinator.client.get_action(action_id)
        if action.status == status:
            return action
        await asyncio.sleep(0.05)
    raise AssertionError(f"action {action_id} never reached status {status}")


async def wait_for_release(
    suite: Suite, action_id: str, deadline_ns: int
) -> coordinator_pb2.Action:
    for _ in range(100):
        action = await suite.coordinator.client.get_action(action_id)
        if action.next_delivery_ns < deadline_ns:
            return action
        await asyncio.sleep(0.05)
    raise AssertionError(f"action {action_id} was not released before its ack deadline")
