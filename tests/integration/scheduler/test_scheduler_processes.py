"""Scheduler processes sharing one SQLite store and bus, as replicas would: SIGTERM lets
running attempts finish within the grace period or releases them to another replica, and a
replica that stalls past its lease cannot overwrite the result of the replica that took over
(fencing)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scheduler_helpers import wait_status
from support.processes import ServiceProcess
from tai_client import open_channel
from tai_client.scheduler import SchedulerClient
from tai_test_executors import ledger as test_ledger

pytestmark = pytest.mark.slow

MakeProcess = Callable[..., ServiceProcess]


def settings(sqlite_url: str, ledger: Path, **extra: str) -> dict[str, str]:
    return {
        "TAI_STORE": sqlite_url,
        "TAI_BUS": sqlite_url,
        "TAI_SQLITE_SYNCHRONOUS": "NORMAL",
        "TAI_TEST_LEDGER": str(ledger),
        **extra,
    }


def all_threads_stopped(pid: int) -> bool:
    """True once every thread of `pid` is in the stopped state (SIGSTOP lands asynchronously)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread exited meanwhile
            continue
        # The state is the field after the parenthesised command name.
        if stat.rsplit(")", 1)[1].split()[0] != "T":
            return False
    return True


def holds_no_write_lock(sqlite_url: str, ledger: Path) -> bool:
    """True when nobody holds the store's write flock or the ledger's SQLite write lock."""
    lock_path = f"{sqlite_url.removeprefix('sqlite:///')}-writelock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    # timeout=0: a lock held by anyone (RESERVED for a write, EXCLUSIVE for the switch to WAL
    # or the checkpoint of a last connection closing) fails at once instead of waiting.
    probe = sqlite3.connect(ledger, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def freeze_between_writes(pid: int, sqlite_url: str, ledger: Path) -> None:
    """SIGSTOPs `pid` at a moment it holds no write lock on the files it shares.

    A process frozen mid-transaction would keep the embedded store's write lock (the flock
    beside the database), or the test ledger's SQLite lock, and stall every other process,
    which is not the fault under test: the fault is a replica that stalls past its lease
    between writes, as a long GC pause or a preempted VM would. So stop, probe both locks
    without blocking, and resume and retry if the frozen process holds one."""
    while True:
        os.kill(pid, signal.SIGSTOP)
        while not all_threads_stopped(pid):
            time.sleep(0.001)
        if holds_no_write_lock(sqlite_url, ledger):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)


async def test_sigterm_lets_a_running_attempt_finish(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    env = settings(sqlite_url, ledger, TAI_SHUTDOWN_GRACE_SECONDS="10")
    first = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-a", **env).start()
    async with open_channel(first.target) as channel:
        client = SchedulerClient(channel)
        receipt = await client.submit(task_type="test_sleep", parameters={"seconds": "1.5"})
        await wait_status(client, receipt.resource_id, ("running",))
    assert await asyncio.to_thread(first.terminate) == 0

    second = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-b", **env).start()
    async with open_channel(second.target) as channel:
        task = await SchedulerClient(channel).get(receipt.resource_id)
    assert task.status == "completed"
    assert [(a.worker, a.outcome) for a in task.attempts] == [("sched-a", "completed")]


async def test_sigterm_releases_what_cannot_finish_to_another_replica(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    env = settings(sqlite_url, ledger, TAI_SHUTDOWN_GRACE_SECONDS="0.5", TAI_LEASE_SECONDS="30")
    first = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-a", **env).start()
    async with open_channel(first.target) as channel:
        client = SchedulerClient(channel)
        # Long enough that the SIGTERM surely lands while it runs.
        receipt = await client.submit(task_type="test_sleep", parameters={"seconds": "5"})
        await wait_status(client, receipt.resource_id, ("running",))
    assert await asyncio.to_thread(first.terminate) == 0

    # The lease (30 s) has not lapsed: the task is free again because it was released.
    second = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-b", **env).start()
    async with open_channel(second.target) as channel:
        task = await wait_status(SchedulerClient(channel), receipt.resource_id, timeout=30)
    assert task.status == "completed"
    released, completed = task.attempts
    assert (released.worker, released.outcome) == ("sched-a", "lease_lost")
    assert "released" in released.error_message
    assert (completed.worker, completed.outcome) == ("sched-b", "completed")
    assert completed.started_at_ns < released.started_at_ns + 30 * 1_000_000_000


async def test_a_stalled_replica_cannot_overwrite_the_new_owners_result(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    test_ledger.connect(ledger).close()  # made (and in WAL mode) before any replica opens it
    env = settings(sqlite_url, ledger, TAI_LEASE_SECONDS="1.5")
    stalled = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-a", **env).start()
    async with open_channel(stalled.target) as channel:
        client = SchedulerClient(channel)
        # Long enough that the freeze surely lands while it runs.
        receipt = await client.submit(task_type="test_sleep", parameters={"seconds": "5"})
        await wait_status(client, receipt.resource_id, ("running",))
    assert stalled.process is not None
    await asyncio.to_thread(freeze_between_writes, stalled.process.pid, sqlite_url, ledger)
    try:
        other = await service_processes("tai_scheduler", TAI_REPLICA_ID="sched-b", **env).start()
        async with open_channel(other.target) as channel:
            client = SchedulerClient(channel)
            task = await wait_status(client, receipt.resource_id, timeout=30)
            assert task.status == "completed"
            assert [(a.worker, a.outcome) for a in task.attempts] == [
                ("sched-a", "lease_lost"),
                ("sched-b", "completed"),
            ]
            os.kill(stalled.process.pid, signal.SIGCONT)
            # The stalled replica wakes up holding a stale fencing token: whatever its attempt
            # does now, the task stays as the new owner left it.
            await asyncio.sleep(3)
            after = await client.get(receipt.resource_id)
    finally:
        os.kill(stalled.process.pid, signal.SIGCONT)
    assert after == task
    key = f"tai-task:{receipt.resource_id}"
    assert after.result["completion_id"] == test_ledger.completions(ledger)[key]
    assert after.result["completion_id"].startswith("sched-b:")
