"""The end-to-end scenarios again, on Firestore, Pub/Sub and Redis (emulators and a real
redis-server), with every service a separate process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from support.scenarios import MakeProcess, exactly_once_across_replicas
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, open_channel

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)  # three process starts, and maybe the emulators' JVM start
async def test_the_autonomic_loop(
    service_processes: MakeProcess, production_env: dict[str, str]
) -> None:
    governor = await service_processes("tai_governor", **production_env).start(timeout=60)
    coordinators = [
        await service_processes(
            "tai_coordinator",
            TAI_GOVERNOR_TARGET=governor.target,
            TAI_REPLICA_ID=f"co-{i}",
            **production_env,
        ).start(timeout=60)
        for i in range(2)
    ]
    async with (
        open_channel(governor.target) as g,
        open_channel(coordinators[0].target) as a,
        open_channel(coordinators[1].target) as b,
    ):
        policies = GovernorClient(g)
        receipt = await policies.propose(
            policy_type="operational",
            name="scale-api",
            condition='signal.type == "alert" && signal.metadata["service"] == "api"',
            action=governor_pb2.ActionTemplate(
                action_type="scale", target_service="api", cooldown_seconds=300
            ),
        )
        await policies.enforce(receipt.resource_id)
        # Cached reads through Redis see the change at once.
        policy = await policies.get(receipt.resource_id)
        assert policy.state == governor_pb2.POLICY_STATE_ENFORCED

        stream = CoordinatorClient(b).stream_actions("api")
        created: list[str] = []
        for attempt in range(300):  # until replica A has the policy event from Pub/Sub
            source = f"probe-{attempt}"  # a new fingerprint each time: no cooldown in the way
            signal = await CoordinatorClient(a).submit_signal(
                signal_type="alert", priority=9, metadata={"service": "api"}, source=source
            )
            created = list(signal.action_ids)
            if created:
                break
            await asyncio.sleep(0.05)
        assert len(created) == 1

        action = await asyncio.wait_for(stream.read(), timeout=30)
        assert action is not grpc.aio.EOF
        assert action.id == created[0]
        await CoordinatorClient(b).acknowledge(action.id, "completed")
        assert (await CoordinatorClient(a).get_action(action.id)).status == (
            coordinator_pb2.ACTION_STATUS_COMPLETED
        )

        # An identical signal inside the cooldown creates nothing; a non-matching one neither.
        repeat = await CoordinatorClient(b).submit_signal(
            signal_type="alert", priority=9, metadata={"service": "api"}, source=source
        )
        assert list(repeat.action_ids) == []
        other = await CoordinatorClient(b).submit_signal(signal_type="event", priority=1)
        assert list(other.matched_policy_ids) == []

        # Each signal's decision record, read from Firestore by the other replica: the repeat
        # was held back by the cooldown the first action started; the other failed the first
        # clause.
        [held] = (await CoordinatorClient(a).explain_signal(repeat.resource_id)).decisions
        assert held.outcome == coordinator_pb2.DECISION_OUTCOME_HELD
        assert held.held_by == created[0]
        [unmatched] = (await CoordinatorClient(a).explain_signal(other.resource_id)).decisions
        assert unmatched.failed_clause == 'signal.type == "alert"'
        # Rehearsals read the same signals from Firestore and write nothing: the probes and
        # the repeat match (one fingerprint each, all but the repeat acting).
        rehearsal = await CoordinatorClient(b).simulate_policy(policy_id=receipt.resource_id)
        assert rehearsal.complete
        assert rehearsal.signals_scanned == attempt + 3
        assert (rehearsal.matched, rehearsal.held) == (attempt + 2, 1)
        assert dict(rehearsal.actions_by_target) == {"api": attempt + 1}
        draft = await CoordinatorClient(a).simulate_policy(
            draft=coordinator_pb2.PolicyDraft(
                condition='signal.metadata.service == "api"',
                action=governor_pb2.ActionTemplate(action_type="scale", target_service="db"),
            ),
            last=2,
        )
        assert (draft.signals_scanned, draft.matched, draft.errors) == (2, 1, 1)
        assert draft.error_samples[0].error == "no such key: 'service'"
        status = await CoordinatorClient(a).status("api")
        assert status.pending_actions == 0
        assert status.last_signal_ns > 0
        stream.cancel()


# The scenario's own budget (240 s, below) is the bound: 27 s alone, but behind a full suite's
# load on the emulators its lock waits once took it past the default 120 s.
@pytest.mark.timeout(300)
async def test_exactly_once_across_three_scheduler_replicas(
    service_processes: MakeProcess, production_env: dict[str, str], tmp_path: Path
) -> None:
    # Fewer tasks and a longer lease than on SQLite: contended transactions on the Firestore
    # emulator wait for its lock timeouts (about 2 s each), which says nothing about TAI.
    await exactly_once_across_replicas(
        service_processes,
        production_env,
        tmp_path / "ledger.db",
        tasks_total=90,
        timeout=240,
        lease_seconds=10.0,
    )
