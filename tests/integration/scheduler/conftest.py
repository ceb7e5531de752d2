"""A real Scheduler server on an ephemeral port, in this test's event loop, over real gRPC.

Its executors are the built-ins and the test plug-ins of `tests/plugins/executors` (package
`tai_test_executors`, found through the `tai.task_executors` entry points like any plug-in).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scheduler_helpers import MakeScheduler, RunningScheduler
from support import inprocess
from support.running import RunningGovernor
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_common.runtime import Dependencies
from tai_scheduler.app import SchedulerSettings, create_app


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """The file the test executors record their attempts in."""
    return tmp_path / "ledger.db"


@pytest.fixture
async def make_scheduler(sqlite_url: str) -> AsyncIterator[MakeScheduler]:
    """Starts Schedulers on the test's SQLite store and bus (settings overridable), stopped at
    the end."""
    started: list[RunningScheduler] = []

    async def make(**overrides: Any) -> RunningScheduler:
        values: dict[str, Any] = {
            "auth": "off",
            "grpc_port": 0,
            "metrics_port": 0,
            "store": sqlite_url,
            "bus": sqlite_url,
            "replica_id": f"test-scheduler-{len(started)}",
            "shutdown_grace_seconds": 1.0,
            "max_message_bytes": 1024 * 1024,
            "lease_seconds": 3.0,
            "sqlite_synchronous": "NORMAL",
        }
        values.update(overrides)
        runtime = create_app(await Dependencies.open(SchedulerSettings(**values)))
        port = await runtime.start()
        target = f"127.0.0.1:{port}"
        channel = open_channel(target)
        running = RunningScheduler(runtime, channel, SchedulerClient(channel), target)
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in reversed(started):
            await running.channel.close()
            await running.runtime.stop()


@pytest.fixture
async def scheduler(make_scheduler: MakeScheduler) -> RunningScheduler:
    return await make_scheduler()


@pytest.fixture
async def governor(sqlite_url: str) -> AsyncIterator[RunningGovernor]:
    """A real Governor on the same store and bus as the Scheduler."""
    async with inprocess.governor(sqlite_url, sqlite_synchronous="NORMAL") as running:
        yield running
