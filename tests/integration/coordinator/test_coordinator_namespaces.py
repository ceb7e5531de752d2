"""Namespaces on the Coordinator, over the wire (a real Governor and Coordinator on one SQLite
store and bus): each namespace's signals meet its own policies only, its streams carry its own
actions only, another namespace's resources read as absent, and its signals-per-second quota
holds under concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from support.running import Suite
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import (
    ChannelOptions,
    CoordinatorClient,
    GovernorClient,
    NotFound,
    TaiError,
    open_channel,
)

CONDITION = 'signal.type == "alert" && signal.metadata["service"] == "api"'
_ids = itertools.count()


@dataclass
class Tenant:
    """Clients of both services working in one namespace."""

    name: str
    governor: GovernorClient
    coordinator: CoordinatorClient


@contextlib.asynccontextmanager
async def tenant(suite: Suite, name: str, **quotas: int) -> AsyncIterator[Tenant]:
    """Creates the namespace (through the Governor) and yields clients that work in it."""
    await suite.governor.client.create_namespace(
        name, description="test", quotas=governor_pb2.NamespaceQuotas(**quotas)
    )
    options = ChannelOptions(namespace=name)
    async with (
        open_channel(suite.governor.target, options) as governor,
        open_channel(suite.coordinator.target, options) as coordinator,
    ):
        yield Tenant(
            name, GovernorClient(governor, options), CoordinatorClient(coordinator, options)
        )


async def enforced_policy(team: Tenant) -> str:
    """An enforced policy in the team's namespace whose action names it."""
    receipt = await team.governor.propose(
        policy_type="operational",
        name=f"scale-{team.name}-{next(_ids)}",
        condition=CONDITION,
        action=governor_pb2.ActionTemplate(
            action_type="scale", target_service="api", parameters={"team": team.name}
        ),
    )
    await team.governor.enforce(receipt.resource_id)
    return str(receipt.resource_id)


async def wait_for_active_policies(suite: Suite, count: int) -> None:
    """The Coordinator's health counts the policies it evaluates, over every namespace."""
    seen = 0
    for _ in range(500):
        details = (await suite.coordinator.client.health()).details
        seen = int(next(d for d in details if d.startswith("active_policies=")).split("=")[1])
        if seen >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the Coordinator evaluates {seen} policies, not {count}")


async def submit(team: Tenant, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "signal_type": "alert",
        "priority": 9,
        "metadata": {"service": "api"},
        "source": "prometheus",
    }
    fields.update(overrides)
    return await team.coordinator.submit_signal(**fields)


async def expect_not_found(call: Any) -> None:
    with pytest.raises(NotFound):
        await call


async def test_each_namespace_sees_only_its_own_policies_actions_and_signals(
    suite: Suite,
) -> None:
    async with tenant(suite, "team-a") as a, tenant(suite, "team-b") as b:
        policy_a = await enforced_policy(a)
        policy_b = await enforced_policy(b)
        await wait_for_active_policies(suite, 2)
        stream_b = b.coordinator.stream_actions("api")
        try:
            # The same signal in A makes one action, from A's policy only.
            receipt = await submit(a, signal_id="sig-shared")
            assert list(receipt.matched_policy_ids) == [policy_a]
            assert len(receipt.action_ids) == 1
            action_a = await a.coordinator.get_action(receipt.action_ids[0])
            assert action_a.policy_id == policy_a
            assert dict(action_a.parameters) == {"team": "team-a"}
            explained = await a.coordinator.explain_signal("sig-shared")
            assert {d.policy_id for d in explained.decisions} == {policy_a}

            # B's stream gets B's action, never A's (which came first).
            receipt_b = await submit(b, signal_id="sig-b-1")
            assert list(receipt_b.matched_policy_ids) == [policy_b]
            first = await asyncio.wait_for(stream_b.read(), timeout=10)
            assert isinstance(first, coordinator_pb2.Action)
            assert first.id == receipt_b.action_ids[0]
            assert first.policy_id == policy_b
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(stream_b.read(), timeout=1.0)
        finally:
            stream_b.cancel()

        # A's resources by id, from B: absent.
        await expect_not_found(b.coordinator.explain_signal(receipt.resource_id))
        await expect_not_found(b.coordinator.get_action(action_a.id))
        await expect_not_found(b.coordinator.get_signal(receipt.resource_id))

        # The same signal id is free in B: a different namespace's id space.
        again = await submit(b, signal_id="sig-shared", priority=3)
        assert not again.replayed
        assert list(again.matched_policy_ids) == [policy_b]

        # Listings in B hold none of A's.
        silence_a = await a.coordinator.create_silence(
            comment="maintenance of team a",
            ends_at_ns=time.time_ns() + 3600 * 10**9,
            target_service="api",
        )
        signals_b = await b.coordinator.list_signals()
        assert {s.id for s in signals_b.signals} == {"sig-b-1", "sig-shared"}
        assert all(s.priority in (9, 3) for s in signals_b.signals)
        assert "sig-shared" in {s.id for s in (await a.coordinator.list_signals()).signals}
        actions_b = await b.coordinator.list_actions()
        assert action_a.id not in {x.id for x in actions_b.actions}
        assert {x.policy_id for x in actions_b.actions} == {policy_b}
        silences_b = await b.coordinator.list_silences(include_expired=True)
        assert silence_a.id not in {s.id for s in silences_b.silences}
        await expect_not_found(b.coordinator.get_silence(silence_a.id))

        # A's silence holds back A's next action, not B's.
        held_a = await submit(a)
        assert list(held_a.action_ids) == []
        assert len((await submit(b)).action_ids) == 1

        # A rehearsal in B scans B's signals only.
        draft = coordinator_pb2.PolicyDraft(
            condition=CONDITION,
            action=governor_pb2.ActionTemplate(action_type="scale", target_service="api"),
        )
        report_b = await b.coordinator.simulate_policy(draft=draft)
        assert report_b.signals_scanned == 3
        report_a = await a.coordinator.simulate_policy(draft=draft)
        assert report_a.signals_scanned == 2


async def test_the_signals_per_second_quota_admits_exactly_its_number(suite: Suite) -> None:
    quota = 5
    async with tenant(suite, "team-q", max_signals_per_second=quota) as q:
        started = time.monotonic()
        results = await asyncio.gather(
            *(submit(q, signal_id=f"sig-q-{n}") for n in range(4 * quota)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        # All within one window: exactly `quota` get in.
        assert elapsed < 1.0, f"the burst took {elapsed:.2f} s, longer than the window"
        assert len(admitted) == quota
        assert len(refused) == 3 * quota
        for error in refused:
            assert isinstance(error, TaiError)
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (
                f"namespace 'team-q' quota max_signals_per_second={quota} exceeded" in error.message
            )
        # Only the admitted signals were stored, and the default namespace is not limited.
        listed = await q.coordinator.list_signals()
        assert len(listed.signals) == quota
        await asyncio.gather(
            *(
                suite.coordinator.client.submit_signal(signal_type="alert", priority=1)
                for _ in range(2 * quota)
            )
        )
        # A second later the window has room again.
        await asyncio.sleep(1.1)
        await submit(q, signal_id="sig-q-later")
