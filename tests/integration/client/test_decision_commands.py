"""`taictl signal explain`, `taictl policy simulate` and the rehearsal `taictl policy enforce`
runs first, against a real Governor and Coordinator sharing a SQLite store, over gRPC. The
commands run in a worker thread (each runs its own event loop, as the real CLI does) while the
servers run in the test's."""

from __future__ import annotations

import datetime as dt
import io
import time

import pytest
from google.protobuf import json_format
from integration.coordinator.test_coordinator_api import CONDITION, enforced_policy, submit
from support import inprocess
from support.cli import json_lines, row_of, taictl
from support.processes import free_port
from support.running import Suite
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2
from tai_client import coordinator_commands, policy_commands  # noqa: F401  (register groups)
from tai_client.cli import DEFAULT_TARGETS
from tai_client.output import format_ns
from tai_client.policy_commands import print_simulation

SCALE_API = ["--action-type", "scale", "--target-service", "api", "--param", "replicas=+2"]
SCALE_ACTION = governor_pb2.ActionTemplate(
    action_type="scale", target_service="api", parameters={"replicas": "+2"}, cooldown_seconds=60
)
NS = 1_000_000_000


class TerminalInput(io.BytesIO):
    """What a person types at a terminal: a stdin that is a tty."""

    def isatty(self) -> bool:
        return True


def simulation_of(line: str) -> coordinator_pb2.SimulatePolicyResponse:
    return json_format.Parse(line, coordinator_pb2.SimulatePolicyResponse())


async def state_of(suite: Suite, policy_id: str) -> int:
    return (await suite.governor.client.get(policy_id)).state


async def test_explain_names_the_failed_clause_the_error_the_cooldown_hold_and_the_action(
    suite: Suite,
) -> None:
    scale = await enforced_policy(suite, cooldown=60)
    billing = await enforced_policy(
        suite,
        condition='signal.type == "alert" && signal.metadata["service"] == "billing"',
        target="billing",
    )
    region = await enforced_policy(suite, condition='signal.metadata["region"] == "eu"')
    first = await submit(suite)
    second = await submit(suite)  # identical: held back by the cooldown the first one started
    [action_id] = first.action_ids

    result = await taictl("signal", "explain", first.resource_id)
    assert result.exit_code == 0, result.output
    for text in (first.resource_id, "alert", "prometheus", "service=api"):
        assert text in result.output
    assert "evaluated" in result.output
    assert "against 3 policies" in result.output
    matched = row_of(result.output, scale)
    assert "ENFORCED" in matched
    assert "MATCHED" in matched
    assert f"created action {action_id} for api" in matched
    not_matched = row_of(result.output, billing)
    assert "NOT_MATCHED" in not_matched
    assert 'false: signal.metadata["service"] == "billing"' in not_matched
    failed = row_of(result.output, region)
    assert "ERROR" in failed
    assert "error: " in failed
    assert "region" in failed
    assert "policy revision" in result.output
    assert "replica test-coordinator" in result.output
    assert "did not match" not in result.output  # every decision fits in the record

    result = await taictl("--json", "signal", "explain", second.resource_id)
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    record = json_format.Parse(line, coordinator_pb2.SignalDecision())
    assert record.signal.id == second.resource_id
    held = next(d for d in record.decisions if d.policy_id == scale)
    assert held.outcome == coordinator_pb2.DECISION_OUTCOME_HELD
    assert held.held_by == action_id

    result = await taictl("signal", "explain", second.resource_id)
    assert result.exit_code == 0, result.output
    row = row_of(result.output, scale)
    assert "HELD" in row
    assert f"cooldown until {format_ns(held.held_until_ns)} (started by action {action_id})" in row

    missing = await taictl("signal", "explain", "sig-missing")
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.stderr


async def known_signals(suite: Suite) -> dict[str, str]:
    """Nine signals against CONDITION with a 60 s cooldown: four distinct matches, three that
    each fail another clause, one whose condition cannot be evaluated (no `service` key), and a
    repeat of the first match, held back by its cooldown. Their ids, by name."""
    ids: dict[str, str] = {}
    for pod in range(1, 5):
        ids[f"match-{pod}"] = (
            await submit(suite, metadata={"service": "api", "pod": str(pod)})
        ).resource_id
    ids["low-priority"] = (await submit(suite, priority=3)).resource_id
    ids["billing"] = (await submit(suite, metadata={"service": "billing"})).resource_id
    ids["event"] = (await submit(suite, signal_type="event")).resource_id
    ids["no-service"] = (await submit(suite, metadata={})).resource_id
    ids["repeat"] = (await submit(suite, metadata={"service": "api", "pod": "1"})).resource_id
    return ids


async def test_simulate_reports_what_a_draft_or_a_stored_policy_would_have_done(
    suite: Suite,
) -> None:
    ids = await known_signals(suite)
    draft = ["policy", "simulate", "--condition", CONDITION, *SCALE_API, "--cooldown", "60"]

    result = await taictl(*draft, "--since", "1h")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "draft: 9 signals scanned" in out
    assert "5 matched: would create 4 actions (api: 4), 1 held back (cooldown: 1)" in out
    assert "3 did not match" in out
    assert "1 failed to evaluate" in out
    for clause in (
        'signal.type == "alert"',
        "signal.priority >= 8",
        'signal.metadata["service"] == "api"',
    ):
        assert row_of(out, clause).split("│")[1].strip() == "1"
    error_row = row_of(out, "no such key: 'service'")
    assert ids["no-service"] in error_row
    for name in ("match-1", "match-2", "match-3", "match-4", "repeat"):
        assert ids[name] in out
    assert "warning" not in out

    result = await taictl("--json", *draft, "--since", "1h", "--sample", "2")
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    report = simulation_of(line)
    assert (report.signals_scanned, report.matched, report.actions, report.held) == (9, 5, 4, 1)
    assert (report.not_matched, report.errors) == (3, 1)
    assert dict(report.actions_by_target) == {"api": 4}
    assert sorted(report.failed_clauses.values()) == [1, 1, 1]
    assert [s.id for s in report.sample] == [ids["match-1"], ids["match-2"]]
    [error] = report.error_samples
    assert (error.count, error.signal_id) == (1, ids["no-service"])
    assert report.complete

    # The last three: the event, the one without a service, and the repeat, which no earlier
    # match in the window holds back.
    report = simulation_of((await taictl("--json", *draft, "--last", "3")).stdout)
    assert (report.signals_scanned, report.matched, report.actions, report.held) == (3, 1, 1, 0)
    assert (report.not_matched, report.errors) == (1, 1)

    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    before = await taictl(
        *draft, "--since", "3h", "--until", two_hours_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    assert before.exit_code == 0, before.output
    assert "draft: 0 signals scanned" in before.output

    proposed = await suite.governor.client.propose(
        policy_type="operational", name="scale-api", condition=CONDITION, action=SCALE_ACTION
    )
    policy_id = proposed.resource_id
    stored = await taictl("policy", "simulate", policy_id, "--version", "1")
    assert stored.exit_code == 0, stored.output
    assert f"policy {policy_id} v1: 9 signals scanned" in stored.output
    assert "5 matched: would create 4 actions (api: 4), 1 held back (cooldown: 1)" in stored.output

    # A rehearsal writes nothing.
    assert not (await suite.coordinator.client.list_actions()).actions
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_PROPOSED


async def test_simulate_refuses_a_bad_draft_and_mixed_options(suite: Suite) -> None:
    bad = await taictl("policy", "simulate", "--condition", "signal.priority >=", *SCALE_API)
    assert bad.exit_code == 1
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "draft.condition" in bad.stderr

    for args in (
        ["pol-x", "--condition", CONDITION],
        [],
        ["--version", "2", "--condition", CONDITION],
        ["pol-x", "--last", "5", "--since", "1h"],
        ["pol-x", "--since", "yesterday"],
    ):
        refused = await taictl("policy", "simulate", *args)
        assert refused.exit_code == 2, (args, refused.output)


async def proposed_policy(suite: Suite) -> str:
    receipt = await suite.governor.client.propose(
        policy_type="operational", name="scale-api", condition=CONDITION, action=SCALE_ACTION
    )
    return receipt.resource_id


async def test_enforce_rehearses_the_policy_then_asks(suite: Suite) -> None:
    for pod in ("1", "2"):
        await submit(suite, metadata={"service": "api", "pod": pod})
    await submit(suite, priority=3)
    summary = "2 matched: would create 2 actions (api: 2), 0 held back"
    policy_id = await proposed_policy(suite)

    refused = await taictl("policy", "enforce", policy_id)  # stdin is not a terminal
    assert refused.exit_code == 1
    assert "pass --yes" in refused.stderr
    assert "signals scanned" not in refused.output
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_PROPOSED

    declined = await taictl("policy", "enforce", policy_id, stdin=TerminalInput(b"n\n"))
    assert declined.exit_code == 1
    assert f"policy {policy_id} v1: 3 signals scanned" in declined.output
    assert summary in declined.output
    assert f"Enforce policy {policy_id}? [y/N]" in declined.output
    assert f"policy {policy_id} not enforced" in declined.stderr
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_PROPOSED

    accepted = await taictl("policy", "enforce", policy_id, stdin=TerminalInput(b"y\n"))
    assert accepted.exit_code == 0, accepted.output
    assert summary in accepted.output
    assert f"enforced policy {policy_id} version 2 → ENFORCED" in accepted.output
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_ENFORCED

    policy_id = await proposed_policy(suite)
    yes = await taictl("policy", "enforce", policy_id, "--yes")
    assert yes.exit_code == 0, yes.output
    assert summary in yes.stdout
    assert "Enforce policy" not in yes.output
    assert f"enforced policy {policy_id} version 2 → ENFORCED" in yes.stdout
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_ENFORCED

    policy_id = await proposed_policy(suite)
    as_json = await taictl("--json", "policy", "enforce", policy_id, "--yes")
    assert as_json.exit_code == 0, as_json.output
    simulation_line, receipt_line = as_json.stdout.splitlines()
    rehearsal = simulation_of(simulation_line)
    assert (rehearsal.policy_id, rehearsal.signals_scanned, rehearsal.actions) == (policy_id, 3, 2)
    receipt = json_format.Parse(receipt_line, common_pb2.Receipt())
    assert receipt.resource_id == policy_id

    # A dry run neither rehearses nor asks.
    policy_id = await proposed_policy(suite)
    dry_run = await taictl("policy", "enforce", policy_id, "--dry-run")
    assert dry_run.exit_code == 0, dry_run.output
    assert "signals scanned" not in dry_run.output
    assert await state_of(suite, policy_id) == governor_pb2.POLICY_STATE_DRY_RUN


async def test_enforce_does_not_depend_on_the_coordinator(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with inprocess.governor(sqlite_url) as governor:
        monkeypatch.setitem(DEFAULT_TARGETS, "governor", governor.target)
        monkeypatch.setitem(DEFAULT_TARGETS, "coordinator", f"127.0.0.1:{free_port()}")
        receipt = await governor.client.propose(
            policy_type="operational", name="scale-api", condition=CONDITION, action=SCALE_ACTION
        )
        policy_id = receipt.resource_id

        result = await taictl("policy", "enforce", policy_id, "--yes")
        assert result.exit_code == 0, result.output
        assert "UNAVAILABLE" in result.stderr
        assert f"could not rehearse policy {policy_id}" in result.stderr
        assert f"enforced policy {policy_id} version 2 → ENFORCED" in result.stdout
        assert (await governor.client.get(policy_id)).state == governor_pb2.POLICY_STATE_ENFORCED


def test_a_simulation_the_deadline_stopped_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # A rehearsal that runs out of time needs more signals than a test stores quickly: the
    # summary of such an answer, as the server sends it.
    stopped_at = time.time_ns() - 600 * NS
    print_simulation(
        coordinator_pb2.SimulatePolicyResponse(
            policy_id="pol-1",
            policy_version=2,
            signals_scanned=120_000,
            not_matched=120_000,
            window_since_ns=stopped_at - 3000 * NS,
            window_until_ns=stopped_at + 600 * NS,
            scanned_until_ns=stopped_at,
            complete=False,
            elapsed_seconds=30.04,
        ),
        last=0,
        incomplete_hint="narrow the window or pass --max-seconds",
    )
    out = capsys.readouterr().out
    assert "policy pol-1 v2: 120000 signals scanned" in out
    assert (
        f"warning: stopped at {format_ns(stopped_at)} after 30.0s: the deadline came first; "
        "narrow the window or pass --max-seconds" in out
    )


async def test_signal_list_filters_and_shows_the_newest_first(suite: Suite) -> None:
    first = await submit(suite, source="cli-list", priority=4, metadata={"env": "prod"})
    second = await submit(suite, source="cli-list", priority=9, metadata={"env": "prod"})
    await submit(suite, source="elsewhere", priority=9)
    listed = await taictl("--json", "signal", "list", "--source", "cli-list")
    assert listed.exit_code == 0, listed.output
    assert [s["id"] for s in json_lines(listed)] == [second.resource_id, first.resource_id]
    urgent = await taictl("signal", "list", "--source", "cli-list", "--min-priority", "5")
    assert second.resource_id in urgent.output
    assert first.resource_id not in urgent.output
    assert "env=prod" in row_of(urgent.output, second.resource_id)
