"""Reading the test executors' ledger (tests/plugins/executors): when each task's executor first
started, and how often. TAI's dispatch-lag scenario and the peers (bench/peers) record their
starts into the same ledger and read them back here, so each figure is taken the same way."""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from pathlib import Path

from tai_test_executors import ledger


def first_starts(path: str | Path, prefix: str) -> dict[str, int]:
    """task id → its first recorded start (ns), for the tasks whose id starts with `prefix`."""
    with closing(ledger.connect(path)) as conn:
        rows = conn.execute(
            "SELECT task_id, MIN(started_ns) FROM executions WHERE task_id LIKE ? GROUP BY task_id",
            (f"{prefix}%",),
        ).fetchall()
    return {str(task_id): int(started) for task_id, started in rows}


def executions_per_task(path: str | Path) -> dict[str, int]:
    """task id → how many times it was recorded as started."""
    with closing(ledger.connect(path)) as conn:
        rows = conn.execute("SELECT task_id, COUNT(*) FROM executions GROUP BY task_id").fetchall()
    return {str(task_id): int(count) for task_id, count in rows}


async def wait_for_starts(
    path: str | Path, prefix: str, n: int, timeout_s: float
) -> dict[str, int]:
    """Polls the ledger until `n` tasks of `prefix` have started; their first starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await asyncio.to_thread(first_starts, path, prefix)
        if len(found) >= n:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)} of {n} tasks ({prefix}…) started")
        await asyncio.sleep(0.2)
