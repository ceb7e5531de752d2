"""`taictl task …` against a real Scheduler over gRPC. The commands run in a worker thread
(each runs its own event loop, as the real CLI does) while the server runs in the test's."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import Result
from scheduler_helpers import NS, RunningScheduler, wait_status
from support.cli import json_lines
from support.cli import taictl as run_taictl
from tai_client import task_commands  # noqa: F401  (registers the `task` group)


async def taictl(scheduler: RunningScheduler, *args: str) -> Result:
    return await run_taictl("--target", scheduler.target, *args)


async def test_submit_get_list_watch_and_cancel(scheduler: RunningScheduler, ledger: Path) -> None:
    result = await taictl(
        scheduler,
        "--json",
        "task",
        "submit",
        "test_record",
        "--id",
        "cli-task",
        "--param",
        f"ledger={ledger}",
        "--priority",
        "8",
        "--max-attempts",
        "2",
    )
    assert result.exit_code == 0, result.output
    [receipt] = json_lines(result)
    assert receipt["resource_id"] == "cli-task"

    result = await taictl(scheduler, "--json", "task", "watch", "cli-task")
    assert result.exit_code == 0, result.output
    assert [u["status"] for u in json_lines(result)][-1] == "completed"

    result = await taictl(scheduler, "task", "get", "cli-task")
    assert result.exit_code == 0, result.output
    for text in ("cli-task", "test_record", "completed", "attempts", "OUTCOME"):
        assert text in result.output
    [task] = json_lines(await taictl(scheduler, "--json", "task", "get", "cli-task"))
    assert task["priority"] == 8
    assert task["retry"]["max_attempts"] == 2

    later = await taictl(
        scheduler, "task", "submit", "test_record", "--id", "cli-later", "--in", "60"
    )
    assert later.exit_code == 0, later.output
    assert "cli-later" in later.output
    assert "pending" in later.output

    listed = await taictl(scheduler, "task", "list", "--status", "pending")
    assert listed.exit_code == 0, listed.output
    assert "cli-later" in listed.output
    assert "cli-task" not in listed.output
    rows = json_lines(await taictl(scheduler, "--json", "task", "list"))
    assert [r["task_id"] for r in rows] == ["cli-later", "cli-task"]

    cancelled = await taictl(scheduler, "task", "cancel", "cli-later", "--reason", "no need")
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.output
    assert (await scheduler.client.get("cli-later")).error_message == "cancelled: no need"


async def test_recurring_submit_and_errors(scheduler: RunningScheduler) -> None:
    result = await taictl(
        scheduler,
        "task",
        "submit",
        "test_record",
        "--id",
        "cli-cron",
        "--cron",
        "0 3 * * *",
        "--overlap",
        "buffer-one",
    )
    assert result.exit_code == 0, result.output
    shown = await taictl(scheduler, "task", "get", "cli-cron")
    assert "0 3 * * * (UTC), overlap buffer-one" in shown.output

    bad = await taictl(scheduler, "task", "submit", "test_record", "--priority", "42")
    assert bad.exit_code == 1
    assert "INVALID_ARGUMENT: priority" in bad.stderr
    missing = await taictl(scheduler, "task", "cancel", "nope")
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.stderr
    both = await taictl(scheduler, "task", "submit", "test_record", "--at", "1", "--in", "1")
    assert both.exit_code == 2


async def test_submit_at_a_time(scheduler: RunningScheduler, ledger: Path) -> None:
    at = time.time_ns() + NS
    result = await taictl(
        scheduler,
        "task",
        "submit",
        "test_record",
        "--id",
        "cli-at",
        "--param",
        f"ledger={ledger}",
        "--at",
        f"{at / NS:.3f}",
    )
    assert result.exit_code == 0, result.output
    task = await wait_status(scheduler.client, "cli-at")
    assert task.status == "completed"
    assert abs(task.scheduled_time_ns - at) < 2_000_000
    assert task.started_at_ns >= task.scheduled_time_ns
