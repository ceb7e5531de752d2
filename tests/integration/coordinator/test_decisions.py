"""Decision records (ExplainSignal) and rehearsals (SimulatePolicy), over real gRPC against a
real Governor and Coordinator on the embedded default (SQLite store and bus)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from support import inprocess
from support.rpc_errors import expect_error, field_violations
from support.running import Suite
from tai.v1 import coordinator_pb2, governor_pb2
from tai.v1.coordinator_pb2_grpc import CoordinatorStub
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace
from tai_common.core.units import seconds_to_ns
from tai_coordinator.model import SignalInput, StoredSignal
from tai_coordinator.repository import SIGNALS
from test_coordinator_api import enforced_policy, submit, wait_until_active

MATCHED = coordinator_pb2.DECISION_OUTCOME_MATCHED
NOT_MATCHED = coordinator_pb2.DECISION_OUTCOME_NOT_MATCHED
ERROR = coordinator_pb2.DECISION_OUTCOME_ERROR
HELD = coordinator_pb2.DECISION_OUTCOME_HELD
ENFORCED = governor_pb2.POLICY_STATE_ENFORCED
DRY_RUN = governor_pb2.POLICY_STATE_DRY_RUN
_ids = itertools.count()


def decisions_by_policy(
    record: coordinator_pb2.SignalDecision,
) -> dict[str, coordinator_pb2.PolicyDecision]:
    return {d.policy_id: d for d in record.decisions}


def decision_count(mode: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "tai_policy_decisions_total", {"mode": mode, "outcome": outcome}
    )
    return value or 0.0


def scale(target: str = "api", cooldown: int = 0) -> governor_pb2.ActionTemplate:
    return governor_pb2.ActionTemplate(
        action_type="scale", target_service=target, cooldown_seconds=cooldown
    )


def draft(condition: str, target: str = "api", cooldown: int = 0) -> coordinator_pb2.PolicyDraft:
    return coordinator_pb2.PolicyDraft(condition=condition, action=scale(target, cooldown))


async def test_every_policy_evaluated_is_recorded_with_its_reason(suite: Suite) -> None:
    conjunction = await enforced_policy(
        suite,
        condition='signal.type == "alert" && signal.priority >= 8 && signal.source == "probe"',
    )
    cooling = await enforced_policy(suite, condition='signal.source == "probe"', cooldown=60)
    dry_run = await enforced_policy(suite, condition='signal.type == "alert"', dry_run=True)
    broken = await enforced_policy(suite, condition='signal.metadata.env == "prod"')
    errors_before = decision_count("enforced", "error")
    held_before = decision_count("enforced", "held")

    first = await submit(suite, priority=5, source="probe")
    second = await submit(suite, priority=5, source="probe")
    coordinator = suite.coordinator.client

    record = await coordinator.explain_signal(first.resource_id)
    assert record.signal.id == first.resource_id
    assert record.policies_evaluated == 4
    assert record.omitted_not_matched == 0
    assert record.replica_id == "test-coordinator"
    assert record.policy_revision >= (await suite.governor.client.get(broken)).revision
    decided = decisions_by_policy(record)
    assert decided[conjunction].outcome == NOT_MATCHED
    assert decided[conjunction].failed_clause == "signal.priority >= 8"
    assert decided[conjunction].mode == ENFORCED
    assert decided[cooling].outcome == MATCHED
    assert list(first.action_ids) == [decided[cooling].action_id]
    assert decided[cooling].target_service == "api"
    assert (decided[dry_run].outcome, decided[dry_run].mode) == (MATCHED, DRY_RUN)
    assert decided[dry_run].action_id == ""
    assert decided[broken].outcome == ERROR
    assert decided[broken].error == "no such key: 'env'"

    later = decisions_by_policy(await coordinator.explain_signal(second.resource_id))
    assert later[cooling].outcome == HELD
    assert later[cooling].hold_reason == coordinator_pb2.HOLD_REASON_COOLDOWN
    assert later[cooling].held_by == decided[cooling].action_id
    received = (await coordinator.get_signal(second.resource_id)).received_at_ns
    assert received < later[cooling].held_until_ns <= received + seconds_to_ns(61)
    assert list(second.action_ids) == []

    assert decision_count("enforced", "error") == errors_before + 2
    assert decision_count("enforced", "held") == held_before + 1


async def test_a_record_keeps_a_bounded_number_of_non_matches(suite: Suite) -> None:
    governor = suite.governor.client
    last = ""
    for n in range(55):
        receipt = await governor.propose(
            policy_type="operational",
            name=f"never-{n}",
            condition=f'signal.source == "nobody-{n}"',
            action=scale(),
        )
        await governor.enforce(receipt.resource_id)
        last = receipt.resource_id
    matching = await enforced_policy(suite, condition='signal.source == "bounded"')
    await wait_until_active(suite, last)

    receipt = await submit(suite, source="bounded")
    record = await suite.coordinator.client.explain_signal(receipt.resource_id)
    assert record.policies_evaluated == 56
    outcomes = [d.outcome for d in record.decisions]
    assert outcomes.count(NOT_MATCHED) == 50
    assert record.omitted_not_matched == 5
    assert decisions_by_policy(record)[matching].outcome == MATCHED


async def test_explain_refuses_bad_ids_and_says_not_found(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    await expect_error(coordinator.explain_signal("sig-missing"), grpc.StatusCode.NOT_FOUND)
    for bad in ("", "a b", "x" * 300):
        error = await expect_error(
            coordinator.explain_signal(bad), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert field_violations(error) == ["signal_id"]


async def test_the_record_survives_a_restart(sqlite_url: str) -> None:
    async with inprocess.governor(sqlite_url) as governor:
        async with inprocess.coordinator(sqlite_url, governor.target) as coordinator:
            suite = Suite(governor, coordinator)
            policy_id = await enforced_policy(suite, condition='signal.source == "restart"')
            receipt = await submit(suite, source="restart")
        async with inprocess.coordinator(sqlite_url, governor.target, replica="other") as again:
            record = await again.client.explain_signal(receipt.resource_id)
    decided = decisions_by_policy(record)[policy_id]
    assert decided.outcome == MATCHED
    assert list(receipt.action_ids) == [decided.action_id]
    assert record.replica_id == "test-coordinator"


async def submit_many(suite: Suite, signals: list[dict[str, Any]]) -> list[str]:
    return [(await submit(suite, **fields)).resource_id for fields in signals]


async def count_actions(suite: Suite) -> int:
    return len((await suite.coordinator.client.list_actions(page_size=1000)).actions)


async def test_a_draft_is_rehearsed_over_stored_signals_and_writes_nothing(suite: Suite) -> None:
    ids = await submit_many(
        suite,
        [
            {"source": "a", "metadata": {"service": "api"}},
            {"source": "a", "metadata": {"service": "api"}},  # identical: held by the cooldown
            {"source": "b", "metadata": {"service": "api"}},
            {"source": "c", "metadata": {"service": "db"}},
            {"source": "d", "metadata": {}},  # no `service` key: an evaluation error
            {"source": "e", "metadata": {"service": "api"}, "signal_type": "event"},
        ],
    )
    actions_before = await count_actions(suite)
    coordinator = suite.coordinator.client
    report = await coordinator.simulate_policy(
        draft=draft(
            'signal.type == "alert" && signal.metadata.service == "api"',
            target="api",
            cooldown=300,
        ),
        sample_size=2,
    )
    assert report.complete
    assert report.signals_scanned == 6
    assert (report.matched, report.actions, report.held) == (3, 2, 1)
    assert (report.not_matched, report.errors) == (2, 1)
    assert dict(report.actions_by_target) == {"api": 2}
    assert dict(report.failed_clauses) == {
        'signal.metadata.service == "api"': 1,
        'signal.type == "alert"': 1,
    }
    assert [s.id for s in report.sample] == ids[:2]
    [error] = report.error_samples
    assert (error.error, error.count, error.signal_id) == ("no such key: 'service'", 1, ids[4])
    assert report.policy_id == ""
    assert report.scanned_until_ns == report.window_until_ns
    assert await count_actions(suite) == actions_before
    assert report.elapsed_seconds > 0

    # The last N, and an explicit window, give the same answers over the same signals.
    last_three = await coordinator.simulate_policy(
        draft=draft('signal.source != ""'), last=3, sample_size=3
    )
    assert [s.id for s in last_three.sample] == ids[3:]
    first = await coordinator.get_signal(ids[0])
    third = await coordinator.get_signal(ids[2])
    window = await coordinator.simulate_policy(
        draft=draft('signal.source != ""'),
        since_ns=first.received_at_ns,
        until_ns=third.received_at_ns,
    )
    assert window.signals_scanned == 2
    assert (window.window_since_ns, window.window_until_ns) == (
        first.received_at_ns,
        third.received_at_ns,
    )


async def test_a_stored_policy_version_is_rehearsed(suite: Suite) -> None:
    governor = suite.governor.client
    receipt = await governor.propose(
        policy_type="operational",
        name="versions",
        condition='signal.source == "v1"',
        action=scale("batch"),
    )
    policy_id = receipt.resource_id
    await governor.propose(
        policy_id=policy_id,
        policy_type="operational",
        name="versions",
        condition='signal.source == "v2"',
        action=scale("batch"),
    )
    await submit_many(suite, [{"source": "v1"}, {"source": "v2"}, {"source": "v2"}])
    coordinator = suite.coordinator.client
    first = await coordinator.simulate_policy(policy_id=policy_id, version=1)
    latest = await coordinator.simulate_policy(policy_id=policy_id)
    assert (first.policy_version, first.actions) == (1, 1)
    assert (latest.policy_version, latest.actions) == (2, 2)
    assert latest.policy_id == policy_id
    assert dict(latest.actions_by_target) == {"batch": 2}


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"draft": draft("signal.type ==")}, "draft.condition"),
        ({"draft": draft("signal.priority"), "last": 5}, "draft.condition"),
        ({"draft": draft('signal.type == "alert"', target="")}, "draft.action.target_service"),
        ({"draft": draft("true"), "last": 5, "since_ns": 1}, "last"),
        ({"draft": draft("true"), "last": 2_000_000}, "last"),
        ({"draft": draft("true"), "since_ns": 10, "until_ns": 5}, "until_ns"),
        ({"draft": draft("true"), "max_seconds": 1801}, "max_seconds"),
        ({"draft": draft("true"), "sample_size": 101}, "sample_size"),
        ({"policy_id": "bad id"}, "stored.id"),
        ({}, "policy"),
    ],
)
async def test_bad_simulations_name_the_field_to_fix(
    suite: Suite, request_fields: dict[str, Any], field: str
) -> None:
    error = await expect_error(
        suite.coordinator.client.simulate_policy(**request_fields),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == [field]


async def test_an_unknown_stored_policy_is_not_found(suite: Suite) -> None:
    await expect_error(
        suite.coordinator.client.simulate_policy(policy_id="pol-missing"),
        grpc.StatusCode.NOT_FOUND,
    )


async def store_signals(suite: Suite, count: int) -> None:
    """`count` signals written straight to the store, a second apart, ending now: history
    for a rehearsal, faster than submitting them."""
    store = suite.coordinator.runtime.deps.store
    now = suite.coordinator.runtime.deps.clock.now_ns()
    batch = 1000
    for start in range(0, count, batch):

        async def write(tx: Any, start: int = start) -> None:
            for n in range(start, min(start + batch, count)):
                signal = SignalInput(
                    signal_id=f"sig-bulk-{n:06d}",
                    signal_type="alert",
                    priority=1 + n % 10,
                    metadata={"service": "api" if n % 2 else "db"},
                    source=f"host-{n % 7}",
                )
                stored = StoredSignal(
                    signal=signal,
                    fingerprint=signal.fingerprint(),
                    received_at_ns=now - seconds_to_ns(count - n),
                )
                tx.create(SIGNALS, signal.signal_id, stored.to_doc(now + seconds_to_ns(3600)))

        # The suite's calls work in the default namespace; so do these writes.
        with in_namespace(DEFAULT_NAMESPACE):
            await store.run_transaction(write)


@pytest.mark.slow
async def test_a_large_window_stops_at_the_deadline_and_resumes(sqlite_url: str) -> None:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(
            sqlite_url, governor.target, max_concurrent_simulations=1
        ) as coordinator_server,
    ):
        suite = Suite(governor, coordinator_server)
        await store_signals(suite, 20_000)
        coordinator = coordinator_server.client
        condition = draft('signal.metadata.service == "api" && signal.priority >= 5', cooldown=300)
        since = coordinator_server.runtime.deps.clock.now_ns() - seconds_to_ns(30_000)
        # The call's own deadline bounds the work: 0.5 s of it is kept to answer in time.
        cut = await coordinator.simulate_policy(draft=condition, since_ns=since, timeout=0.7)
        assert not cut.complete
        assert 0 < cut.signals_scanned < 20_000
        assert cut.window_since_ns <= cut.scanned_until_ns < cut.window_until_ns

        whole = await coordinator.simulate_policy(draft=condition, since_ns=since, max_seconds=120)
        assert whole.complete
        assert whole.signals_scanned == 20_000
        # Odd n is the api; priority 1 + n % 10 is at least 5 for n % 10 in 4..9: of the odd
        # ones, 5, 7 and 9, three in ten.
        assert whole.matched == 20_000 * 3 // 10
        # A fingerprint (source × service × priority) recurs every 70 s, acting once in 300 s.
        assert 0 < whole.actions < whole.matched
        assert whole.actions + whole.held == whole.matched

        # While one runs, another on the same replica is refused, not queued.
        running = asyncio.create_task(
            coordinator.simulate_policy(draft=condition, since_ns=since, max_seconds=120)
        )
        await asyncio.sleep(0.2)
        try:
            await expect_error(
                coordinator.simulate_policy(draft=condition, since_ns=since),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        finally:
            assert (await running).complete


async def test_recent_signals_are_listed_newest_first_with_filters(suite: Suite) -> None:
    coordinator = suite.coordinator.client
    ids = await submit_many(
        suite,
        [
            {"source": "prom", "priority": 3, "metadata": {"env": "prod"}},
            {"source": "prom", "priority": 9, "metadata": {"env": "prod"}},
            {"source": "grafana", "priority": 9, "metadata": {"env": "dev"}},
            {"source": "prom", "priority": 9, "signal_type": "event", "metadata": {}},
        ],
    )
    everything = await coordinator.list_signals()
    assert [s.id for s in everything.signals][:4] == ids[::-1]
    assert [s.id for s in (await coordinator.list_signals(source="prom")).signals] == [
        ids[3],
        ids[1],
        ids[0],
    ]
    alerts = await coordinator.list_signals(signal_type="alert", source="prom", min_priority=5)
    assert [s.id for s in alerts.signals] == [ids[1]]
    tagged = await coordinator.list_signals(metadata={"env": "prod"})
    assert [s.id for s in tagged.signals] == [ids[1], ids[0]]

    first = await coordinator.list_signals(page_size=2)
    second = await coordinator.list_signals(page_size=2, page_token=first.next_page_token)
    assert [s.id for s in [*first.signals, *second.signals]] == ids[::-1]

    status = await coordinator.status("")
    assert status.signals_last_minute >= 4

    for fields, field in (
        ({"signal_type": "metric"}, "signal_type"),
        ({"min_priority": 11}, "min_priority"),
    ):
        error = await expect_error(
            coordinator.list_signals(**fields), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert field_violations(error) == [field]
    error = await expect_error(
        CoordinatorStub(suite.coordinator.channel).ListSignals(
            coordinator_pb2.ListSignalsRequest(metadata=["nokey"])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["metadata"]


async def test_a_policys_decisions_are_summarized_from_the_records(suite: Suite) -> None:
    policy_id = await enforced_policy(
        suite, condition='signal.source.startsWith("sum")', cooldown=600
    )
    for source in ("sum-a", "sum-a", "sum-b", "other"):
        await submit(suite, source=source)
    summary = await suite.coordinator.client.summarize_decisions(policy_id)
    assert summary.complete
    assert summary.signals_scanned >= 4
    assert dict(summary.by_outcome) == {"MATCHED": 2, "HELD": 1, "NOT_MATCHED": 1}
    assert dict(summary.by_hold_reason) == {"COOLDOWN": 1}
    assert summary.actions == 2
    version = (await suite.governor.client.get(policy_id)).version
    assert dict(summary.by_version) == {version: 4}
    error = await expect_error(
        suite.coordinator.client.summarize_decisions("bad id"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == ["policy_id"]
