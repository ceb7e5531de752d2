"""`taictl signal …`, `taictl action …` and `taictl status`: the Coordinator."""

from __future__ import annotations

from typing import Any

import click
import grpc
from rich.markup import escape
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, parse_pairs, pass_context
from tai_client.coordinator import CoordinatorClient
from tai_client.output import (
    console,
    format_map,
    format_ns,
    plural,
    print_fields,
    print_json,
    print_rows,
    print_table,
)

ACTION_STATUSES = {
    name.removeprefix("ACTION_STATUS_"): value
    for name, value in coordinator_pb2.ActionStatus.items()
    if value
}


def status_name(value: int) -> str:
    return coordinator_pb2.ActionStatus.Name(value).removeprefix("ACTION_STATUS_")  # type: ignore[arg-type]


def status_cell(a: coordinator_pb2.Action) -> str:
    """The action's status, with the approval deadline of one awaiting approval."""
    if a.status == coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL and a.approval_deadline_ns:
        return f"{status_name(a.status)} until {format_ns(a.approval_deadline_ns)}"
    return status_name(a.status)


def review_of(a: coordinator_pb2.Action) -> str:
    """Whether and how the action's approval was decided, in a phrase ("" for an action that
    did not require approval)."""
    if a.status == coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL:
        return f"awaiting approval until {format_ns(a.approval_deadline_ns)}"
    if a.reviewed_by:
        # An approved action is delivered before its target can reject it: a REJECTED action
        # never delivered was rejected in review.
        rejected = a.status == coordinator_pb2.ACTION_STATUS_REJECTED and not a.delivery_count
        return (
            f"{'rejected' if rejected else 'approved'} by {a.reviewed_by} at "
            f"{format_ns(a.reviewed_at_ns)}" + (f": {a.review_comment}" if a.review_comment else "")
        )
    if a.approval_deadline_ns:
        return f"not approved by {format_ns(a.approval_deadline_ns)}"
    return ""


def _action_row(a: coordinator_pb2.Action) -> list[str]:
    return [
        a.id,
        a.action_type,
        a.target_service,
        status_cell(a),
        str(a.delivery_count),
        a.policy_id or "-",
        format_map(a.parameters),
        format_ns(a.updated_at_ns),
    ]


ACTION_COLUMNS = ["ID", "TYPE", "TARGET", "STATUS", "DELIVERIES", "POLICY", "PARAMETERS", "UPDATED"]


@cli.group()
def signal() -> None:
    """Submit signals to the Coordinator, and explain what they came to."""


@signal.command()
@click.option(
    "--type", "signal_type", required=True, type=click.Choice(["alert", "event", "command"])
)
@click.option("--priority", required=True, type=click.IntRange(1, 10), help="1-10, 10 most urgent.")
@click.option("--meta", "metadata", multiple=True, metavar="KEY=VALUE", help="Metadata entry.")
@click.option("--source", default="taictl", show_default=True)
@click.option("--payload", default="", help="Payload text (UTF-8).")
@click.option("--id", "signal_id", default="", help="Idempotency key (generated if empty).")
@pass_context
def submit(
    ctx: CliContext,
    signal_type: str,
    priority: int,
    metadata: tuple[str, ...],
    source: str,
    payload: str,
    signal_id: str,
) -> None:
    """Submit a signal; prints which policies matched and which actions were created."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await CoordinatorClient(channel, options).submit_signal(
            signal_type=signal_type,
            priority=priority,
            metadata=parse_pairs(metadata, "--meta"),
            payload=payload.encode(),
            source=source,
            signal_id=signal_id,
        )

    receipt = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(receipt)
        return
    console.print(
        f"signal [bold]{receipt.resource_id}[/bold]: matched "
        f"{', '.join(receipt.matched_policy_ids) or 'no policy'}; created "
        f"{', '.join(receipt.action_ids) or 'no action'}"
        + (
            f"; dry-run matches {receipt.result_data['dry_run_policy_ids']}"
            if receipt.result_data.get("dry_run_policy_ids")
            else ""
        )
        + (
            # By a cooldown, a silence or a limit: the decision record says which.
            f"; held back {receipt.result_data['suppressed_policy_ids']} (taictl signal "
            f"explain {receipt.resource_id} says why)"
            if receipt.result_data.get("suppressed_policy_ids")
            else ""
        )
        + (" (replayed)" if receipt.replayed else "")
    )


@signal.command(name="list")
@click.option(
    "--type", "signal_type", default="", type=click.Choice(["", "alert", "event", "command"])
)
@click.option("--source", default="", help="Only signals from this source.")
@click.option("--min-priority", default=0, type=click.IntRange(0, 10))
@click.option("--meta", "metadata", multiple=True, metavar="KEY=VALUE", help="Metadata entry.")
@click.option("--limit", default=50, show_default=True, help="At most this many (newest first).")
@pass_context
def list_signals(
    ctx: CliContext,
    signal_type: str,
    source: str,
    min_priority: int,
    metadata: tuple[str, ...],
    limit: int,
) -> None:
    """List stored signals, newest first."""
    wanted = parse_pairs(metadata, "--meta")

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[coordinator_pb2.Signal]:
        client = CoordinatorClient(channel, options)
        found: list[coordinator_pb2.Signal] = []
        token = ""
        while len(found) < limit:
            page = await client.list_signals(
                signal_type=signal_type,
                source=source,
                min_priority=min_priority,
                metadata=wanted,
                page_size=min(1000, limit - len(found)),
                page_token=token,
            )
            found.extend(page.signals)
            token = page.next_page_token
            if not token:
                break
        return found[:limit]

    signals = ctx.run("coordinator", call)
    if ctx.json_output:
        for s in signals:
            print_json(s)
        return
    print_rows(
        ["SIGNAL", "RECEIVED", "TYPE", "PRIORITY", "SOURCE", "METADATA", "ACTIONS"],
        [
            [
                s.id,
                format_ns(s.received_at_ns),
                s.signal_type,
                str(s.priority),
                s.source or "-",
                format_map(s.metadata),
                str(len(s.action_ids)),
            ]
            for s in signals
        ],
        title=plural(len(signals), "signal"),
    )


@signal.command()
@click.argument("signal_id")
@pass_context
def explain(ctx: CliContext, signal_id: str) -> None:
    """Why a signal did or did not act: every policy evaluated against it and what each came
    to (the first false clause, the error, the cooldown holding it back, the action created)."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> coordinator_pb2.SignalDecision:
        return await CoordinatorClient(channel, options).explain_signal(signal_id)

    record = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(record)
        return
    s = record.signal
    print_fields(
        [
            ("signal", escape(s.id)),
            ("type", escape(s.signal_type)),
            ("priority", str(s.priority)),
            ("source", escape(s.source) or "-"),
            ("metadata", escape(format_map(s.metadata))),
            ("received", format_ns(s.received_at_ns)),
        ]
    )
    if not record.evaluated_at_ns:
        # Stored before the Coordinator kept decision records: only the signal's own summary.
        console.print(
            "no decision record: this signal was stored before the Coordinator kept them; it "
            f"matched {', '.join(s.matched_policy_ids) or 'no policy'} and created "
            f"{', '.join(s.action_ids) or 'no action'}",
            highlight=False,
        )
        return
    console.print(
        f"evaluated {format_ns(record.evaluated_at_ns)} against "
        f"{plural(record.policies_evaluated, 'policy', 'policies')}",
        highlight=False,
    )
    if record.decisions:
        print_rows(
            ["POLICY", "NAME", "VERSION", "MODE", "OUTCOME", "REASON"],
            [
                [
                    d.policy_id,
                    d.policy_name or "-",
                    str(d.policy_version),
                    governor_pb2.PolicyState.Name(d.mode).removeprefix("POLICY_STATE_"),
                    coordinator_pb2.DecisionOutcome.Name(d.outcome).removeprefix(
                        "DECISION_OUTCOME_"
                    ),
                    decision_reason(d),
                ]
                for d in record.decisions
            ],
        )
    if record.omitted_not_matched:
        console.print(
            f"{plural(record.omitted_not_matched, 'more policy', 'more policies')} did not match",
            highlight=False,
        )
    console.print(
        f"policy revision {record.policy_revision}, replica {escape(record.replica_id or '-')}",
        highlight=False,
    )


def decision_reason(d: coordinator_pb2.PolicyDecision) -> str:
    """Why a policy's evaluation came to its outcome, in a phrase."""
    until = format_ns(d.held_until_ns)
    if d.outcome == coordinator_pb2.DECISION_OUTCOME_MATCHED:
        if d.mode == governor_pb2.POLICY_STATE_DRY_RUN:
            return f"dry run: would have created an action for {d.target_service}"
        return f"created action {d.action_id or '-'} for {d.target_service}"
    if d.outcome == coordinator_pb2.DECISION_OUTCOME_NOT_MATCHED:
        return f"false: {d.failed_clause}" if d.failed_clause else "the condition was false"
    if d.outcome == coordinator_pb2.DECISION_OUTCOME_ERROR:
        return f"error: {d.error}"
    if d.hold_reason == coordinator_pb2.HOLD_REASON_APPROVAL:
        # The action exists, but waits for a reviewer.
        return f"awaiting approval: action {d.action_id or d.held_by} until {until}"
    if d.outcome == coordinator_pb2.DECISION_OUTCOME_HELD:
        if d.hold_reason == coordinator_pb2.HOLD_REASON_COOLDOWN:
            started = f" (started by action {d.held_by})" if d.held_by else ""
            return f"cooldown until {until}{started}"
        if d.hold_reason == coordinator_pb2.HOLD_REASON_SILENCE:
            return f"silenced by {d.held_by} until {until}"
        if d.hold_reason == coordinator_pb2.HOLD_REASON_LIMIT:
            return f"limit reached: {d.held_by}; a slot frees at {until}"
        return f"held until {until}"
    return "-"


@cli.group()
def action() -> None:
    """List, watch, acknowledge, review (approve, reject) and request actions."""


@action.command(name="list")
@click.option("--service", default="", help="Only actions for this target service.")
@click.option("--status", "status", default=None, type=click.Choice(sorted(ACTION_STATUSES)))
@click.option("--policy", "policy_id", default="", help="Only actions created by this policy.")
@click.option("--limit", default=100, show_default=True, help="At most this many (newest first).")
@pass_context
def list_actions(
    ctx: CliContext, service: str, status: str | None, policy_id: str, limit: int
) -> None:
    """List actions, newest first."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[coordinator_pb2.Action]:
        client = CoordinatorClient(channel, options)
        found: list[coordinator_pb2.Action] = []
        token = ""
        while len(found) < limit:
            page = await client.list_actions(
                target_service=service,
                status=ACTION_STATUSES[status] if status else 0,  # type: ignore[arg-type]
                policy_id=policy_id,
                page_size=min(1000, limit - len(found)),
                page_token=token,
            )
            found.extend(page.actions)
            token = page.next_page_token
            if not token:
                break
        return found

    actions = ctx.run("coordinator", call)
    if ctx.json_output:
        for a in actions:
            print_json(a)
        return
    print_table(ACTION_COLUMNS, actions, _action_row, title=plural(len(actions), "action"))


@action.command()
@click.argument("action_id")
@pass_context
def get(ctx: CliContext, action_id: str) -> None:
    """Show one action."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Action:
        return await CoordinatorClient(channel, options).get_action(action_id)

    a = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(a)
        return
    print_fields(
        [
            ("id", a.id),
            ("type", a.action_type),
            ("target", a.target_service),
            ("status", status_name(a.status)),
            ("message", a.status_message or "-"),
            ("deliveries", f"{a.delivery_count} of {a.max_deliveries}"),
            ("ack deadline", f"{a.ack_deadline_seconds}s"),
            ("parameters", format_map(a.parameters)),
            ("policy", f"{a.policy_id} v{a.policy_version}" if a.policy_id else "-"),
            ("signal", a.signal_id or "-"),
            ("approval", escape(review_of(a)) or "not required"),
            ("updated", format_ns(a.updated_at_ns)),
        ]
    )


@action.command()
@click.argument("service")
@click.option("--history", is_flag=True, help="Also resend actions accepted in the last hour.")
@click.option(
    "--ack",
    type=click.Choice(["accepted", "completed", "rejected", "failed"]),
    default=None,
    help="Acknowledge each action with this status as it arrives (act as the service).",
)
@pass_context
def watch(ctx: CliContext, service: str, history: bool, ack: str | None) -> None:
    """Receive the actions addressed to SERVICE as they come (Ctrl-C to stop)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> Any:
        client = CoordinatorClient(channel, options)
        async for a in client.stream_actions(service, include_history=history):
            if ctx.json_output:
                print_json(a)
            else:
                console.print(
                    f"{a.id}  {a.action_type:<12} {status_name(a.status):<9} "
                    f"delivery {a.delivery_count}/{a.max_deliveries}  {format_map(a.parameters)}"
                )
            if ack:
                await client.acknowledge(a.id, ack, "acknowledged by taictl")

    ctx.run("coordinator", call)


@action.command(name="ack")
@click.argument("action_id")
@click.argument("status", type=click.Choice(["accepted", "completed", "rejected", "failed"]))
@click.option("--message", default="")
@pass_context
def acknowledge(ctx: CliContext, action_id: str, status: str, message: str) -> None:
    """Acknowledge an action: accepted, then completed; or rejected / failed."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await CoordinatorClient(channel, options).acknowledge(action_id, status, message)

    receipt = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(receipt)
        return
    console.print(f"action {action_id} → {receipt.result_data.get('status', status.upper())}")


review_comment_option = click.option(
    "--comment", required=True, help="Why (recorded with the review, and in the audit log)."
)


def _print_review(ctx: CliContext, a: coordinator_pb2.Action) -> None:
    if ctx.json_output:
        print_json(a)
        return
    console.print(
        f"action [bold]{escape(a.id)}[/bold] → {status_name(a.status)} ({escape(review_of(a))})",
        highlight=False,
    )


@action.command()
@click.argument("action_id")
@review_comment_option
@pass_context
def approve(ctx: CliContext, action_id: str, comment: str) -> None:
    """Approve an action AWAITING_APPROVAL: it becomes PENDING and is delivered."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Action:
        return await CoordinatorClient(channel, options).approve_action(action_id, comment)

    _print_review(ctx, ctx.run("coordinator", call))


@action.command()
@click.argument("action_id")
@review_comment_option
@pass_context
def reject(ctx: CliContext, action_id: str, comment: str) -> None:
    """Reject an action AWAITING_APPROVAL: it ends REJECTED, never delivered."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Action:
        return await CoordinatorClient(channel, options).reject_action(action_id, comment)

    _print_review(ctx, ctx.run("coordinator", call))


@action.command()
@click.option("--type", "action_type", required=True)
@click.option("--service", "target_service", required=True, help="Target service.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE")
@click.option("--id", "action_id", default="", help="Idempotency key (generated if empty).")
@click.option("--not-before-ns", default=0, help="Not delivered before this time (ns).")
@pass_context
def request(
    ctx: CliContext,
    action_type: str,
    target_service: str,
    params: tuple[str, ...],
    action_id: str,
    not_before_ns: int,
) -> None:
    """Request an action directly, without a policy."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await CoordinatorClient(channel, options).request_action(
            action_type=action_type,
            target_service=target_service,
            parameters=parse_pairs(params, "--param"),
            action_id=action_id,
            not_before_ns=not_before_ns,
            source_service="taictl",
        )

    receipt = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(receipt)
        return
    deferred = receipt.result_data.get("deferred_until_ns")
    console.print(
        f"action [bold]{receipt.resource_id}[/bold] "
        + (f"deferred until {format_ns(int(deferred))}" if deferred else "requested")
    )


@cli.command()
@click.argument("service", default="")
@pass_context
def status(ctx: CliContext, service: str) -> None:
    """Coordination status of SERVICE (or of every service)."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> coordinator_pb2.CoordinationStatus:
        return await CoordinatorClient(channel, options).status(service)

    s = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(s)
        return
    print_fields(
        [
            ("service", s.service_name or "(all)"),
            ("pending signals", str(s.pending_signals)),
            ("open actions", str(s.pending_actions)),
            ("  delivered", str(s.delivered_actions)),
            ("  accepted", str(s.accepted_actions)),
            ("last signal", format_ns(s.last_signal_ns)),
        ]
    )
