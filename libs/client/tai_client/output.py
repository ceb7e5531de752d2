"""How taictl prints: rich tables for people, JSON for scripts."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tai_client.errors import RateLimited, TaiError

# Piped output is not cut to 80 columns; a terminal gets its own width.
console = Console(width=None if sys.stdout.isatty() else 240, soft_wrap=True)
error_console = Console(stderr=True, soft_wrap=True)


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(message: Message) -> None:
    """One message as one JSON line (also the form `watch --json` streams)."""
    sys.stdout.write(json.dumps(as_dict(message), sort_keys=True) + "\n")
    sys.stdout.flush()


def format_ns(value: int) -> str:
    if not value:
        return "-"
    return dt.datetime.fromtimestamp(value / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: int) -> str:
    """`1h30m`, `10m`, `45s`, `2d`: seconds in the form taictl's duration options take."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def format_map(values: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dict(values).items())) or "-"


def print_table(
    columns: Sequence[str],
    rows: Iterable[Message],
    cells: Callable[[Any], Sequence[str]],
    title: str | None = None,
) -> None:
    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*cells(row))
    console.print(table)


def print_rows(
    columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None
) -> None:
    """A table of plain strings (shown as written: not read as rich markup)."""
    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table, highlight=False)


def plural(count: int, noun: str, nouns: str = "") -> str:
    """`1 action`, `4 actions`; `nouns` for a plural that is not noun + s."""
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def print_fields(pairs: Sequence[tuple[str, str]]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, value)
    console.print(table)


def print_error(error: TaiError, *, json_output: bool) -> None:
    """A failed call on stderr: the status code and message, then each field violation on a
    line of its own and, when the caller must wait, how long; with `json_output`, one JSON
    object `{"error": {...}}` instead."""
    if json_output:
        sys.stderr.write(json.dumps({"error": error.as_dict()}, sort_keys=True) + "\n")
        sys.stderr.flush()
        return
    # Messages name fields such as `parameters[action_id]`: not rich markup.
    lines = [f"[red]error[/red]: {error.code.name}: {escape(error.message)}"]
    lines += [f"  {escape(v.field)}: {escape(v.description)}" for v in error.field_violations]
    lines += [f"  {escape(v.subject)}: {escape(v.description)}" for v in error.quota_violations]
    if error.retry_after_seconds is not None:
        lines.append(f"  retry in {max(1, math.ceil(error.retry_after_seconds))}s")
    elif isinstance(error, RateLimited):
        lines.append("  rate limited: wait a moment, then retry")
    error_console.print("\n".join(lines), highlight=False)
