"""`taictl silence …`, `taictl action approve|reject`, the limit and approval options of
`taictl policy propose|simulate`, and how `taictl signal explain` shows what held a signal
back, against a real Governor and Coordinator sharing a SQLite store, over gRPC. The commands
run in a worker thread (each runs its own event loop, as the real CLI does) while the servers
run in the test's."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from google.protobuf import json_format
from integration.coordinator.test_coordinator_api import (
    CONDITION,
    enforced_policy,
    submit,
    wait_until_active,
)
from support.cli import row_of, taictl
from support.running import Suite
from tai.v1 import common_pb2, coordinator_pb2
from tai_client import (  # noqa: F401  (register groups)
    coordinator_commands,
    policy_commands,
    silence_commands,
)
from tai_client.output import format_duration, format_ns
from tai_client.policy_commands import duration_seconds, parse_moment_ahead

SCALE_API = ["--action-type", "scale", "--target-service", "api", "--param", "replicas=+2"]
NS = 1_000_000_000


async def explained(signal_id: str, policy_id: str) -> coordinator_pb2.PolicyDecision:
    """The policy's decision in the signal's record, as `taictl --json signal explain` has it."""
    result = await taictl("--json", "signal", "explain", signal_id)
    assert result.exit_code == 0, result.output
    record = json_format.Parse(result.stdout, coordinator_pb2.SignalDecision())
    return next(d for d in record.decisions if d.policy_id == policy_id)


async def proposed_and_enforced(suite: Suite, *options: str) -> str:
    """A scale-api policy proposed with `taictl policy propose` and these options, enforced."""
    result = await taictl(
        "--json",
        "policy",
        "propose",
        "--type",
        "operational",
        "--name",
        "scale-api",
        "--condition",
        CONDITION,
        *SCALE_API,
        *options,
    )
    assert result.exit_code == 0, result.output
    policy_id = json_format.Parse(result.stdout, common_pb2.Receipt()).resource_id
    await suite.governor.client.enforce(policy_id)
    await wait_until_active(suite, policy_id)
    return policy_id


async def test_a_silence_holds_signals_back_until_it_is_expired(suite: Suite) -> None:
    policy_id = await enforced_policy(suite)

    created = await taictl(
        "--json",
        "silence",
        "create",
        "--target-service",
        "api",
        "--duration",
        "30m",
        "--comment",
        "deploying api",
    )
    assert created.exit_code == 0, created.output
    silence = json_format.Parse(created.stdout, coordinator_pb2.Silence())
    assert silence.state == coordinator_pb2.SILENCE_STATE_ACTIVE
    assert silence.ends_at_ns - silence.starts_at_ns == pytest.approx(1800 * NS, abs=5 * NS)

    listed = await taictl("silence", "list")
    assert listed.exit_code == 0, listed.output
    row = row_of(listed.output, silence.id)
    for text in ("ACTIVE", "target api", "anonymous", "deploying api"):
        assert text in row

    held = await submit(suite)
    assert not held.action_ids
    submitted = await taictl(
        "signal", "submit", "--type", "alert", "--priority", "9", "--meta", "service=api"
    )
    assert submitted.exit_code == 0, submitted.output
    assert f"created no action; held back {policy_id} (taictl signal explain " in (submitted.output)
    decision = await explained(held.resource_id, policy_id)
    assert decision.outcome == coordinator_pb2.DECISION_OUTCOME_HELD
    assert decision.held_by == silence.id
    explain = await taictl("signal", "explain", held.resource_id)
    assert explain.exit_code == 0, explain.output
    row = row_of(explain.output, policy_id)
    assert "HELD" in row
    assert f"silenced by {silence.id} until {format_ns(silence.ends_at_ns)}" in row

    shown = await taictl("silence", "get", silence.id)
    assert shown.exit_code == 0, shown.output
    assert "ACTIVE" in row_of(shown.output, "state")
    assert "target api" in row_of(shown.output, "matches")
    assert "deploying api" in row_of(shown.output, "comment")
    assert format_ns(silence.ends_at_ns) in row_of(shown.output, "ends")

    expired = await taictl("silence", "expire", silence.id, "--comment", "deploy done")
    assert expired.exit_code == 0, expired.output
    assert f"silence {silence.id} EXPIRED: ended at " in expired.output
    assert "by anonymous" in expired.output

    assert silence.id not in (await taictl("silence", "list")).output
    every = await taictl("silence", "list", "--all")
    assert "EXPIRED" in row_of(every.output, silence.id)
    assert "by anonymous" in row_of((await taictl("silence", "get", silence.id)).output, "expired")

    acted = await submit(suite, metadata={"service": "api", "pod": "2"})
    [action_id] = acted.action_ids
    explain = await taictl("signal", "explain", acted.resource_id)
    assert f"created action {action_id} for api" in row_of(explain.output, policy_id)


async def test_a_silence_can_start_later_and_match_one_policy(suite: Suite) -> None:
    policy_id = await enforced_policy(suite)
    before = time.time_ns()

    created = await taictl(
        "--json",
        "silence",
        "create",
        "--policy",
        policy_id,
        "--condition",
        'signal.metadata["pod"] == "7"',
        "--starts",
        "1h",
        "--until",
        "2h",
        "--comment",
        "night maintenance",
    )
    assert created.exit_code == 0, created.output
    silence = json_format.Parse(created.stdout, coordinator_pb2.Silence())
    assert silence.state == coordinator_pb2.SILENCE_STATE_PENDING
    assert silence.starts_at_ns - before == pytest.approx(3600 * NS, abs=5 * NS)
    # --until as a duration counts from the start, as --duration does.
    assert silence.ends_at_ns - silence.starts_at_ns == 7200 * NS

    row = row_of((await taictl("silence", "list")).output, silence.id)
    assert "PENDING" in row
    assert f'policy {policy_id} and signals where signal.metadata["pod"] == "7"' in row

    # Not started yet: the signal acts.
    assert (await submit(suite, metadata={"service": "api", "pod": "7"})).action_ids


async def test_an_action_that_requires_approval_waits_for_a_reviewer(suite: Suite) -> None:
    policy_id = await proposed_and_enforced(
        suite, "--require-approval", "--approval-timeout", "15m"
    )
    shown = await taictl("policy", "get", policy_id)
    assert "required, within 15m" in row_of(shown.output, "approval")

    first = await submit(suite, metadata={"service": "api", "pod": "1"})
    [approved_id] = first.action_ids
    waiting = await suite.coordinator.client.get_action(approved_id)
    assert waiting.status == coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL
    assert waiting.approval_deadline_ns - waiting.timestamp_ns == pytest.approx(
        900 * NS, abs=5 * NS
    )
    deadline = format_ns(waiting.approval_deadline_ns)

    listed = await taictl("action", "list", "--status", "AWAITING_APPROVAL")
    assert listed.exit_code == 0, listed.output
    assert f"AWAITING_APPROVAL until {deadline}" in row_of(listed.output, approved_id)
    shown = await taictl("action", "get", approved_id)
    assert f"awaiting approval until {deadline}" in row_of(shown.output, "approval")
    explain = await taictl("signal", "explain", first.resource_id)
    row = row_of(explain.output, policy_id)
    assert "HELD" in row
    assert f"awaiting approval: action {approved_id} until {deadline}" in row

    approved = await taictl("action", "approve", approved_id, "--comment", "capacity is fine")
    assert approved.exit_code == 0, approved.output
    assert f"action {approved_id} → PENDING (approved by anonymous at " in approved.output
    assert "capacity is fine" in approved.output
    action = await suite.coordinator.client.get_action(approved_id)
    assert action.status == coordinator_pb2.ACTION_STATUS_PENDING
    assert (action.reviewed_by, action.review_comment) == ("anonymous", "capacity is fine")
    shown = await taictl("action", "get", approved_id)
    assert "approved by anonymous" in row_of(shown.output, "approval")

    second = await submit(suite, metadata={"service": "api", "pod": "2"})
    [rejected_id] = second.action_ids
    rejected = await taictl("--json", "action", "reject", rejected_id, "--comment", "not now")
    assert rejected.exit_code == 0, rejected.output
    action = json_format.Parse(rejected.stdout, coordinator_pb2.Action())
    assert action.status == coordinator_pb2.ACTION_STATUS_REJECTED
    assert (action.reviewed_by, action.review_comment) == ("anonymous", "not now")
    shown = await taictl("action", "get", rejected_id)
    assert "REJECTED" in row_of(shown.output, "status")
    assert "rejected by anonymous" in row_of(shown.output, "approval")

    # Reviewed already: neither can be reviewed again.
    for verb, action_id in (("reject", approved_id), ("approve", rejected_id)):
        again = await taictl("action", verb, action_id, "--comment", "changed my mind")
        assert again.exit_code == 1, again.output
        assert "FAILED_PRECONDITION" in again.stderr
    still_waiting = await taictl("action", "list", "--status", "AWAITING_APPROVAL")
    assert approved_id not in still_waiting.output
    assert rejected_id not in still_waiting.output


async def test_a_limit_holds_back_the_actions_past_it(suite: Suite) -> None:
    policy_id = await proposed_and_enforced(suite, "--limit", "1/1h", "--limit", "5/10m:target")
    shown = await taictl("policy", "get", policy_id)
    assert "1 per 1h (policy), 5 per 10m (target)" in row_of(shown.output, "limits")
    assert "not required" in row_of(shown.output, "approval")

    first = await submit(suite, metadata={"service": "api", "pod": "1"})
    assert first.action_ids
    second = await submit(suite, metadata={"service": "api", "pod": "2"})
    assert not second.action_ids

    decision = await explained(second.resource_id, policy_id)
    assert decision.outcome == coordinator_pb2.DECISION_OUTCOME_HELD
    assert decision.hold_reason == coordinator_pb2.HOLD_REASON_LIMIT
    explain = await taictl("signal", "explain", second.resource_id)
    assert (
        f"limit reached: {decision.held_by}; a slot frees at {format_ns(decision.held_until_ns)}"
        in row_of(explain.output, policy_id)
    )

    # A draft with the same limit, rehearsed over those two signals.
    draft = ["policy", "simulate", "--condition", CONDITION, *SCALE_API, "--since", "1h"]
    limited = await taictl(*draft, "--limit", "1/1h")
    assert limited.exit_code == 0, limited.output
    assert "2 matched: would create 1 action (api: 1), 1 held back (limit: 1)" in (limited.output)
    unlimited = await taictl(*draft)
    assert "2 matched: would create 2 actions (api: 2), 0 held back" in unlimited.output


async def test_bad_review_and_silence_input_is_refused(suite: Suite) -> None:
    for args in (
        ["action", "approve", "act-1"],
        ["action", "reject", "act-1"],
        ["silence", "create", "--target-service", "api", "--duration", "1h"],
    ):
        refused = await taictl(*args)
        assert refused.exit_code == 2, (args, refused.output)
        assert "Missing option '--comment'" in refused.output

    for args, hint in (
        (["--duration", "1h"], "--condition, --target-service or --policy"),
        (["--target-service", "api"], "--duration or --until"),
        (["--target-service", "api", "--duration", "1h", "--until", "2h"], "--duration or"),
        (["--target-service", "api", "--duration", "soon"], "--duration"),
        (["--target-service", "api", "--until", "tomorrow"], "--until"),
        (["--target-service", "api", "--duration", "1h", "--starts", "later"], "--starts"),
    ):
        refused = await taictl("silence", "create", "--comment", "x", *args)
        assert refused.exit_code == 2, (args, refused.output)
        assert hint in refused.output

    for args in (["silence", "get", "sil-missing"], ["silence", "expire", "sil-missing"]):
        missing = await taictl(*args)
        assert missing.exit_code == 1, (args, missing.output)
        assert "NOT_FOUND" in missing.stderr
    missing = await taictl("action", "approve", "act-missing", "--comment", "ok")
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.stderr

    # A silence the server refuses (it must end after it starts) names the field.
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = await taictl(
        "--json", "silence", "create", "--target-service", "api", "--until", past, "--comment", "x"
    )
    assert refused.exit_code == 1
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"


async def test_bad_limits_and_approval_timeouts_are_usage_errors(suite: Suite) -> None:
    for command in (["propose", "--type", "operational"], ["simulate", "--condition", CONDITION]):
        for value in ("3", "3/", "/10m", "x/10m", "0/10m", "3/0s", "3/soon", "3/10m:service"):
            refused = await taictl("policy", *command, *SCALE_API, "--limit", value)
            assert refused.exit_code == 2, (command, value, refused.output)
            assert "Invalid value for '--limit'" in refused.output
            assert repr(value) in refused.output
        refused = await taictl("policy", *command, *SCALE_API, "--approval-timeout", "soon")
        assert refused.exit_code == 2
        assert "--approval-timeout" in refused.output

    # Well formed, but past what the Governor accepts (a window of at most 7 days).
    refused = await taictl(
        "policy",
        "propose",
        "--type",
        "operational",
        "--name",
        "scale-api",
        "--condition",
        CONDITION,
        *SCALE_API,
        "--limit",
        "3/30d",
    )
    assert refused.exit_code == 1
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "action.limits[0].window_seconds" in refused.stderr

    # A stored policy is rehearsed as stored: no draft options beside it.
    refused = await taictl("policy", "simulate", "pol-x", "--limit", "3/10m")
    assert refused.exit_code == 2


def test_durations_read_and_print_alike() -> None:
    for text, seconds in (("45s", 45), ("10m", 600), ("1h30m", 5400), ("2d", 172_800)):
        assert duration_seconds(text) == seconds
        assert format_duration(seconds) == text
    assert duration_seconds("soon") is None
    now_ns = time.time_ns()
    assert parse_moment_ahead("2h", "--until", now_ns) == now_ns + 7200 * NS
    assert parse_moment_ahead("2026-12-06T10:00:00Z", "--until", now_ns) == int(
        dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC).timestamp() * NS
    )
