"""`taictl task …`: the Scheduler's tasks."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click
import grpc
from tai.v1 import common_pb2, scheduler_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, parse_pairs, pass_context
from tai_client.output import (
    console,
    format_map,
    format_ns,
    print_fields,
    print_json,
    print_table,
)
from tai_client.scheduler import SchedulerClient

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
OVERLAP = {
    "skip": scheduler_pb2.OVERLAP_POLICY_SKIP,
    "buffer-one": scheduler_pb2.OVERLAP_POLICY_BUFFER_ONE,
}
# A backfill may also run every occurrence, one after another.
BACKFILL_OVERLAP = {**OVERLAP, "buffer-all": scheduler_pb2.OVERLAP_POLICY_BUFFER_ALL}
TASK_COLUMNS = ["ID", "TYPE", "STATUS", "PRIORITY", "NEXT RUN", "ATTEMPTS", "PARENT", "ERROR"]
_STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "dim",
}


def overlap_name(value: int) -> str:
    for name, number in BACKFILL_OVERLAP.items():
        if number == value:
            return name
    return "-"


def parse_time(value: str, option: str = "--at") -> int:
    """An ISO 8601 time (UTC unless it says otherwise) or Unix seconds, in ns."""
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 time (2025-01-31T09:00:00Z) or Unix seconds, got {value!r}",
            param_hint=option,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1e9)


def _styled(status: str, width: int = 0) -> str:
    style = _STATUS_STYLE.get(status)
    text = f"{status:<{width}}"
    return f"[{style}]{text}[/{style}]" if style else text


@cli.group()
def task() -> None:
    """Submit, cancel, inspect and watch scheduled tasks."""


def _print_receipt(ctx: CliContext, receipt: common_pb2.Receipt, verb: str) -> None:
    if ctx.json_output:
        print_json(receipt)
        return
    status = receipt.result_data.get("status", "?")
    due = int(receipt.result_data.get("next_run_ns", "0") or 0)
    when = f", due {format_ns(due)} UTC" if status == "pending" and due else ""
    console.print(
        f"{verb} task [bold]{receipt.resource_id}[/bold] → {_styled(status)}{when} "
        f"({receipt.execution_time_us} µs)"
    )


def _task_row(t: scheduler_pb2.TaskStatus) -> list[str]:
    return [
        t.task_id,
        t.task_type,
        _styled(t.status) + (" [yellow](paused)[/yellow]" if t.paused else ""),
        str(t.priority),
        format_ns(t.next_run_ns) if t.status == "pending" else "-",
        str(len(t.attempts)),
        t.parent_task_id or "-",
        (t.error_message[:60] + "…") if len(t.error_message) > 60 else (t.error_message or "-"),
    ]


def _print_task(ctx: CliContext, t: scheduler_pb2.TaskStatus) -> None:
    if ctx.json_output:
        print_json(t)
        return
    retry = t.retry
    fields = [
        ("id", t.task_id),
        ("type", t.task_type),
        ("status", _styled(t.status)),
        ("priority", str(t.priority)),
        ("parameters", format_map(t.parameters)),
        ("scheduled", format_ns(t.scheduled_time_ns)),
        ("next run", format_ns(t.next_run_ns) if t.status == "pending" else "-"),
        ("started", format_ns(t.started_at_ns)),
        ("finished", format_ns(t.completed_at_ns)),
        ("result", format_map(t.result)),
        ("error", t.error_message or "-"),
        (
            "retry",
            f"{retry.max_attempts} attempts, backoff {retry.min_backoff_ms}–"
            f"{retry.max_backoff_ms} ms, {retry.max_doublings} doublings",
        ),
        ("attempt timeout", f"{t.timeout_seconds}s"),
        ("created", f"{format_ns(t.created_at_ns)} by {t.created_by or '-'}"),
    ]
    if t.cron_schedule and not t.parent_task_id:
        fields.extend(_schedule_fields(t))
    if t.parent_task_id:
        origin = f" ({t.run_origin})" if t.run_origin else ""
        fields.append(("recurring task", f"{t.parent_task_id}{origin}"))
    print_fields(fields)
    if t.attempts:
        print_table(
            ["#", "STARTED", "ENDED", "OUTCOME", "WORKER", "ERROR"],
            t.attempts,
            lambda a: [
                str(a.attempt),
                format_ns(a.started_at_ns),
                format_ns(a.ended_at_ns),
                a.outcome or "running",
                a.worker,
                a.error_message or "-",
            ],
            title="attempts",
        )


def _schedule_fields(t: scheduler_pb2.TaskStatus) -> list[tuple[str, str]]:
    catchup = (
        f"{t.catchup_window_seconds}s" if t.catchup_window_seconds else "the latest missed run"
    )
    fields = [
        (
            "schedule",
            f"{t.cron_schedule} ({t.time_zone or 'UTC'}), overlap "
            f"{overlap_name(t.overlap_policy)}, catch-up {catchup}",
        )
    ]
    if t.paused:
        note = f": {t.pause_note}" if t.pause_note else ""
        fields.append(
            ("paused", f"[yellow]by {t.paused_by or '-'} at {format_ns(t.paused_at_ns)}{note}[/]")
        )
    elif t.resumed_at_ns:
        note = f": {t.resume_note}" if t.resume_note else ""
        fields.append(
            ("resumed", f"by {t.resumed_by or '-'} at {format_ns(t.resumed_at_ns)}{note}")
        )
    if t.skipped_runs:
        fields.append(("skipped runs", format_map(t.skipped_runs)))
    if t.HasField("backfill"):
        b = t.backfill
        fields.append(
            (
                "backfill",
                f"{b.remaining} left, next {format_ns(b.next_ns)}, until {format_ns(b.end_ns)} "
                f"(by {b.requested_by or '-'})",
            )
        )
    return fields


@task.command()
@click.argument("task_type")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Task parameter.")
@click.option("--id", "task_id", default="", help="The task's id (generated when omitted).")
@click.option("--at", "at", default="", help="When to run: ISO 8601 time or Unix seconds.")
@click.option("--in", "in_seconds", type=float, default=None, help="Run in this many seconds.")
@click.option("--priority", default=0, help="1–10, higher first among due tasks (default 5).")
@click.option(
    "--cron",
    default="",
    help="Recurring: cron expression (5 fields, or 6 with seconds first), in --time-zone.",
)
@click.option(
    "--time-zone",
    default="",
    help="Recurring: IANA time zone of the cron fields, e.g. Europe/Paris (default UTC).",
)
@click.option(
    "--catchup",
    "catchup_seconds",
    default=0,
    help="Recurring: after an outage, missed runs at most this many seconds old run "
    "(default: only the latest missed run; else 10 s to 366 days).",
)
@click.option(
    "--overlap",
    type=click.Choice(sorted(OVERLAP)),
    default="skip",
    show_default=True,
    help="Recurring: what a fire does while the previous run is unfinished.",
)
@click.option("--max-attempts", default=0, help="Attempts in all (default 3).")
@click.option("--min-backoff-ms", default=0, help="First retry's backoff (default 1000).")
@click.option("--max-backoff-ms", default=0, help="Longest backoff (default 60000).")
@click.option("--max-doublings", default=0, help="Doublings before linear growth (default 16).")
@click.option("--attempt-timeout", default=0, help="Seconds one attempt may take (default 60).")
@pass_context
def submit(
    ctx: CliContext,
    task_type: str,
    params: tuple[str, ...],
    task_id: str,
    at: str,
    in_seconds: float | None,
    priority: int,
    cron: str,
    time_zone: str,
    catchup_seconds: int,
    overlap: str,
    max_attempts: int,
    min_backoff_ms: int,
    max_backoff_ms: int,
    max_doublings: int,
    attempt_timeout: int,
) -> None:
    """Submit a task of TASK_TYPE (enforce_policy, revoke_policy, request_action, or a
    plug-in's), now, at a time, or on a cron schedule."""
    if at and in_seconds is not None:
        raise click.UsageError("give --at or --in, not both")
    scheduled = parse_time(at) if at else 0
    if in_seconds is not None:
        scheduled = time.time_ns() + int(in_seconds * 1e9)
    parameters = parse_pairs(params, "--param")
    retry = scheduler_pb2.RetryConfig(
        max_attempts=max_attempts,
        min_backoff_ms=min_backoff_ms,
        max_backoff_ms=max_backoff_ms,
        max_doublings=max_doublings,
    )

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).submit(
            task_type=task_type,
            parameters=parameters,
            task_id=task_id,
            scheduled_time_ns=scheduled,
            priority=priority,
            retry=retry,
            cron_schedule=cron,
            overlap_policy=OVERLAP[overlap] if cron else scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED,
            timeout_seconds=attempt_timeout,
            time_zone=time_zone,
            catchup_window_seconds=catchup_seconds,
        )

    _print_receipt(ctx, ctx.run("scheduler", call), "submitted")


@task.command()
@click.argument("task_id")
@click.option("--reason", default="")
@pass_context
def cancel(ctx: CliContext, task_id: str, reason: str) -> None:
    """Cancel a pending or running task (a recurring one stops, with its pending runs)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).cancel(task_id, reason=reason)

    _print_receipt(ctx, ctx.run("scheduler", call), "cancelled")


@task.command()
@click.argument("task_id")
@pass_context
def get(ctx: CliContext, task_id: str) -> None:
    """Show one task, with every attempt."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> scheduler_pb2.TaskStatus:
        return await SchedulerClient(channel, options).get(task_id)

    _print_task(ctx, ctx.run("scheduler", call))


@task.command(name="list")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--type", "task_type", default="", help="Only this task type.")
@click.option(
    "--parent", "parent_task_id", default="", help="Only the runs of this recurring task."
)
@pass_context
def list_tasks(ctx: CliContext, status: str | None, task_type: str, parent_task_id: str) -> None:
    """List tasks, newest first."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[scheduler_pb2.TaskStatus]:
        client = SchedulerClient(channel, options)
        return [
            t
            async for t in client.list_all(
                status=status or "", task_type=task_type, parent_task_id=parent_task_id
            )
        ]

    tasks = ctx.run("scheduler", call)
    if ctx.json_output:
        for t in tasks:
            print_json(t)
        return
    print_table(TASK_COLUMNS, tasks, _task_row, title=f"{len(tasks)} tasks")


@task.command()
@click.argument("task_id", required=False, default="")
@pass_context
def watch(ctx: CliContext, task_id: str) -> None:
    """Follow one task until it finishes, or (without TASK_ID) every task (Ctrl-C to stop)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> Any:
        async for update in SchedulerClient(channel, options).watch(task_id):
            if ctx.json_output:
                print_json(update)
            else:
                console.print(
                    f"{format_ns(update.timestamp_ns)}  {update.task_id}  "
                    f"{_styled(update.status, 9)}  #{update.attempt}  {update.message}"
                )

    ctx.run("scheduler", call)


@task.command()
@click.argument("task_id")
@click.option("--note", default="", help="Why (shown with the task).")
@pass_context
def pause(ctx: CliContext, task_id: str, note: str) -> None:
    """Pause a recurring task: it fires nothing until resumed; its runs not yet started are
    cancelled (a run executing goes on)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).pause(task_id, note=note)

    receipt = ctx.run("scheduler", call)
    if ctx.json_output:
        print_json(receipt)
        return
    cancelled = int(receipt.result_data.get("cancelled_runs", "0") or 0)
    also = f"; {cancelled} waiting runs cancelled" if cancelled else ""
    console.print(f"paused [bold]{task_id}[/bold]{also}")


@task.command()
@click.argument("task_id")
@click.option("--note", default="", help="Why (shown with the task).")
@pass_context
def resume(ctx: CliContext, task_id: str, note: str) -> None:
    """Resume a paused recurring task from now (what came due while paused is skipped)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).resume(task_id, note=note)

    receipt = ctx.run("scheduler", call)
    if ctx.json_output:
        print_json(receipt)
        return
    skipped = receipt.result_data.get("skipped_while_paused", "0")
    if receipt.result_data.get("skipped_counting") == "true":
        skipped += " or more"
    due = int(receipt.result_data.get("next_run_ns", "0") or 0)
    console.print(
        f"resumed [bold]{task_id}[/bold]: next run {format_ns(due)} UTC "
        f"({skipped} skipped while paused)"
    )


@task.command()
@click.argument("task_id")
@pass_context
def trigger(ctx: CliContext, task_id: str) -> None:
    """Run one occurrence of a recurring task now, under its overlap policy (its cadence does
    not move)."""

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).trigger(task_id)

    receipt = ctx.run("scheduler", call)
    if ctx.json_output:
        print_json(receipt)
        return
    outcome = receipt.result_data.get("outcome", "?")
    if outcome == "skipped":
        console.print(
            f"[yellow]skipped[/yellow]: {receipt.result_data.get('reason', '')}", highlight=False
        )
        return
    run = receipt.result_data.get("run_task_id", "")
    how = "started" if outcome == "started" else "waiting for the unfinished run"
    console.print(f"triggered [bold]{run}[/bold] ({how})")


@task.command()
@click.argument("task_id")
@click.option("--start", "start", required=True, help="From (included): ISO 8601 or Unix seconds.")
@click.option("--end", "end", required=True, help="Until (excluded): ISO 8601 or Unix seconds.")
@click.option(
    "--overlap",
    type=click.Choice(sorted(BACKFILL_OVERLAP)),
    default=None,
    help="Default: the schedule's own. buffer-all runs every occurrence, one after another; "
    "skip and buffer-one offer them all at once, so most are skipped while one runs.",
)
@pass_context
def backfill(ctx: CliContext, task_id: str, start: str, end: str, overlap: str | None) -> None:
    """Run the occurrences of a recurring task between two times that have no run yet (at
    most 1000; each occurrence runs once)."""
    start_ns, end_ns = parse_time(start, "--start"), parse_time(end, "--end")
    policy = BACKFILL_OVERLAP[overlap] if overlap else scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED

    async def call(channel: grpc.aio.Channel, options: ChannelOptions) -> common_pb2.Receipt:
        return await SchedulerClient(channel, options).backfill(
            task_id, start_ns=start_ns, end_ns=end_ns, overlap_policy=policy
        )

    receipt = ctx.run("scheduler", call)
    if ctx.json_output:
        print_json(receipt)
        return
    data = receipt.result_data
    console.print(
        f"backfill of [bold]{task_id}[/bold] ({data.get('overlap_policy', '?')}): "
        f"{data.get('occurrences', '0')} occurrences, {data.get('already_run', '0')} already "
        f"run, {data.get('started', '0')} started, {data.get('waiting', '0')} waiting, "
        f"{data.get('skipped', '0')} skipped"
    )
    if data.get("skipped", "0") != "0":
        console.print("[dim]--overlap buffer-all runs every occurrence, one after another[/dim]")


@task.command()
@click.argument("task_id")
@click.option("--count", default=10, show_default=True, help="How many (at most 100).")
@pass_context
def upcoming(ctx: CliContext, task_id: str, count: int) -> None:
    """List the next runs of a recurring task, in UTC and in its time zone."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> scheduler_pb2.ListUpcomingRunsResponse:
        return await SchedulerClient(channel, options).upcoming(task_id, count=count)

    response = ctx.run("scheduler", call)
    if ctx.json_output:
        for run in response.runs:
            print_json(run)
        return
    title = f"next runs of {task_id} ({response.time_zone})"
    if response.paused:
        title += ", paused: where it would fire if resumed now"
    print_table(
        ["UTC", "LOCAL", "RUN ID"],
        response.runs,
        lambda r: [format_ns(r.scheduled_time_ns), r.local_time, r.run_task_id],
        title=title,
    )
