"""Running `taictl` in tests: each command runs in a worker thread (with its own event loop,
as the real CLI does) while the servers run in the test's loop."""

from __future__ import annotations

import asyncio
import json
from typing import IO, Any

from click.testing import CliRunner, Result
from tai_client import (  # noqa: F401  (each import registers its command group)
    coordinator_commands,
    policy_commands,
    silence_commands,
    task_commands,
)
from tai_client.cli import cli


async def taictl(*args: str, stdin: str | IO[bytes] | None = None) -> Result:
    """`taictl ARGS…`, with `stdin` as its input."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli, list(args), input=stdin, catch_exceptions=False
    )


def json_lines(result: Result) -> list[dict[str, Any]]:
    """The JSON objects a `--json` command printed, one a line."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def row_of(output: str, text: str) -> str:
    """The one line of `output` that holds `text`."""
    [row] = [line for line in output.splitlines() if text in line]
    return row
