"""What holds a policy's action back — blast-radius limits, approvals, silences — on Firestore,
Pub/Sub and Redis (emulators and a real redis-server), with a Governor and two Coordinator
processes sharing them, one of them killed and started again."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis.asyncio as redis
from support.processes import ServiceProcess
from support.redis_server import RedisServer
from support.scenarios import MakeProcess
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, Stream, open_channel

pytestmark = pytest.mark.slow

NS = 1_000_000_000
# The Firestore emulator makes contending transactions wait seconds for its locks; the
# client's default deadline is too short for a burst.
BURST_TIMEOUT = 60.0
_probes = itertools.count()


def fresh_source(prefix: str) -> str:
    """A source no other signal had: a new fingerprint, so no cooldown is in the way."""
    return f"{prefix}-{next(_probes)}"


async def enforce(
    policies: GovernorClient, name: str, condition: str, action: governor_pb2.ActionTemplate
) -> tuple[str, int]:
    """Proposes and enforces a policy; its id and the Governor revision of the enforcement."""
    receipt = await policies.propose(
        policy_type="operational", name=name, condition=condition, action=action
    )
    await policies.enforce(receipt.resource_id)
    return receipt.resource_id, (await policies.get(receipt.resource_id)).revision


async def wait_for_revision(coordinator: CoordinatorClient, revision: int) -> None:
    """Until the Coordinator has applied every policy change up to `revision` (from Pub/Sub,
    or the Governor's list at its start): its health details say how far it got."""
    deadline = time.monotonic() + 60
    while True:
        details = (await coordinator.health()).details
        applied = int(next(d for d in details if d.startswith("policy_revision=")).split("=")[1])
        if applied >= revision:
            return
        assert time.monotonic() < deadline, f"stuck at revision {applied} (want {revision})"
        await asyncio.sleep(0.1)


async def decision_of(
    coordinator: CoordinatorClient, signal_id: str, policy_id: str
) -> coordinator_pb2.PolicyDecision:
    record = await coordinator.explain_signal(signal_id)
    return next(d for d in record.decisions if d.policy_id == policy_id)


async def next_action(
    stream: Stream[coordinator_pb2.Action], timeout: float = 30.0
) -> coordinator_pb2.Action:
    action = await asyncio.wait_for(stream.read(), timeout)
    assert isinstance(action, coordinator_pb2.Action), "the stream ended"
    return action


# Four process starts (a Governor, two Coordinators, one restarted), maybe the emulators' JVM
# start, and the emulators' lock waits under the burst.
@pytest.mark.timeout(420)
async def test_limits_approvals_and_silences_across_two_coordinators(
    service_processes: MakeProcess, production_env: dict[str, str], redis_server: RedisServer
) -> None:
    governor = await service_processes("tai_governor", **production_env).start(timeout=60)
    replicas: list[ServiceProcess] = [
        await service_processes(
            "tai_coordinator",
            TAI_GOVERNOR_TARGET=governor.target,
            TAI_REPLICA_ID=f"co-{name}",
            **production_env,
        ).start(timeout=60)
        for name in ("a", "b")
    ]
    replica_a, replica_b = replicas
    async with open_channel(governor.target) as g, open_channel(replica_b.target) as b_channel:
        policies = GovernorClient(g)
        b = CoordinatorClient(b_channel)
        # Each policy acts on its own signal sources only.
        limited, _ = await enforce(
            policies,
            "limited",
            'signal.source.startsWith("burst-")',
            governor_pb2.ActionTemplate(
                action_type="restart",
                target_service="api",
                limits=[
                    governor_pb2.ActionLimit(
                        max_actions=3, window_seconds=600, scope=governor_pb2.LIMIT_SCOPE_POLICY
                    )
                ],
            ),
        )
        gated, _ = await enforce(
            policies,
            "gated",
            'signal.source.startsWith("approve-")',
            governor_pb2.ActionTemplate(
                action_type="refund", target_service="payments", require_approval=True
            ),
        )
        silenced, revision = await enforce(
            policies,
            "silenced",
            'signal.source.startsWith("silenced-")',
            governor_pb2.ActionTemplate(action_type="vacuum", target_service="db"),
        )

        async with open_channel(replica_a.target) as a_channel:
            a = CoordinatorClient(a_channel)
            await asyncio.gather(wait_for_revision(a, revision), wait_for_revision(b, revision))

            # (a) 20 signals at once, half through each replica, each its own fingerprint:
            # the Redis window admits exactly 3 of them.
            receipts = await asyncio.gather(
                *(
                    (a if n % 2 else b).submit_signal(
                        signal_type="alert",
                        priority=9,
                        source=f"burst-{n}",
                        timeout=BURST_TIMEOUT,
                    )
                    for n in range(20)
                )
            )
            created = [action for r in receipts for action in r.action_ids]
            assert len(created) == 3
            listed = await b.list_actions(policy_id=limited, page_size=100)
            assert sorted(action.id for action in listed.actions) == sorted(created)
            refused = next(r for r in receipts if not r.action_ids)
            held = await decision_of(a, refused.resource_id, limited)
            assert held.outcome == coordinator_pb2.DECISION_OUTCOME_HELD
            assert held.hold_reason == coordinator_pb2.HOLD_REASON_LIMIT
            assert held.held_by == f"at most 3 per 600 s for policy {limited}"
            assert time.time_ns() < held.held_until_ns <= time.time_ns() + 600 * NS
            # The window is kept in Redis (TAI_CACHE), not in Firestore.
            async with redis.Redis.from_url(redis_server.url) as probe:
                assert await probe.zcard(f"tai:wl:policy/{limited}/600") == 3

            # (c) An action created through A waits for approval; approved through B, it is
            # delivered to the target's stream on B.
            stream = b.stream_actions("payments")
            receipt = await a.submit_signal(
                signal_type="alert", priority=9, source=fresh_source("approve")
            )
            [action_id] = receipt.action_ids
            waiting = await b.get_action(action_id)
            assert waiting.status == coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL
            assert waiting.approval_deadline_ns > time.time_ns()
            decided = await decision_of(b, receipt.resource_id, gated)
            assert decided.hold_reason == coordinator_pb2.HOLD_REASON_APPROVAL
            assert decided.action_id == action_id
            # Not delivered while it waits (the read stays pending: cancelling it would end
            # the stream).
            first_read = asyncio.ensure_future(next_action(stream))
            done, _ = await asyncio.wait({first_read}, timeout=1.0)
            assert not done
            approved = await b.approve_action(action_id, "checked the ledger")
            assert approved.status == coordinator_pb2.ACTION_STATUS_PENDING
            assert approved.review_comment == "checked the ledger"
            delivered = await first_read
            assert delivered.id == action_id
            assert (await a.get_action(action_id)).status == (
                coordinator_pb2.ACTION_STATUS_DELIVERED
            )
            stream.cancel()

            # (b) A silence created on A holds on B once B has read it (every second by
            # default): fresh sources until one is held.
            silence = await a.create_silence(
                policy_id=silenced, ends_at_ns=time.time_ns() + 600 * NS, comment="db freeze"
            )
            deadline = time.monotonic() + 10
            while True:
                receipt = await b.submit_signal(
                    signal_type="alert", priority=9, source=fresh_source("silenced")
                )
                if not receipt.action_ids:
                    break
                assert time.monotonic() < deadline, "replica B never learned of the silence"
                await asyncio.sleep(0.1)
            decided = await decision_of(b, receipt.resource_id, silenced)
            assert decided.hold_reason == coordinator_pb2.HOLD_REASON_SILENCE
            assert decided.held_by == silence.id

        # The silence survives A's death: B still holds, and A started again holds at once
        # (it reads the silences from Firestore before it serves).
        replica_a.kill()
        after_death = await b.submit_signal(
            signal_type="alert", priority=9, source=fresh_source("silenced")
        )
        assert list(after_death.action_ids) == []
        await replica_a.start(timeout=60)
        async with open_channel(replica_a.target) as a_channel:
            a = CoordinatorClient(a_channel)
            await wait_for_revision(a, revision)
            restarted = await a.submit_signal(
                signal_type="alert", priority=9, source=fresh_source("silenced")
            )
            assert list(restarted.action_ids) == []
            decided = await decision_of(a, restarted.resource_id, silenced)
            assert decided.held_by == silence.id
            # The limit's window survives it too: a burst signal through A is still refused.
            late = await a.submit_signal(signal_type="alert", priority=9, source="burst-late")
            assert list(late.action_ids) == []
            assert (await decision_of(a, late.resource_id, limited)).hold_reason == (
                coordinator_pb2.HOLD_REASON_LIMIT
            )
