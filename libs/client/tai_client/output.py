"""How taictl prints: rich tables for people, JSON for scripts."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

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


def print_fields(pairs: Sequence[tuple[str, str]]) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        table.add_row(key, value)
    console.print(table)
