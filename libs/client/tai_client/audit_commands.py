"""`taictl audit list|verify`: the suite's tamper-evident audit trail (admins only)."""

from __future__ import annotations

import click
import grpc
from tai.v1 import common_pb2, governor_pb2
from tai_rpc.channel import ChannelOptions

from tai_client.cli import CliContext, cli, pass_context
from tai_client.governor import GovernorClient
from tai_client.output import console, error_console, format_ns, print_json, print_table


@cli.group()
def audit() -> None:
    """Read and verify the audit trail."""


@audit.command(name="list")
@click.option("--after", "after_seq", default=0, help="Records after this sequence number.")
@click.option("--principal", default="", help="Only this caller's records.")
@click.option("--limit", default=100, show_default=True)
@pass_context
def list_records(ctx: CliContext, after_seq: int, principal: str, limit: int) -> None:
    """List audit records in chain order."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> list[common_pb2.AuditRecord]:
        client = GovernorClient(channel, options)
        found: list[common_pb2.AuditRecord] = []
        token = ""
        while len(found) < limit:
            page = await client.audit_page(
                after_seq=after_seq,
                principal=principal,
                page_size=min(1000, limit - len(found)),
                page_token=token,
            )
            found.extend(page.records)
            token = page.next_page_token
            if not token:
                break
        return found

    records = ctx.run("governor", call)
    if ctx.json_output:
        for record in records:
            print_json(record)
        return
    print_table(
        ["SEQ", "TIME", "PRINCIPAL", "ACTION", "RESOURCE", "OUTCOME", "SERVICE"],
        records,
        lambda r: [
            str(r.seq),
            format_ns(r.time_ns),
            r.principal,
            r.action.rsplit("/", 1)[-1] or "-",
            r.resource or "-",
            r.outcome,
            r.service,
        ],
        title=f"{len(records)} audit records",
    )


@audit.command()
@pass_context
def verify(ctx: CliContext) -> None:
    """Recompute the hash chain; exit status 2 and the first broken link if it was tampered
    with."""

    async def call(
        channel: grpc.aio.Channel, options: ChannelOptions
    ) -> governor_pb2.VerifyAuditLogResponse:
        return await GovernorClient(channel, options).verify_audit()

    result = ctx.run("governor", call)
    if ctx.json_output:
        print_json(result)
    elif result.intact:
        console.print(f"audit trail intact: {result.checked} records checked")
    else:
        error_console.print(
            f"[red]audit trail BROKEN[/red] at record {result.first_broken_seq}: "
            f"{result.reason} ({result.checked} records checked)"
        )
    if not result.intact:
        raise SystemExit(2)
