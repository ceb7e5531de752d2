"""`taictl namespace …`: the namespaces one installation serves (one a team), administered on
the Governor by platform admins. Every other command works in the namespace of the global
`--namespace/-n` option."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import grpc
from rich.markup import escape
from tai.v1 import governor_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, check_namespace_name, cli, pass_context
from tai_client.governor import GovernorClient
from tai_client.output import (
    console,
    error_console,
    format_ns,
    plural,
    print_fields,
    print_json,
    print_rows,
)
from tai_client.policy_commands import stdin_is_terminal

F = TypeVar("F", bound=Callable[..., Any])

NAMESPACE_COLUMNS = [
    "NAME",
    "STATE",
    "ENFORCED POLICIES",
    "SIGNALS/S",
    "OPEN TASKS",
    "RATE LIMIT/S",
    "CREATED",
    "DESCRIPTION",
]
# The quotas of NamespaceQuotas: the option that sets each, what it limits (for --help) and
# its label where it is shown.
QUOTAS = [
    (
        "max_enforced_policies",
        "--max-enforced-policies",
        "policies enforced or in dry run",
        "enforced policies",
    ),
    ("max_signals_per_second", "--max-signals-per-second", "signals per second", "signals/s"),
    ("max_open_tasks", "--max-open-tasks", "open tasks", "open tasks"),
    (
        "rate_limit_per_second",
        "--rate-limit",
        "calls per second per caller and method",
        "rate limit/s",
    ),
]
INT32_MAX = 2**31 - 1


def namespace_state_name(value: int) -> str:
    """ACTIVE, DELETING (or UNSPECIFIED)."""
    return governor_pb2.NamespaceState.Name(value).removeprefix("NAMESPACE_STATE_")  # type: ignore[arg-type]


def format_quota(value: int) -> str:
    """A limit as shown: 0 follows the installation's default (TAI_NAMESPACE_MAX_*)."""
    return str(value) if value else "default"


def _name_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return check_namespace_name(value, "'NAME'")


def quota_options(function: F) -> F:
    """The four quota options, each an int32 of 0 or more (0: the installation's default)."""
    for field, option, what, _ in reversed(QUOTAS):
        function = click.option(
            option,
            field,
            type=click.IntRange(0, INT32_MAX),
            default=0,
            help=f"At most this many {what} (0: the installation's default).",
        )(function)
    return function


def quotas_of(
    max_enforced_policies: int,
    max_signals_per_second: int,
    max_open_tasks: int,
    rate_limit_per_second: int,
) -> governor_pb2.NamespaceQuotas:
    """The NamespaceQuotas message of the quota options' values."""
    return governor_pb2.NamespaceQuotas(
        max_enforced_policies=max_enforced_policies,
        max_signals_per_second=max_signals_per_second,
        max_open_tasks=max_open_tasks,
        rate_limit_per_second=rate_limit_per_second,
    )


def _quotas_text(quotas: governor_pb2.NamespaceQuotas) -> str:
    return ", ".join(
        f"{label} {format_quota(getattr(quotas, field))}" for field, _, _, label in QUOTAS
    )


def _namespace_row(n: governor_pb2.Namespace) -> list[str]:
    q = n.quotas
    return [
        n.name,
        namespace_state_name(n.state),
        format_quota(q.max_enforced_policies),
        format_quota(q.max_signals_per_second),
        format_quota(q.max_open_tasks),
        format_quota(q.rate_limit_per_second),
        format_ns(n.created_at_ns),
        n.description or "-",
    ]


def _print_namespace(ctx: CliContext, n: governor_pb2.Namespace) -> None:
    if ctx.json_output:
        print_json(n)
        return
    q = n.quotas
    print_fields(
        [
            ("name", escape(n.name)),
            ("state", namespace_state_name(n.state)),
            ("description", escape(n.description) or "-"),
            ("enforced policies", format_quota(q.max_enforced_policies)),
            ("signals/s", format_quota(q.max_signals_per_second)),
            ("open tasks", format_quota(q.max_open_tasks)),
            ("rate limit/s", format_quota(q.rate_limit_per_second)),
            ("created", f"{format_ns(n.created_at_ns)} by {escape(n.created_by or '-')}"),
            ("updated", format_ns(n.updated_at_ns)),
        ]
    )


@cli.group()
def namespace() -> None:
    """Create, list, inspect, limit and delete namespaces (one a team).

    Creating, changing and deleting a namespace needs the admin role in every namespace; the
    other commands work in the namespace given by the global --namespace/-n option."""


@namespace.command()
@click.argument("name", callback=_name_argument)
@click.option("--description", default="", help="What the namespace is for.")
@quota_options
@pass_context
def create(
    ctx: CliContext,
    name: str,
    description: str,
    max_enforced_policies: int,
    max_signals_per_second: int,
    max_open_tasks: int,
    rate_limit_per_second: int,
) -> None:
    """Create the namespace NAME (lowercase letters, digits and single hyphens, starting with a
    letter, at most 40 characters), with the quotas given (the others follow the
    installation's defaults)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> governor_pb2.Namespace:
        return await GovernorClient(channel, options).create_namespace(
            name,
            description=description,
            quotas=quotas_of(
                max_enforced_policies, max_signals_per_second, max_open_tasks, rate_limit_per_second
            ),
        )

    n = ctx.run("governor", call)
    if ctx.json_output:
        print_json(n)
        return
    console.print(
        f"namespace [bold]{escape(n.name)}[/bold] {namespace_state_name(n.state)} (quotas: "
        f"{escape(_quotas_text(n.quotas))}); use it with taictl -n {escape(n.name)} …",
        highlight=False,
    )


@namespace.command(name="list")
@pass_context
def list_namespaces(ctx: CliContext) -> None:
    """List the namespaces you hold a role in (every one when authentication is off)."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[governor_pb2.Namespace]:
        return await GovernorClient(channel, options).list_namespaces()

    namespaces = ctx.run("governor", call)
    if ctx.json_output:
        for n in namespaces:
            print_json(n)
        return
    print_rows(
        NAMESPACE_COLUMNS,
        [_namespace_row(n) for n in namespaces],
        title=plural(len(namespaces), "namespace"),
    )


@namespace.command()
@click.argument("name", callback=_name_argument)
@pass_context
def get(ctx: CliContext, name: str) -> None:
    """Show one namespace: its state, quotas and who created it."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> governor_pb2.Namespace:
        return await GovernorClient(channel, options).get_namespace(name)

    _print_namespace(ctx, ctx.run("governor", call))


@namespace.command()
@click.argument("name", callback=_name_argument)
@quota_options
@pass_context
def quotas(
    ctx: CliContext,
    name: str,
    max_enforced_policies: int,
    max_signals_per_second: int,
    max_open_tasks: int,
    rate_limit_per_second: int,
) -> None:
    """Replace all four quotas of the namespace NAME (SetNamespaceQuotas).

    Every quota is replaced, not only those given: an option left out is set to 0, which
    follows the installation's default (TAI_NAMESPACE_MAX_*; 0 there too means unlimited).
    Give each limit you want to keep."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> governor_pb2.Namespace:
        return await GovernorClient(channel, options).set_namespace_quotas(
            name,
            quotas_of(
                max_enforced_policies, max_signals_per_second, max_open_tasks, rate_limit_per_second
            ),
        )

    n = ctx.run("governor", call)
    if ctx.json_output:
        print_json(n)
        return
    console.print(
        f"namespace [bold]{escape(n.name)}[/bold] quotas: {escape(_quotas_text(n.quotas))}",
        highlight=False,
    )


@namespace.command()
@click.argument("name", callback=_name_argument)
@click.option(
    "--force",
    is_flag=True,
    help="Delete it with everything it holds (policies, signals, actions, tasks, silences), "
    "in the background. Asks for confirmation unless --yes.",
)
@click.option(
    "--yes",
    "-y",
    "assume_yes",
    is_flag=True,
    help="With --force: do not ask. Needed when stdin is not a terminal.",
)
@pass_context
def delete(ctx: CliContext, name: str, force: bool, assume_yes: bool) -> None:
    """Delete the namespace NAME.

    Without --force, a namespace that still holds anything is refused (FAILED_PRECONDITION).
    With --force, taictl asks for confirmation (unless --yes); the namespace then refuses every
    call (state DELETING) while its data is deleted in the background."""
    if force and not assume_yes:
        if not stdin_is_terminal():
            raise click.ClickException(
                f"deleting namespace {name} with --force asks for confirmation, but stdin is "
                "not a terminal: pass --yes to delete without asking"
            )
        if not click.confirm(
            f"Delete namespace {name} and everything in it (policies, signals, actions, tasks, "
            "silences)?",
            default=False,
            err=True,
        ):
            error_console.print(f"namespace {escape(name)} not deleted")
            sys.exit(1)

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> governor_pb2.Namespace:
        return await GovernorClient(channel, options).delete_namespace(name, force=force)

    n = ctx.run("governor", call)
    if ctx.json_output:
        print_json(n)
        return
    if n.state == governor_pb2.NAMESPACE_STATE_DELETING:
        what = "DELETING: it refuses every call while its data is deleted in the background"
    else:
        what = "deleted"
    console.print(f"namespace [bold]{escape(n.name or name)}[/bold] {what}", highlight=False)
