"""`taictl silence …`: maintenance windows on the Coordinator, which hold back the actions of
the signals and policies they match between two times."""

from __future__ import annotations

import time

import click
import grpc
from rich.markup import escape
from tai.v1 import coordinator_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, pass_context
from tai_client.coordinator import CoordinatorClient
from tai_client.output import console, format_ns, plural, print_fields, print_json, print_rows
from tai_client.policy_commands import parse_duration, parse_moment_ahead

NS = 1_000_000_000

SILENCE_COLUMNS = ["ID", "STATE", "MATCHES", "STARTS", "ENDS", "CREATED BY", "COMMENT"]


def silence_state_name(value: int) -> str:
    return coordinator_pb2.SilenceState.Name(value).removeprefix("SILENCE_STATE_")  # type: ignore[arg-type]


def format_matcher(matcher: coordinator_pb2.SilenceMatcher) -> str:
    """What a silence matches, every field it sets (all of them must match)."""
    parts = [
        f"target {matcher.target_service}" if matcher.target_service else "",
        f"policy {matcher.policy_id}" if matcher.policy_id else "",
        f"signals where {matcher.condition}" if matcher.condition else "",
    ]
    return " and ".join(part for part in parts if part) or "-"


def _silence_row(s: coordinator_pb2.Silence) -> list[str]:
    return [
        s.id,
        silence_state_name(s.state),
        format_matcher(s.matcher),
        format_ns(s.starts_at_ns),
        format_ns(s.expired_at_ns or s.ends_at_ns),
        s.created_by or "-",
        s.comment,
    ]


def _print_silence(ctx: CliContext, s: coordinator_pb2.Silence) -> None:
    if ctx.json_output:
        print_json(s)
        return
    print_fields(
        [
            ("id", escape(s.id)),
            ("state", silence_state_name(s.state)),
            ("matches", escape(format_matcher(s.matcher))),
            ("starts", format_ns(s.starts_at_ns)),
            ("ends", format_ns(s.ends_at_ns)),
            ("comment", escape(s.comment) or "-"),
            ("created", f"{format_ns(s.created_at_ns)} by {escape(s.created_by or '-')}"),
            (
                "expired",
                f"{format_ns(s.expired_at_ns)} by {escape(s.expired_by or '-')}"
                if s.expired_at_ns
                else "-",
            ),
        ]
    )


@cli.group()
def silence() -> None:
    """Hold back the actions of matching signals for a while (a maintenance window)."""


@silence.command()
@click.option("--comment", required=True, help="Why (required).")
@click.option("--condition", default="", help="Only signals where this CEL over `signal` holds.")
@click.option("--target-service", default="", help="Only actions for this target service.")
@click.option("--policy", "policy_id", default="", help="Only this policy's actions.")
@click.option("--duration", default="", help="How long from its start: 2h, 30m, 1h30m.")
@click.option(
    "--until",
    default="",
    help="When it ends: a duration from its start (2h) or a time (2026-12-06T12:00:00Z).",
)
@click.option(
    "--starts",
    default="",
    help="When it starts (default: now): a duration from now (10m) or a time.",
)
@click.option("--id", "silence_id", default="", help="Idempotency key (generated if empty).")
@pass_context
def create(
    ctx: CliContext,
    comment: str,
    condition: str,
    target_service: str,
    policy_id: str,
    duration: str,
    until: str,
    starts: str,
    silence_id: str,
) -> None:
    """Hold back, from --starts (now) for --duration or until --until, the actions of the
    signals and policies matching every one of --condition, --target-service and --policy
    given."""
    if not (condition or target_service or policy_id):
        raise click.UsageError("give what to silence: --condition, --target-service or --policy")
    if bool(duration) == bool(until):
        raise click.UsageError("give how long: --duration or --until (one of them)")
    now_ns = time.time_ns()
    starts_at_ns = parse_moment_ahead(starts, "--starts", now_ns) if starts else 0
    start_ns = starts_at_ns or now_ns
    ends_at_ns = (
        parse_moment_ahead(until, "--until", start_ns)
        if until
        else start_ns + parse_duration(duration, "--duration") * NS
    )

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Silence:
        return await CoordinatorClient(channel, options).create_silence(
            comment=comment,
            condition=condition,
            target_service=target_service,
            policy_id=policy_id,
            starts_at_ns=starts_at_ns,
            ends_at_ns=ends_at_ns,
            silence_id=silence_id,
        )

    s = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(s)
        return
    console.print(
        f"silence [bold]{escape(s.id)}[/bold] {silence_state_name(s.state)}: holds back "
        f"{escape(format_matcher(s.matcher))} from {format_ns(s.starts_at_ns)} until "
        f"{format_ns(s.ends_at_ns)}",
        highlight=False,
    )


@silence.command(name="list")
@click.option("--all", "include_expired", is_flag=True, help="Also the silences that ended.")
@click.option("--limit", default=100, show_default=True, help="At most this many (newest first).")
@pass_context
def list_silences(ctx: CliContext, include_expired: bool, limit: int) -> None:
    """List the silences that have not ended (pending and active), newest first."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[coordinator_pb2.Silence]:
        client = CoordinatorClient(channel, options)
        found: list[coordinator_pb2.Silence] = []
        token = ""
        while len(found) < limit:
            page = await client.list_silences(
                include_expired=include_expired,
                page_size=min(1000, limit - len(found)),
                page_token=token,
            )
            found.extend(page.silences)
            token = page.next_page_token
            if not token:
                break
        return found

    silences = ctx.run("coordinator", call)
    if ctx.json_output:
        for s in silences:
            print_json(s)
        return
    print_rows(
        SILENCE_COLUMNS,
        [_silence_row(s) for s in silences],
        title=plural(len(silences), "silence"),
    )


@silence.command()
@click.argument("silence_id")
@pass_context
def get(ctx: CliContext, silence_id: str) -> None:
    """Show one silence."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Silence:
        return await CoordinatorClient(channel, options).get_silence(silence_id)

    _print_silence(ctx, ctx.run("coordinator", call))


@silence.command()
@click.argument("silence_id")
@click.option("--comment", default="", help="Why it ends early.")
@pass_context
def expire(ctx: CliContext, silence_id: str, comment: str) -> None:
    """End a silence now: matching signals act again."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> coordinator_pb2.Silence:
        return await CoordinatorClient(channel, options).expire_silence(silence_id, comment=comment)

    s = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(s)
        return
    ended = (
        f"at {format_ns(s.expired_at_ns)} by {escape(s.expired_by or '-')}"
        if s.expired_at_ns
        else f"at {format_ns(s.ends_at_ns)}"
    )
    console.print(
        f"silence [bold]{escape(s.id)}[/bold] {silence_state_name(s.state)}: ended {ended}",
        highlight=False,
    )
