"""Exactly once across replicas: three Scheduler processes share one SQLite store and bus and
run 500 tasks; one of them is killed with SIGKILL midway. Every task completes, and no
idempotency key is executed to completion twice.

The executor is the `test_record` plug-in (tests/plugins/executors): it records every attempt
in a ledger (a SQLite file shared by the processes) and is itself idempotent by key, as the
executor contract asks — an attempt of a key already completed returns the recorded result,
marked as a replay. What the Scheduler guarantees is checked against that ledger: each key has
one completion that is not a replay, the task's stored result is that completion, and a task
ran more than once only when a replica lost its lease on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.scenarios import MakeProcess, exactly_once_across_replicas

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)  # three process starts, then its own budget of 90 s for 500 tasks
async def test_every_task_completes_once_though_a_replica_is_killed(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    await exactly_once_across_replicas(
        service_processes,
        {"TAI_STORE": sqlite_url, "TAI_BUS": sqlite_url, "TAI_SQLITE_SYNCHRONOUS": "NORMAL"},
        tmp_path / "ledger.db",
        tasks_total=500,
    )
