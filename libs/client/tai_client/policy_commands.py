"""`taictl policy …`: the Governor's policy lifecycle, and rehearsing policies on the
Coordinator (`simulate`, and before `enforce`)."""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import grpc
from rich.markup import escape
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, parse_pairs, pass_context
from tai_client.coordinator import CoordinatorClient
from tai_client.errors import TaiError
from tai_client.governor import GovernorClient
from tai_client.output import (
    console,
    error_console,
    format_duration,
    format_map,
    format_ns,
    plural,
    print_error,
    print_fields,
    print_json,
    print_rows,
    print_table,
)

F = TypeVar("F", bound=Callable[..., Any])

# The most `max_seconds` a SimulatePolicy request may ask for.
SIMULATION_MAX_SECONDS = 1800

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
            ("limits", ", ".join(format_limit(limit) for limit in a.limits) or "-"),
            ("approval", format_approval(a) if a.action_type else "-"),
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


# The condition and action options `propose` and `simulate` share (a draft is described as a
# proposal would be).
condition_option = click.option(
    "--condition", default="", help="CEL over `signal`, e.g. signal.priority >= 8"
)

# `--limit MAX/WINDOW[:policy|:target]`: at most MAX actions in any WINDOW (a duration).
_LIMIT = re.compile(r"(?P<max>\d+)/(?P<window>[^:]+)(?::(?P<scope>policy|target))?")
_LIMIT_SCOPES = {
    "policy": governor_pb2.LIMIT_SCOPE_POLICY,
    "target": governor_pb2.LIMIT_SCOPE_TARGET,
}


def parse_limits(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[governor_pb2.ActionLimit]:
    """`--limit` values (3/10m, 5/1h:target) as the template's limits; a value of another
    form is a usage error naming --limit."""
    limits = []
    for value in values:
        match = _LIMIT.fullmatch(value.strip())
        window = duration_seconds(match["window"]) if match else None
        if match is None or not window or int(match["max"]) < 1:
            raise click.BadParameter(
                "expected MAX/WINDOW[:policy|:target], MAX at least 1 and WINDOW a duration "
                f"(3/10m, 5/1h:target), got {value!r}"
            )
        limits.append(
            governor_pb2.ActionLimit(
                max_actions=int(match["max"]),
                window_seconds=window,
                scope=_LIMIT_SCOPES[match["scope"] or "policy"],
            )
        )
    return limits


def parse_duration_option(_ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A duration option's seconds (0 when not given)."""
    return parse_duration(value, param.opts[0]) if value else 0


_ACTION_OPTIONS = (
    click.option("--action-type", default="", help="Type of the action to emit on a match."),
    click.option("--target-service", default="", help="Service that receives the action."),
    click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Action parameter."),
    click.option(
        "--cooldown", default=0, help="Seconds during which identical signals are deduped."
    ),
    click.option(
        "--limit",
        "limits",
        multiple=True,
        metavar="MAX/WINDOW[:target]",
        callback=parse_limits,
        help="At most MAX actions in any WINDOW (3/10m) of this policy; with :target, for its "
        "target service, counting every policy with the same :target limit. Repeatable.",
    ),
    click.option(
        "--require-approval",
        is_flag=True,
        help="Each action waits for `taictl action approve` before it is delivered.",
    ),
    click.option(
        "--approval-timeout",
        default="",
        metavar="DURATION",
        callback=parse_duration_option,
        help="How long an approval may take before the action expires (15m; default: the "
        "Coordinator's, one hour).",
    ),
)


def action_options(command: F) -> F:
    """Adds --action-type, --target-service, --param, --cooldown, --limit, --require-approval
    and --approval-timeout to `command`, in that order."""
    for option in reversed(_ACTION_OPTIONS):
        command = option(command)
    return command


def action_template(
    action_type: str,
    target_service: str,
    params: tuple[str, ...],
    cooldown: int,
    limits: list[governor_pb2.ActionLimit],
    require_approval: bool,
    approval_timeout: int,
) -> governor_pb2.ActionTemplate:
    """The action the options of `action_options` describe."""
    return governor_pb2.ActionTemplate(
        action_type=action_type,
        target_service=target_service,
        parameters=parse_pairs(params, "--param"),
        cooldown_seconds=cooldown,
        limits=limits,
        require_approval=require_approval,
        approval_timeout_seconds=approval_timeout,
    )


def format_limit(limit: governor_pb2.ActionLimit) -> str:
    """`3 per 10m (policy)`: a limit as `--limit` describes it."""
    scope = "target" if limit.scope == governor_pb2.LIMIT_SCOPE_TARGET else "policy"
    return f"{limit.max_actions} per {format_duration(limit.window_seconds)} ({scope})"


def format_approval(a: governor_pb2.ActionTemplate) -> str:
    """Whether the template's actions wait for approval, and how long they may wait."""
    if not a.require_approval:
        return "not required"
    if a.approval_timeout_seconds:
        return f"required, within {format_duration(a.approval_timeout_seconds)}"
    return "required, within the Coordinator's timeout"


@policy.command()
@click.option(
    "--type", "policy_type", required=False, default="", help="finance | security | operational"
)
@click.option("--name", default="", help="Policy name.")
@condition_option
@action_options
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
    limits: list[governor_pb2.ActionLimit],
    require_approval: bool,
    approval_timeout: int,
    rules: tuple[str, ...],
    description: str,
    disabled: bool,
    policy_id: str,
    expected_version: int,
    rollback_to: int,
    request_id: str,
) -> None:
    """Propose a policy, a new version of one (--id), or a rollback (--id --rollback-to N)."""
    action = action_template(
        action_type,
        target_service,
        params,
        cooldown,
        limits,
        require_approval,
        approval_timeout,
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
@click.option(
    "--yes",
    "-y",
    "assume_yes",
    is_flag=True,
    help="Enforce without asking (the rehearsal's summary is still printed). Needed when stdin "
    "is not a terminal.",
)
@click.option("--expected-version", default=0)
@click.option("--reason", default="")
@click.option("--request-id", default="")
@pass_context
def enforce(
    ctx: CliContext,
    policy_id: str,
    dry_run: bool,
    assume_yes: bool,
    expected_version: int,
    reason: str,
    request_id: str,
) -> None:
    """Enforce a policy (or put it in dry run).

    Before enforcing, the policy's latest version is rehearsed over the signals of the last hour
    (SimulatePolicy) and the summary printed; then taictl asks for confirmation, unless --yes.
    A rehearsal that fails is reported and does not prevent enforcing."""
    if not dry_run:
        if not assume_yes and not stdin_is_terminal():
            raise click.ClickException(
                f"enforcing policy {policy_id} asks for confirmation, but stdin is not a "
                "terminal: pass --yes to enforce without asking"
            )
        _rehearse_before_enforcing(ctx, policy_id)
        if not assume_yes and not click.confirm(
            f"Enforce policy {policy_id}?", default=False, err=True
        ):
            error_console.print(f"policy {policy_id} not enforced")
            sys.exit(1)

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await GovernorClient(channel, options).enforce(
            policy_id,
            expected_version=expected_version,
            dry_run=dry_run,
            reason=reason,
            request_id=request_id,
        )

    _print_receipt(ctx, ctx.run("governor", call), "dry-run" if dry_run else "enforced")


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin is not None and sys.stdin.isatty()


def _rehearse_before_enforcing(ctx: CliContext, policy_id: str) -> None:
    """Simulates the policy's latest version over the last hour and prints the summary (with
    --json, the response as one line); a failed simulation is reported on stderr, as a warning:
    enforcing does not depend on the Coordinator."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> coordinator_pb2.SimulatePolicyResponse | TaiError:
        try:
            # Within the per-call deadline (--timeout): the server stops scanning in time to
            # answer and reports how far it got.
            return await CoordinatorClient(channel, options).simulate_policy(
                policy_id=policy_id,
                max_seconds=min(SIMULATION_MAX_SECONDS, max(1, math.ceil(ctx.timeout))),
                timeout=ctx.timeout,
            )
        except TaiError as error:
            return error

    result = ctx.run("coordinator", call)
    if isinstance(result, TaiError):
        print_error(result, json_output=ctx.json_output)
        if not ctx.json_output:
            error_console.print(
                f"[yellow]warning[/yellow]: could not rehearse policy {escape(policy_id)} over "
                "the last hour (above); enforcing does not depend on it"
            )
        return
    if ctx.json_output:
        print_json(result)
        return
    print_simulation(
        result,
        last=0,
        incomplete_hint=f"taictl policy simulate {policy_id} --max-seconds N rehearses the "
        "whole hour",
    )


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


# A duration such as 90s, 15m, 1h or 1h30m. Hand-written: no dependency of the client parses
# durations, and the standard library has no parser for them.
_DURATION = re.compile(r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_NS = 1_000_000_000


def duration_seconds(value: str) -> int | None:
    """The seconds of a duration (90s, 15m, 1h30m, 2d); None when `value` is not one."""
    duration = _DURATION.fullmatch(value.strip())
    if not value.strip() or duration is None:
        return None
    return sum(
        int(amount) * _UNIT_SECONDS[unit] for unit, amount in duration.groupdict().items() if amount
    )


def parse_duration(value: str, option: str) -> int:
    """A duration option's seconds (more than zero)."""
    seconds = duration_seconds(value)
    if not seconds:
        raise click.BadParameter(
            f"expected a duration (90s, 15m, 1h30m, 2d), got {value!r}", param_hint=option
        )
    return seconds


def _parse_time(value: str, option: str, durations: str) -> int:
    """An ISO 8601 time (UTC unless it says otherwise) in ns since the epoch; `durations` says
    which durations the option also takes, for the error."""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"expected {durations} or an ISO 8601 time (2026-12-06T10:00:00Z), got {value!r}",
            param_hint=option,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000) * 1_000


def parse_moment(value: str, option: str, now_ns: int) -> int:
    """`--since` / `--until`: a duration back from now (1h, 30m, 1h30m, 2d) or an ISO 8601
    time (UTC unless it says otherwise), in ns since the epoch."""
    seconds = duration_seconds(value)
    if seconds is not None:
        return max(0, now_ns - seconds * _NS)
    return _parse_time(value, option, "a duration back from now (1h, 30m, 1h30m, 2d)")


def parse_moment_ahead(value: str, option: str, from_ns: int) -> int:
    """A time to come (a silence's start or end): a duration forward from `from_ns` (2h, 30m)
    or an ISO 8601 time (UTC unless it says otherwise), in ns since the epoch."""
    seconds = duration_seconds(value)
    if seconds is not None:
        return from_ns + seconds * _NS
    return _parse_time(value, option, "a duration ahead (2h, 30m, 1h30m, 1d)")


@policy.command()
@click.argument("policy_id", required=False, default="")
@click.option("--version", default=0, help="With POLICY_ID: this version (default: the latest).")
@condition_option
@action_options
@click.option(
    "--since", default="", help="Signals received since: 1h, 30m, or 2026-12-06T10:00:00Z."
)
@click.option("--until", default="", help="…and before (default: now); same forms as --since.")
@click.option("--last", default=0, help="The latest N signals instead of a time window.")
@click.option("--sample", "sample_size", default=0, help="Matching signals to show (default 10).")
@click.option("--max-seconds", default=0, help="Stop scanning after this long (default 30).")
@pass_context
def simulate(
    ctx: CliContext,
    policy_id: str,
    version: int,
    condition: str,
    action_type: str,
    target_service: str,
    params: tuple[str, ...],
    cooldown: int,
    limits: list[governor_pb2.ActionLimit],
    require_approval: bool,
    approval_timeout: int,
    since: str,
    until: str,
    last: int,
    sample_size: int,
    max_seconds: int,
) -> None:
    """Rehearse a stored policy (POLICY_ID) or a draft (--condition and the action options)
    over stored signals, as the Coordinator would have evaluated them, cooldowns included.
    Writes nothing. The window: --since/--until, or --last N; neither: the last hour."""
    draft_options = (
        condition
        or action_type
        or target_service
        or params
        or cooldown
        or limits
        or require_approval
        or approval_timeout
    )
    if policy_id and draft_options:
        raise click.UsageError(
            "give POLICY_ID or a draft (--condition and the action options), not both"
        )
    if not policy_id and not draft_options:
        raise click.UsageError("give POLICY_ID, or a draft: --condition and the action options")
    if version and not policy_id:
        raise click.UsageError("--version needs POLICY_ID")
    if last and (since or until):
        raise click.UsageError("give --last or --since/--until, not both")
    now_ns = time.time_ns()
    since_ns = parse_moment(since, "--since", now_ns) if since else 0
    until_ns = parse_moment(until, "--until", now_ns) if until else 0
    draft = (
        None
        if policy_id
        else coordinator_pb2.PolicyDraft(
            condition=condition,
            action=action_template(
                action_type,
                target_service,
                params,
                cooldown,
                limits,
                require_approval,
                approval_timeout,
            ),
        )
    )

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> coordinator_pb2.SimulatePolicyResponse:
        return await CoordinatorClient(channel, options).simulate_policy(
            draft=draft,
            policy_id=policy_id,
            version=version,
            since_ns=since_ns,
            until_ns=until_ns,
            last=last,
            sample_size=sample_size,
            max_seconds=max_seconds,
        )

    result = ctx.run("coordinator", call)
    if ctx.json_output:
        print_json(result)
        return
    print_simulation(
        result,
        last=last,
        incomplete_hint="narrow the window or pass --max-seconds",
    )


# Failed clauses shown, most frequent first.
TOP_FAILED_CLAUSES = 5


def print_simulation(
    result: coordinator_pb2.SimulatePolicyResponse,
    *,
    last: int,
    incomplete_hint: str,
) -> None:
    """A simulation's summary: the policy and window, what the signals came to, the first
    false clauses, the errors, the sample of matching signals and, when the deadline stopped
    the scan, a warning ending with `incomplete_hint`."""
    subject = f"policy {result.policy_id} v{result.policy_version}" if result.policy_id else "draft"
    window = f"{format_ns(result.window_since_ns)} → {format_ns(result.window_until_ns)}"
    scope = f"the last {last} signals, " if last else ""
    console.print(
        f"{subject}: {plural(result.signals_scanned, 'signal')} scanned in "
        f"{result.elapsed_seconds:.2f}s ({scope}received {window})",
        highlight=False,
    )
    targets = ", ".join(
        f"{escape(target)}: {count}"
        for target, count in sorted(result.actions_by_target.items(), key=lambda t: (-t[1], t[0]))
    )
    reasons = ", ".join(
        f"{reason}: {count}" for reason, count in sorted(result.held_by_reason.items())
    )
    console.print(
        f"  {result.matched} matched: would create {plural(result.actions, 'action')}"
        + (f" ({targets})" if targets else "")
        + f", {result.held} held back"
        + (f" ({reasons})" if reasons else ""),
        highlight=False,
    )
    console.print(f"  {result.not_matched} did not match", highlight=False)
    console.print(f"  {result.errors} failed to evaluate", highlight=False)
    if result.failed_clauses:
        clauses = sorted(result.failed_clauses.items(), key=lambda c: (-c[1], c[0]))
        print_rows(
            ["SIGNALS", "FIRST FALSE CLAUSE"],
            [[str(count), clause] for clause, count in clauses[:TOP_FAILED_CLAUSES]],
            title="why signals did not match",
        )
    if result.error_samples:
        print_rows(
            ["SIGNALS", "ERROR", "FIRST SIGNAL"],
            [[str(e.count), e.error, e.signal_id] for e in result.error_samples],
            title="evaluation errors",
        )
    if result.sample:
        print_rows(
            ["SIGNAL", "RECEIVED", "TYPE", "PRIORITY", "SOURCE", "METADATA"],
            [
                [
                    s.id,
                    format_ns(s.received_at_ns),
                    s.signal_type,
                    str(s.priority),
                    s.source or "-",
                    format_map(s.metadata),
                ]
                for s in result.sample
            ],
            title=f"first {plural(len(result.sample), 'matching signal')}",
        )
    if not result.complete:
        console.print(
            f"[bold yellow]warning[/bold yellow]: stopped at {format_ns(result.scanned_until_ns)} "
            f"after {result.elapsed_seconds:.1f}s: the deadline came first; "
            f"{escape(incomplete_hint)}. The counts above cover the signals up to then.",
            highlight=False,
        )
