"""What holds an enforced policy's action back — silences, blast-radius limits, approvals — over
real gRPC against a real Governor and Coordinator(s) on the embedded default, and how each
shows in the signal's decision record."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from support import inprocess
from support.rpc_errors import expect_error, field_violations
from support.running import Suite
from tai.v1 import coordinator_pb2, governor_pb2
from test_coordinator_api import enforced_policy, next_action, submit

NS = 1_000_000_000
HELD = coordinator_pb2.DECISION_OUTCOME_HELD
MATCHED = coordinator_pb2.DECISION_OUTCOME_MATCHED
AWAITING = coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL
_sources = itertools.count()


def held_count(reason: str) -> float:
    return REGISTRY.get_sample_value("tai_actions_held_total", {"reason": reason}) or 0.0


def fresh_source() -> str:
    """A source no other signal had: a new fingerprint, so no cooldown is in the way."""
    return f"src-{next(_sources)}"


async def decision_of(suite: Suite, signal_id: str, policy_id: str) -> Any:
    record = await suite.coordinator.client.explain_signal(signal_id)
    return next(d for d in record.decisions if d.policy_id == policy_id)


@pytest.fixture
async def fast_suite(sqlite_url: str) -> Any:
    """A Governor and a Coordinator that reads silences and expires approvals every 0.1 s."""
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(
            sqlite_url,
            governor.target,
            silence_refresh_seconds=0.1,
            approval_expiry_every_seconds=0.1,
        ) as coordinator,
    ):
        yield Suite(governor, coordinator)


async def test_a_silence_holds_matching_actions_back_until_it_is_expired(suite: Suite) -> None:
    policy_id = await enforced_policy(suite, condition='signal.type == "alert"')
    coordinator = suite.coordinator.client
    silenced_before = held_count("silence")
    silence = await coordinator.create_silence(
        target_service="api",
        condition='signal.metadata.region == "eu"',
        ends_at_ns=time.time_ns() + 600 * NS,
        comment="eu maintenance, CHG-1234",
    )
    assert silence.state == coordinator_pb2.SILENCE_STATE_ACTIVE
    assert silence.created_by  # the caller

    held = await submit(suite, source=fresh_source(), metadata={"region": "eu"})
    assert list(held.action_ids) == []
    decided = await decision_of(suite, held.resource_id, policy_id)
    assert decided.outcome == HELD
    assert decided.hold_reason == coordinator_pb2.HOLD_REASON_SILENCE
    assert decided.held_by == silence.id
    assert decided.held_until_ns == silence.ends_at_ns
    assert held_count("silence") == silenced_before + 1
    # Outside the matcher (another region), the policy acts.
    other = await submit(suite, source=fresh_source(), metadata={"region": "us"})
    assert len(other.action_ids) == 1

    listed = await coordinator.list_silences()
    assert silence.id in [s.id for s in listed.silences]
    expired = await coordinator.expire_silence(silence.id, comment="done early")
    assert expired.state == coordinator_pb2.SILENCE_STATE_EXPIRED
    assert expired.expired_by
    assert silence.id not in [s.id for s in (await coordinator.list_silences()).silences]
    assert silence.id in [
        s.id for s in (await coordinator.list_silences(include_expired=True)).silences
    ]
    after = await submit(suite, source=fresh_source(), metadata={"region": "eu"})
    assert len(after.action_ids) == 1


async def test_a_silence_created_on_one_replica_holds_on_another(
    sqlite_url: str,
) -> None:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target, silence_refresh_seconds=0.2) as a,
        inprocess.coordinator(
            sqlite_url, governor.target, replica="b", silence_refresh_seconds=0.2
        ) as b,
    ):
        policy_id = await enforced_policy(Suite(governor, b), condition='signal.type == "alert"')
        await enforced_policy(Suite(governor, a), condition='signal.source == "never"')
        silence = await a.client.create_silence(
            policy_id=policy_id, ends_at_ns=time.time_ns() + 600 * NS, comment="freeze"
        )
        deadline = time.monotonic() + 5
        while True:
            receipt = await Suite(governor, b).coordinator.client.submit_signal(
                signal_type="alert", priority=9, source=fresh_source()
            )
            if not receipt.action_ids:
                break
            assert time.monotonic() < deadline, "replica b never learned of the silence"
            await asyncio.sleep(0.05)
        decided = await decision_of(Suite(governor, b), receipt.resource_id, policy_id)
        assert decided.held_by == silence.id


async def test_a_silence_that_starts_later_holds_nothing_yet(suite: Suite) -> None:
    await enforced_policy(suite, condition='signal.type == "alert"')
    now = time.time_ns()
    pending = await suite.coordinator.client.create_silence(
        target_service="api",
        starts_at_ns=now + 300 * NS,
        ends_at_ns=now + 600 * NS,
        comment="tonight's window",
    )
    assert pending.state == coordinator_pb2.SILENCE_STATE_PENDING
    assert len((await submit(suite, source=fresh_source())).action_ids) == 1


async def test_silences_survive_a_restart(sqlite_url: str) -> None:
    async with inprocess.governor(sqlite_url) as governor:
        async with inprocess.coordinator(sqlite_url, governor.target) as first:
            policy_id = await enforced_policy(Suite(governor, first), condition="true")
            silence = await first.client.create_silence(
                policy_id=policy_id, ends_at_ns=time.time_ns() + 600 * NS, comment="restart"
            )
        async with inprocess.coordinator(sqlite_url, governor.target) as second:
            receipt = await second.client.submit_signal(
                signal_type="event", priority=1, source=fresh_source()
            )
            assert list(receipt.action_ids) == []
            decided = await decision_of(Suite(governor, second), receipt.resource_id, policy_id)
            assert decided.held_by == silence.id


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"comment": "x"}, "matcher"),
        ({"target_service": "api", "comment": " "}, "comment"),
        ({"target_service": "api", "comment": "x", "ends_at_ns": 1}, "ends_at_ns"),
        ({"condition": "signal.type ==", "comment": "x"}, "matcher.condition"),
        ({"target_service": "Not A Service!", "comment": "x"}, "matcher.target_service"),
        ({"target_service": "api", "comment": "x", "days": 31}, "ends_at_ns"),
    ],
)
async def test_bad_silences_name_the_field_to_fix(
    suite: Suite, fields: dict[str, Any], field: str
) -> None:
    days = fields.pop("days", 1)
    fields.setdefault("ends_at_ns", time.time_ns() + days * 86_400 * NS)
    error = await expect_error(
        suite.coordinator.client.create_silence(**fields), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == [field]


async def test_silence_ids_are_idempotent_and_unknown_ones_not_found(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    ends = time.time_ns() + 600 * NS
    first = await coordinator.create_silence(
        silence_id="sil-fixed", target_service="api", ends_at_ns=ends, comment="once"
    )
    again = await coordinator.create_silence(
        silence_id="sil-fixed", target_service="api", ends_at_ns=ends, comment="once"
    )
    assert again == first
    await expect_error(
        coordinator.create_silence(
            silence_id="sil-fixed", target_service="db", ends_at_ns=ends, comment="other"
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await expect_error(coordinator.get_silence("sil-nope"), grpc.StatusCode.NOT_FOUND)
    await expect_error(coordinator.expire_silence("sil-nope"), grpc.StatusCode.NOT_FOUND)


def limit(max_actions: int, window_seconds: int, *, target: bool = False) -> Any:
    scope = governor_pb2.LIMIT_SCOPE_TARGET if target else governor_pb2.LIMIT_SCOPE_POLICY
    return governor_pb2.ActionLimit(
        max_actions=max_actions, window_seconds=window_seconds, scope=scope
    )


async def test_concurrent_signals_never_make_more_actions_than_the_limit(
    sqlite_url: str,
) -> None:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target) as a,
        inprocess.coordinator(sqlite_url, governor.target, replica="b") as b,
    ):
        limited_before = held_count("limit")
        policy_id = await enforced_policy(
            Suite(governor, a),
            condition='signal.source.startsWith("burst")',
            limits=[limit(3, 600)],
        )
        await enforced_policy(Suite(governor, b), condition='signal.source == "never"')
        # 20 signals at once, half through each replica, each its own fingerprint.
        receipts = await asyncio.gather(
            *(
                (a if n % 2 else b).client.submit_signal(
                    signal_type="alert", priority=9, source=f"burst-{n}"
                )
                for n in range(20)
            )
        )
        created = [r for r in receipts if r.action_ids]
        assert len(created) == 3
        assert held_count("limit") == limited_before + 17
        refused = next(r for r in receipts if not r.action_ids)
        decided = await decision_of(Suite(governor, a), refused.resource_id, policy_id)
        assert decided.hold_reason == coordinator_pb2.HOLD_REASON_LIMIT
        assert decided.held_by == f"at most 3 per 600 s for policy {policy_id}"
        assert time.time_ns() < decided.held_until_ns <= time.time_ns() + 600 * NS


async def test_a_target_limit_is_shared_by_the_policies_of_that_target(suite: Suite) -> None:
    shared = [limit(2, 600, target=True)]
    first = await enforced_policy(
        suite, condition='signal.metadata.kind == "a"', target="db", limits=shared
    )
    await enforced_policy(
        suite, condition='signal.metadata.kind == "b"', target="db", limits=shared
    )
    created = 0
    for kind in ("a", "b", "a", "b"):
        receipt = await submit(suite, source=fresh_source(), metadata={"kind": kind})
        created += len(receipt.action_ids)
    assert created == 2
    last = await submit(suite, source=fresh_source(), metadata={"kind": "a"})
    decided = await decision_of(suite, last.resource_id, first)
    assert decided.held_by == "at most 2 per 600 s for target db"


async def test_limits_and_approval_are_validated_by_the_governor(suite: Suite) -> None:
    governor = suite.governor.client
    error = await expect_error(
        governor.propose(
            policy_type="operational",
            name="bad-limit",
            condition="true",
            action=governor_pb2.ActionTemplate(
                action_type="restart", target_service="api", limits=[limit(0, 60)]
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["action.limits[0].max_actions"]


async def test_an_action_waits_for_approval_then_is_delivered(suite: Suite) -> None:
    policy_id = await enforced_policy(
        suite, condition='signal.type == "alert"', target="payments", require_approval=True
    )
    coordinator = suite.coordinator.client
    stream = coordinator.stream_actions("payments")
    receipt = await submit(suite, source=fresh_source())
    [action_id] = receipt.action_ids
    waiting = await coordinator.get_action(action_id)
    assert waiting.status == AWAITING
    assert waiting.approval_deadline_ns > time.time_ns()
    decided = await decision_of(suite, receipt.resource_id, policy_id)
    assert (decided.outcome, decided.hold_reason) == (HELD, coordinator_pb2.HOLD_REASON_APPROVAL)
    assert decided.action_id == action_id
    # The target's stream never sees it while it waits (the read stays pending: cancelling it
    # would end the stream).
    first_read = asyncio.ensure_future(next_action(stream))
    done, _ = await asyncio.wait({first_read}, timeout=0.5)
    assert not done

    approved = await coordinator.approve_action(action_id, "checked the dashboards")
    assert approved.status == coordinator_pb2.ACTION_STATUS_PENDING
    assert approved.review_comment == "checked the dashboards"
    assert approved.reviewed_by
    delivered = await first_read
    assert delivered.id == action_id
    await expect_error(
        coordinator.approve_action(action_id, "again"), grpc.StatusCode.FAILED_PRECONDITION
    )
    stream.cancel()


async def test_a_rejected_action_is_never_delivered(suite: Suite) -> None:
    await enforced_policy(
        suite, condition='signal.type == "alert"', target="ledger", require_approval=True
    )
    coordinator = suite.coordinator.client
    [action_id] = (await submit(suite, source=fresh_source())).action_ids
    error = await expect_error(
        coordinator.reject_action(action_id, ""), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == ["comment"]
    rejected = await coordinator.reject_action(action_id, "not during the freeze")
    assert rejected.status == coordinator_pb2.ACTION_STATUS_REJECTED
    stream = coordinator.stream_actions("ledger")
    read = asyncio.ensure_future(next_action(stream))
    done, _ = await asyncio.wait({read}, timeout=0.5)
    assert not done
    stream.cancel()
    read.cancel()
    await expect_error(coordinator.approve_action("act-nope", "x"), grpc.StatusCode.NOT_FOUND)


async def test_an_approval_not_given_in_time_expires(fast_suite: Suite) -> None:
    await enforced_policy(
        fast_suite,
        condition='signal.type == "alert"',
        target="billing",
        require_approval=True,
        approval_timeout_seconds=1,
    )
    coordinator = fast_suite.coordinator.client
    [action_id] = (await submit(fast_suite, source=fresh_source())).action_ids
    deadline = time.monotonic() + 5
    while (action := await coordinator.get_action(action_id)).status == AWAITING:
        assert time.monotonic() < deadline, "the approval never expired"
        await asyncio.sleep(0.1)
    assert action.status == coordinator_pb2.ACTION_STATUS_EXPIRED
    assert "approval" in action.status_message
    await expect_error(
        coordinator.approve_action(action_id, "too late"), grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_a_rehearsal_counts_the_limits(suite: Suite) -> None:
    for _ in range(5):
        await submit(suite, source=fresh_source(), metadata={"service": "api"})
    report = await suite.coordinator.client.simulate_policy(
        draft=coordinator_pb2.PolicyDraft(
            condition='signal.metadata.service == "api"',
            action=governor_pb2.ActionTemplate(
                action_type="restart", target_service="api", limits=[limit(2, 3600)]
            ),
        ),
        last=5,
    )
    assert (report.matched, report.actions, report.held) == (5, 2, 3)
    assert dict(report.held_by_reason) == {"limit": 3}


async def test_watching_actions_takes_no_delivery_and_resumes(suite: Suite) -> None:
    await enforced_policy(
        suite, condition='signal.type == "alert"', target="watched", require_approval=True
    )
    coordinator = suite.coordinator.client
    watch = coordinator.watch_actions("watched")
    [action_id] = (await submit(suite, source=fresh_source())).action_ids
    created = await next_action(watch)
    assert (created.id, created.status) == (action_id, AWAITING)
    await coordinator.approve_action(action_id, "go")
    approved = await next_action(watch)
    assert (approved.id, approved.status) == (action_id, coordinator_pb2.ACTION_STATUS_PENDING)
    watch.cancel()

    # Another watcher, from the first change it saw: the rest again, in order; and the action
    # was never taken (still PENDING, delivered to no one).
    again = coordinator.watch_actions("watched", after_ns=created.updated_at_ns)
    assert (await next_action(again)).status == coordinator_pb2.ACTION_STATUS_PENDING
    again.cancel()
    assert (await coordinator.get_action(action_id)).delivery_count == 0
    error = await expect_error(
        coordinator.watch_actions("Not A Service!").read(), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == ["target_service"]
