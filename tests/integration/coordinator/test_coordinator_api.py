"""The autonomic loop and every Coordinator RPC, over real gRPC against a real Governor and
Coordinator sharing a SQLite store and bus."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.rpc_errors import expect_error
from support.running import Suite
from tai.v1 import coordinator_pb2, governor_pb2

PENDING = coordinator_pb2.ACTION_STATUS_PENDING
DELIVERED = coordinator_pb2.ACTION_STATUS_DELIVERED
ACCEPTED = coordinator_pb2.ACTION_STATUS_ACCEPTED
COMPLETED = coordinator_pb2.ACTION_STATUS_COMPLETED
EXPIRED = coordinator_pb2.ACTION_STATUS_EXPIRED

CONDITION = 'signal.type == "alert" && signal.priority >= 8 && signal.metadata["service"] == "api"'
_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


async def enforced_policy(
    suite: Suite,
    *,
    condition: str = CONDITION,
    target: str = "api",
    cooldown: int = 0,
    dry_run: bool = False,
    **action: Any,
) -> str:
    governor = suite.governor.client
    receipt = await governor.propose(
        policy_type="operational",
        name=unique("scale-api"),
        condition=condition,
        action=governor_pb2.ActionTemplate(
            action_type="scale",
            target_service=target,
            parameters={"replicas": "+2"},
            cooldown_seconds=cooldown,
            **action,
        ),
    )
    await governor.enforce(receipt.resource_id, dry_run=dry_run)
    await wait_until_active(suite, receipt.resource_id)
    return receipt.resource_id


async def wait_until_active(suite: Suite, policy_id: str) -> None:
    """The Coordinator learns of policy changes from the bus; its health answer says up to
    which Governor revision it has applied them."""
    revision = (await suite.governor.client.get(policy_id)).revision
    for _ in range(500):
        if await coordinator_revision(suite) >= revision:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the Coordinator never caught up with revision {revision}")


async def coordinator_revision(suite: Suite) -> int:
    details = (await suite.coordinator.client.health()).details
    return int(next(d for d in details if d.startswith("policy_revision=")).split("=")[1])


async def submit(suite: Suite, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "signal_type": "alert",
        "priority": 9,
        "metadata": {"service": "api"},
        "source": "prometheus",
    }
    fields.update(overrides)
    return await suite.coordinator.client.submit_signal(**fields)


def violated_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


async def next_action(stream: Any, timeout: float = 10.0) -> coordinator_pb2.Action:
    action: coordinator_pb2.Action = await asyncio.wait_for(stream.read(), timeout)
    assert action is not grpc.aio.EOF
    return action


async def test_the_autonomic_loop(suite: Suite) -> None:
    policy_id = await enforced_policy(suite)
    coordinator = suite.coordinator.client
    stream = coordinator.stream_actions("api")
    receipt = await submit(suite, source="alertmanager")
    assert receipt.matched_policy_ids == [policy_id]
    assert len(receipt.action_ids) == 1
    action_id = receipt.action_ids[0]

    delivered = await next_action(stream)
    assert delivered.id == action_id
    assert delivered.status == DELIVERED
    assert delivered.delivery_count == 1
    assert delivered.policy_id == policy_id
    assert delivered.signal_id == receipt.resource_id
    assert dict(delivered.parameters) == {"replicas": "+2"}
    assert delivered.target_service == "api"

    status = await coordinator.status("api")
    assert status.pending_actions == 1
    assert status.pending_signals == 1
    assert status.last_signal_ns > 0

    await coordinator.acknowledge(action_id, "accepted", "scaling")
    assert (await coordinator.get_action(action_id)).status == ACCEPTED
    await coordinator.acknowledge(action_id, "completed", "scaled to 5")
    final = await coordinator.get_action(action_id)
    assert final.status == COMPLETED
    assert final.status_message == "scaled to 5"

    listed = await coordinator.list_actions(target_service="api", status=COMPLETED)
    assert action_id in [a.id for a in listed.actions]
    status = await coordinator.status("api")
    assert status.pending_actions == 0
    stream.cancel()


async def next_action_with_id(stream: Any, action_id: str) -> coordinator_pb2.Action:
    while True:
        action = await next_action(stream)
        if action.id == action_id:
            return action


async def test_a_non_matching_signal_creates_nothing(suite: Suite) -> None:
    await enforced_policy(suite)
    before = await suite.coordinator.client.list_actions(page_size=1000)
    receipt = await submit(suite, priority=3)
    assert list(receipt.matched_policy_ids) == []
    assert list(receipt.action_ids) == []
    after = await suite.coordinator.client.list_actions(page_size=1000)
    assert len(after.actions) == len(before.actions)
    signal = await suite.coordinator.client.get_signal(receipt.resource_id)
    assert (signal.priority, list(signal.action_ids)) == (3, [])


async def test_a_dry_run_policy_is_recorded_and_emits_nothing(suite: Suite) -> None:
    policy_id = await enforced_policy(suite, dry_run=True)
    before = await suite.coordinator.client.list_actions(page_size=1000)
    receipt = await submit(suite)
    assert list(receipt.action_ids) == []
    assert policy_id in receipt.result_data["dry_run_policy_ids"]
    signal = await suite.coordinator.client.get_signal(receipt.resource_id)
    assert list(signal.dry_run_policy_ids) == [policy_id]
    after = await suite.coordinator.client.list_actions(page_size=1000)
    assert len(after.actions) == len(before.actions)


async def test_identical_signals_inside_the_cooldown_create_one_action(suite: Suite) -> None:
    policy_id = await enforced_policy(suite, cooldown=60)
    metadata = {"service": "api", "alert": "HighLatency"}
    first = await submit(suite, metadata=metadata)
    second = await submit(suite, metadata=metadata)
    assert len(first.action_ids) == 1
    assert list(second.action_ids) == []
    assert second.matched_policy_ids == [policy_id]
    assert second.result_data["suppressed_policy_ids"] == policy_id
    different = await submit(suite, metadata={"service": "api", "alert": "ErrorRate"})
    assert len(different.action_ids) == 1


async def test_policy_changes_reach_the_coordinator(suite: Suite) -> None:
    policy_id = await enforced_policy(suite, condition='signal.source == "probe"')
    assert (await submit(suite, source="probe")).matched_policy_ids == [policy_id]
    await suite.governor.client.revoke(policy_id)
    await wait_until_active(suite, policy_id)
    assert list((await submit(suite, source="probe")).matched_policy_ids) == []


async def test_unacknowledged_actions_are_redelivered_then_expire(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    stream = coordinator.stream_actions("batch")
    receipt = await coordinator.request_action(
        action_type="rotate-keys",
        target_service="batch",
        ack_deadline_seconds=1,
        max_deliveries=2,
    )
    action_id = receipt.resource_id
    first = await next_action_with_id(stream, action_id)
    second = await next_action_with_id(stream, action_id)
    assert (first.delivery_count, second.delivery_count) == (1, 2)
    assert second.next_delivery_ns - first.next_delivery_ns >= 1_000_000_000
    for _ in range(100):
        action = await coordinator.get_action(action_id)
        if action.status == EXPIRED:
            break
        await asyncio.sleep(0.1)
    assert action.status == EXPIRED
    assert action.delivery_count == 2
    await expect_error(
        coordinator.acknowledge(action_id, "completed"), grpc.StatusCode.FAILED_PRECONDITION
    )
    stream.cancel()


async def test_a_signals_action_for_a_stream_here_is_delivered_by_the_commit_creating_it(
    suite: Suite,
) -> None:
    coordinator = suite.coordinator.client
    target, source = unique("pager"), unique("probe")
    await enforced_policy(
        suite,
        condition=f'signal.source == "{source}"',
        target=target,
        ack_deadline_seconds=1,
        max_deliveries=2,
    )
    stream = coordinator.stream_actions(target)
    # Once an action has reached it, the stream is known to this replica.
    hello = await coordinator.request_action(action_type="hello", target_service=target)
    await next_action_with_id(stream, hello.resource_id)
    await coordinator.acknowledge(hello.resource_id, "completed")

    receipt = await submit(suite, source=source)
    [action_id] = receipt.action_ids
    first = await next_action_with_id(stream, action_id)
    assert first.status == DELIVERED
    assert first.delivery_count == 1
    # Delivered at the instant it was created: by the signal's own transaction.
    assert first.updated_at_ns == first.timestamp_ns
    # Not acknowledged, it falls due again at its ack deadline like any delivery.
    second = await next_action_with_id(stream, action_id)
    assert second.delivery_count == 2
    assert second.next_delivery_ns - first.next_delivery_ns >= 1_000_000_000
    await coordinator.acknowledge(action_id, "completed")
    assert (await coordinator.get_action(action_id)).status == COMPLETED
    stream.cancel()


async def test_competing_streams_share_actions_without_duplicates(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    streams = [coordinator.stream_actions("workers") for _ in range(2)]
    seen: list[list[str]] = [[], []]

    async def consume(index: int) -> None:
        async for action in streams[index]:
            seen[index].append(action.id)
            await coordinator.acknowledge(action.id, "completed")

    consumers = [asyncio.create_task(consume(i)) for i in range(2)]
    created = [
        (await coordinator.request_action(action_type="job", target_service="workers")).resource_id
        for _ in range(30)
    ]
    for _ in range(200):
        if len(seen[0]) + len(seen[1]) >= 30:
            break
        await asyncio.sleep(0.05)
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(seen[0] + seen[1]) == sorted(created)
    assert not set(seen[0]) & set(seen[1])


async def test_include_history_resends_accepted_actions(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    stream = coordinator.stream_actions("deployer")
    action_id = (
        await coordinator.request_action(action_type="deploy", target_service="deployer")
    ).resource_id
    await next_action_with_id(stream, action_id)
    await coordinator.acknowledge(action_id, "accepted")
    stream.cancel()

    resumed = coordinator.stream_actions("deployer", include_history=True)
    again = await next_action(resumed)
    assert (again.id, again.status) == (action_id, ACCEPTED)
    resumed.cancel()


async def test_a_future_action_is_deferred(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    later = suite.coordinator.runtime.deps.clock.now_ns() + 60 * 10**9
    receipt = await coordinator.request_action(
        action_type="reboot", target_service="db", not_before_ns=later, action_id="act-later"
    )
    assert receipt.result_data["deferred_until_ns"] == str(later)
    # It exists from its not-before time on (the Scheduler asks for it then).
    await expect_error(coordinator.get_action("act-later"), grpc.StatusCode.NOT_FOUND)


async def test_signals_are_idempotent_by_id(suite: Suite) -> None:
    await enforced_policy(suite)
    first = await submit(suite, signal_id="sig-fixed")
    again = await submit(suite, signal_id="sig-fixed")
    assert again.replayed
    assert list(again.action_ids) == list(first.action_ids)
    error = await expect_error(
        submit(suite, signal_id="sig-fixed", priority=10), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "sig-fixed" in (error.details() or "")


async def test_actions_are_idempotent_by_id(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    first = await coordinator.request_action(
        action_type="scale", target_service="api", action_id="act-1"
    )
    again = await coordinator.request_action(
        action_type="scale", target_service="api", action_id="act-1"
    )
    assert again.replayed
    assert again.resource_id == first.resource_id
    await expect_error(
        coordinator.request_action(action_type="drain", target_service="api", action_id="act-1"),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def test_acknowledgement_errors(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    await expect_error(coordinator.acknowledge("act-nope", "accepted"), grpc.StatusCode.NOT_FOUND)
    action_id = (
        await coordinator.request_action(action_type="x", target_service="api")
    ).resource_id
    error = await expect_error(
        coordinator.acknowledge(action_id, "done"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_field(error) == "status"
    await coordinator.acknowledge(action_id, "completed", "ok")
    again = await coordinator.acknowledge(action_id, "completed", "ok")
    assert again.replayed
    await expect_error(
        coordinator.acknowledge(action_id, "accepted"), grpc.StatusCode.FAILED_PRECONDITION
    )


BAD_SIGNALS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown type", {"signal_type": "metric"}, "signal_type"),
    ("priority 0", {"priority": 0}, "priority"),
    ("priority 11", {"priority": 11}, "priority"),
    ("too much metadata", {"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
    ("huge metadata value", {"metadata": {"k": "v" * 2000}}, "metadata['k']"),
    ("huge payload", {"payload": b"x" * (64 * 1024 + 1)}, "payload"),
    ("bad id", {"signal_id": "a b"}, "id"),
    ("negative time", {"timestamp_ns": -1}, "timestamp_ns"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in BAD_SIGNALS],
    ids=[name for name, _, _ in BAD_SIGNALS],
)
async def test_bad_signals_name_the_field_and_store_nothing(
    suite: Suite, overrides: dict[str, Any], field: str
) -> None:
    error = await expect_error(submit(suite, **overrides), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_field(error) == field
    assert (await suite.coordinator.client.status()).last_signal_ns == 0


BAD_ACTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("no type", {"action_type": ""}, "action_type"),
    ("no target", {"target_service": ""}, "target_service"),
    ("bad target", {"target_service": "Not A Service"}, "target_service"),
    ("negative not-before", {"not_before_ns": -5}, "not_before_ns"),
    ("deadline too long", {"ack_deadline_seconds": 10**7}, "ack_deadline_seconds"),
    ("too many deliveries", {"max_deliveries": 1000}, "max_deliveries"),
    ("priority", {"priority": 42}, "priority"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in BAD_ACTIONS],
    ids=[name for name, _, _ in BAD_ACTIONS],
)
async def test_bad_action_requests_name_the_field(
    suite: Suite, overrides: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"action_type": "scale", "target_service": "api"}
    fields.update(overrides)
    error = await expect_error(
        suite.coordinator.client.request_action(**fields), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_field(error) == field
    assert list((await suite.coordinator.client.list_actions()).actions) == []


async def test_bad_reads_and_streams(suite: Suite) -> None:
    client = suite.coordinator.client
    for call, field in (
        (client.get_action(""), "action_id"),
        (client.get_signal(""), "id"),
        (client.status("Bad Name"), "service_name"),
        (client.list_actions(page_token="nonsense"), "page_token"),
        (client.list_actions(page_size=-3), "page_size"),
    ):
        error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_field(error) == field
    await expect_error(client.get_signal("sig-nope"), grpc.StatusCode.NOT_FOUND)
    stream = client.stream_actions("")
    error = await expect_error(stream.read(), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_field(error) == "service_name"


async def test_list_actions_pages_newest_first(suite: Suite) -> None:
    client = suite.coordinator.client
    created = [
        (await client.request_action(action_type="a", target_service="pager")).resource_id
        for _ in range(7)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_actions(target_service="pager", page_size=3, page_token=token)
        seen.extend(a.id for a in page.actions)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))
