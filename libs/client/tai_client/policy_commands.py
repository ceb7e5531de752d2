"""`taictl policy …`: the Governor's policy lifecycle."""

from __future__ import annotations

from typing import Any

import click
import grpc
from tai.v1 import common_pb2, governor_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, parse_pairs, pass_context
from tai_client.governor import GovernorClient
from tai_client.output import (
    console,
    format_map,
    format_ns,
    print_fields,
    print_json,
    print_table,
)

STATES = {
    name.removeprefix("POLICY_STATE_"): value
    for name, value in governor_pb2.PolicyState.items()
    if value
}


def state_name(value: int) -> str:
    return governor_pb2.PolicyState.Name(value).removeprefix("POLICY_STATE_")  # type: ignore[arg-type]


@cli.group()
def policy() -> None:
    """Propose, enforce, revoke, inspect and watch policies."""


def _print_receipt(ctx: CliContext, receipt: common_pb2.Receipt, verb: str) -> None:
    if ctx.json_output:
        print_json(receipt)
        return
    replay = " (replayed: this request id was already applied)" if receipt.replayed else ""
    console.print(
        f"{verb} policy [bold]{receipt.resource_id}[/bold] version {receipt.resource_version} "
        f"→ {receipt.result_data.get('state', '?')} "
        f"(revision {receipt.result_data.get('revision', '?')}, "
        f"{receipt.execution_time_us} µs){replay}"
    )


def _print_policy(ctx: CliContext, message: governor_pb2.Policy) -> None:
    if ctx.json_output:
        print_json(message)
        return
    a = message.action
    print_fields(
        [
            ("id", message.id),
            ("name", message.policy_name),
            ("type", message.policy_type),
            ("version", str(message.version)),
            ("state", state_name(message.state)),
            ("enabled", str(message.enabled).lower()),
            ("condition", message.condition or "-"),
            (
                "action",
                f"{a.action_type} → {a.target_service} ({format_map(a.parameters)}), "
                f"cooldown {a.cooldown_seconds}s"
                if a.action_type
                else "-",
            ),
            ("rules", format_map(message.rules)),
            ("description", message.description or "-"),
            ("revision", str(message.revision)),
            ("created", f"{format_ns(message.created_at_ns)} by {message.created_by or '-'}"),
            (
                "updated",
                f"{format_ns(message.updated_at_ns)} by {message.last_modified_by or '-'}",
            ),
            ("reason", message.state_reason or "-"),
        ]
    )


def _policy_row(p: governor_pb2.Policy) -> list[str]:
    return [
        p.id,
        p.policy_name,
        p.policy_type,
        str(p.version),
        state_name(p.state),
        "yes" if p.enabled else "no",
        p.condition or "-",
        f"{p.action.action_type}→{p.action.target_service}" if p.action.action_type else "-",
    ]


POLICY_COLUMNS = ["ID", "NAME", "TYPE", "VERSION", "STATE", "ENABLED", "CONDITION", "ACTION"]


@policy.command()
@click.option(
    "--type", "policy_type", required=False, default="", help="finance | security | operational"
)
@click.option("--name", default="", help="Policy name.")
@click.option("--condition", default="", help="CEL over `signal`, e.g. signal.priority >= 8")
@click.option("--action-type", default="", help="Type of the action to emit on a match.")
@click.option("--target-service", default="", help="Service that receives the action.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Action parameter.")
@click.option("--cooldown", default=0, help="Seconds during which identical signals are deduped.")
@click.option("--rule", "rules", multiple=True, metavar="KEY=VALUE", help="Free-form rule.")
@click.option("--description", default="")
@click.option("--disabled", is_flag=True, help="Propose it disabled.")
@click.option("--id", "policy_id", default="", help="New version of this policy (or this id).")
@click.option("--expected-version", default=0, help="Fail if the policy is not at this version.")
@click.option("--rollback-to", default=0, help="New version copying this older version.")
@click.option("--request-id", default="", help="Idempotency key for safe retries.")
@pass_context
def propose(
    ctx: CliContext,
    policy_type: str,
    name: str,
    condition: str,
    action_type: str,
    target_service: str,
    params: tuple[str, ...],
    cooldown: int,
    rules: tuple[str, ...],
    description: str,
    disabled: bool,
    policy_id: str,
    expected_version: int,
    rollback_to: int,
    request_id: str,
) -> None:
    """Propose a policy, a new version of one (--id), or a rollback (--id --rollback-to N)."""
    action = governor_pb2.ActionTemplate(
        action_type=action_type,
        target_service=target_service,
        parameters=parse_pairs(params, "--param"),
        cooldown_seconds=cooldown,
    )

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await GovernorClient(channel, options).propose(
            policy_type=policy_type,
            name=name,
            condition=condition,
            action=action,
            rules=parse_pairs(rules, "--rule"),
            description=description,
            enabled=False if disabled else None,
            policy_id=policy_id,
            expected_version=expected_version,
            rollback_to_version=rollback_to,
            request_id=request_id,
        )

    _print_receipt(ctx, ctx.run("governor", call), "proposed")


@policy.command()
@click.argument("policy_id")
@click.option("--dry-run", is_flag=True, help="Evaluate and record matches, emit no action.")
@click.option("--expected-version", default=0)
@click.option("--reason", default="")
@click.option("--request-id", default="")
@pass_context
def enforce(
    ctx: CliContext,
    policy_id: str,
    dry_run: bool,
    expected_version: int,
    reason: str,
    request_id: str,
) -> None:
    """Enforce a policy (or put it in dry run)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await GovernorClient(channel, options).enforce(
            policy_id,
            expected_version=expected_version,
            dry_run=dry_run,
            reason=reason,
            request_id=request_id,
        )

    _print_receipt(ctx, ctx.run("governor", call), "dry-run" if dry_run else "enforced")


@policy.command()
@click.argument("policy_id")
@click.option("--expected-version", default=0)
@click.option("--reason", default="")
@click.option("--request-id", default="")
@pass_context
def revoke(
    ctx: CliContext, policy_id: str, expected_version: int, reason: str, request_id: str
) -> None:
    """Revoke a policy."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await GovernorClient(channel, options).revoke(
            policy_id, expected_version=expected_version, reason=reason, request_id=request_id
        )

    _print_receipt(ctx, ctx.run("governor", call), "revoked")


@policy.command()
@click.argument("policy_id")
@click.option("--version", default=0, help="An older version (default: the current one).")
@pass_context
def get(ctx: CliContext, policy_id: str, version: int) -> None:
    """Show one policy."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> governor_pb2.Policy:
        return await GovernorClient(channel, options).get(policy_id, version=version)

    _print_policy(ctx, ctx.run("governor", call))


@policy.command(name="list")
@click.option("--type", "policy_type", default="", help="Only this policy type.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(sorted(STATES)),
    help="Only these states (repeatable).",
)
@click.option(
    "--enabled-only",
    is_flag=True,
    help="Only the policies in force: enabled, and ENFORCED or DRY_RUN.",
)
@pass_context
def list_policies(
    ctx: CliContext, policy_type: str, states: tuple[str, ...], enabled_only: bool
) -> None:
    """List the current version of every policy."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> list[governor_pb2.Policy]:
        client = GovernorClient(channel, options)
        return [
            p
            async for p in client.list_all(
                policy_type=policy_type,
                enabled_only=enabled_only,
                states=[STATES[s] for s in states],
            )
        ]

    policies = ctx.run("governor", call)
    if ctx.json_output:
        for p in policies:
            print_json(p)
        return
    print_table(POLICY_COLUMNS, policies, _policy_row, title=f"{len(policies)} policies")


@policy.command()
@click.argument("policy_id")
@pass_context
def versions(ctx: CliContext, policy_id: str) -> None:
    """List every version of a policy, newest first."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> list[governor_pb2.Policy]:
        client = GovernorClient(channel, options)
        found: list[governor_pb2.Policy] = []
        token = ""
        while True:
            page = await client.versions(policy_id, page_token=token)
            found.extend(page.versions)
            token = page.next_page_token
            if not token:
                return found

    rows = ctx.run("governor", call)
    if ctx.json_output:
        for p in rows:
            print_json(p)
        return
    print_table(
        ["VERSION", "STATE", "REVISION", "UPDATED", "BY", "REASON"],
        rows,
        lambda p: [
            str(p.version),
            state_name(p.state),
            str(p.revision),
            format_ns(p.updated_at_ns),
            p.last_modified_by or "-",
            p.state_reason
            or (
                f"rollback to v{p.rolled_back_from_version}" if p.rolled_back_from_version else "-"
            ),
        ],
        title=f"policy {policy_id}",
    )


@policy.command()
@click.option("--type", "policy_type", default="", help="Only this policy type.")
@click.option("--from-revision", default=0, help="Resume after this revision (0: current set).")
@pass_context
def watch(ctx: CliContext, policy_type: str, from_revision: int) -> None:
    """Print the current policies, then every change as it happens (Ctrl-C to stop)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> Any:
        stream = GovernorClient(channel, options).watch(
            policy_type=policy_type, from_revision=from_revision
        )
        async for message in stream:
            if ctx.json_output:
                print_json(message)
            else:
                console.print(
                    f"rev {message.revision:>6}  {message.id}  v{message.version}  "
                    f"{state_name(message.state):<9} {message.policy_type:<12} "
                    f"{message.policy_name}"
                )

    ctx.run("governor", call)
