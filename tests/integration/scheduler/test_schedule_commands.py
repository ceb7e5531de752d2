"""`taictl task submit --cron … --time-zone --catchup`, `task upcoming|pause|resume|trigger|
backfill` against a real Scheduler over gRPC (each command runs in a worker thread with its
own event loop, as the real CLI does)."""

from __future__ import annotations

from pathlib import Path

from click.testing import Result
from scheduler_helpers import RunningScheduler, eventually
from support.cli import json_lines
from support.cli import taictl as run_taictl
from tai_client import task_commands  # noqa: F401  (registers the `task` group)


async def taictl(scheduler: RunningScheduler, *args: str) -> Result:
    return await run_taictl("--target", scheduler.target, *args)


async def test_a_schedule_from_the_command_line(scheduler: RunningScheduler, ledger: Path) -> None:
    submitted = await taictl(
        scheduler,
        "task",
        "submit",
        "test_record",
        "--id",
        "nightly",
        "--param",
        f"ledger={ledger}",
        "--cron",
        "30 2 * * *",
        "--time-zone",
        "Europe/Paris",
        "--catchup",
        "3600",
        "--at",
        "2027-10-30T12:00:00Z",
    )
    assert submitted.exit_code == 0, submitted.output

    upcoming = await taictl(scheduler, "task", "upcoming", "nightly", "--count", "2")
    assert upcoming.exit_code == 0, upcoming.output
    for text in ("Europe/Paris", "2027-10-31T02:30:00+02:00", "nightly-20271031T003000Z"):
        assert text in upcoming.output
    rows = json_lines(await taictl(scheduler, "--json", "task", "upcoming", "nightly"))
    assert len(rows) == 10
    assert rows[1]["local_time"] == "2027-11-01T02:30:00+01:00"

    paused = await taictl(scheduler, "task", "pause", "nightly", "--note", "quarter close")
    assert paused.exit_code == 0, paused.output
    assert "paused nightly" in paused.output
    shown = await taictl(scheduler, "task", "get", "nightly")
    for text in ("30 2 * * * (Europe/Paris)", "catch-up 3600s", "by anonymous", "quarter close"):
        assert text in shown.output
    again = await taictl(scheduler, "task", "pause", "nightly")
    assert again.exit_code != 0
    assert "already paused" in again.output

    triggered = await taictl(scheduler, "--json", "task", "trigger", "nightly")
    assert triggered.exit_code == 0, triggered.output
    [receipt] = json_lines(triggered)
    assert receipt["result_data"]["outcome"] == "started"
    await eventually(
        lambda: scheduler.client.get(receipt["result_data"]["run_task_id"]),
        lambda task: task.status == "completed",
    )

    resumed = await taictl(scheduler, "task", "resume", "nightly", "--note", "closed")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed nightly" in resumed.output

    backfilled = await taictl(
        scheduler,
        "task",
        "backfill",
        "nightly",
        "--start",
        "2026-03-27T00:00:00Z",
        "--end",
        "2026-03-30T00:00:00Z",
        "--overlap",
        "buffer-all",
    )
    assert backfilled.exit_code == 0, backfilled.output
    assert "3 occurrences, 0 already run, 1 started, 2 waiting, 0 skipped" in backfilled.output

    async def completed() -> set[str]:
        runs = scheduler.client.list_all(parent_task_id="nightly", status="completed")
        return {t.task_id async for t in runs}

    # 02:30 on 29 March is 03:00 CEST, the end of the gap: 01:00 UTC.
    expected = {f"nightly-202603{d}" for d in ("27T013000Z", "28T013000Z", "29T010000Z")}
    await eventually(completed, lambda ids: expected <= ids)

    bad = await taictl(scheduler, "task", "submit", "test_record", "--time-zone", "Paris")
    assert bad.exit_code != 0
    assert "time_zone" in bad.output
