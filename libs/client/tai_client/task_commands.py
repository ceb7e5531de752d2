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
TASK_COLUMNS = ["ID", "TYPE", "STATUS", "PRIORITY", "NEXT RUN", "ATTEMPTS", "PARENT", "ERROR"]
_STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "dim",
}


def overlap_name(value: int) -> str:
    for name, number in OVERLAP.items():
        if number == value:
            return name
    return "-"


def parse_time(value: str) -> int:
    """`--at`: an ISO 8601 time (UTC unless it says otherwise) or Unix seconds, in ns."""
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 time (2025-01-31T09:00:00Z) or Unix seconds, got {value!r}",
            param_hint="--at",
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
        _styled(t.status),
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
    if t.cron_schedule:
        fields.append(
            ("schedule", f"{t.cron_schedule} (UTC), overlap {overlap_name(t.overlap_policy)}")
        )
    if t.parent_task_id:
        fields.append(("recurring task", t.parent_task_id))
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
    help="Recurring: cron expression in UTC (5 fields, or 6 with seconds first).",
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
