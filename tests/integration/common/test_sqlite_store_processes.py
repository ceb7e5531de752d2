"""The SQLite store shared by separate OS processes: no lost update, no lost commit."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from tai_common.sqlite import SqliteStore

pytestmark = pytest.mark.slow

# Generous bounds that only stop a hung test; nothing asserts on speed.
_HANG_S = 60.0

_INCREMENT = """
import asyncio, pathlib, sys
from tai_common.sqlite import SqliteStore

async def increment(tx):
    doc = await tx.get("counters", "c")
    tx.set("counters", "c", {"n": (doc.data["n"] if doc else 0) + 1})

async def main(path, ready, go, times):
    store = await SqliteStore.open(path, busy_timeout_ms=5000)
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():  # start together, so the processes contend
        await asyncio.sleep(0.005)
    for _ in range(times):
        await store.run_transaction(increment, max_attempts=100)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""

_WRITE_UNTIL_KILLED = """
import asyncio, itertools, sys
from tai_common.sqlite import SqliteStore

async def main(path):
    store = await SqliteStore.open(path)
    for i in itertools.count():
        await store.set("log", f"e{i}", {"i": i})

        async def pair(tx, i=i):
            tx.set("pairs", f"a{i}", {"i": i})
            tx.set("pairs", f"b{i}", {"i": i})

        await store.run_transaction(pair)
        print(i, flush=True)  # both writes of round i are committed

asyncio.run(main(sys.argv[1]))
"""


async def _wait_for_files(paths: list[Path], procs: list[asyncio.subprocess.Process]) -> None:
    for _ in range(int(_HANG_S / 0.01)):
        if all(p.exists() for p in paths):
            return
        if any(proc.returncode is not None for proc in procs):
            break
        await asyncio.sleep(0.01)
    raise AssertionError("the worker processes did not start")


async def test_processes_lose_no_update(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    go = tmp_path / "go"
    workers, times = 3, 40
    ready = [tmp_path / f"ready-{w}" for w in range(workers)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _INCREMENT,
            str(db),
            str(ready[w]),
            str(go),
            str(times),
            cwd=tmp_path,
            stderr=asyncio.subprocess.PIPE,
        )
        for w in range(workers)
    ]
    try:
        await _wait_for_files(ready, procs)
        go.touch()
        for proc in procs:
            _, stderr = await asyncio.wait_for(proc.communicate(), _HANG_S)
            assert proc.returncode == 0, stderr.decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    store = await SqliteStore.open(db)
    try:
        counter = await store.get("counters", "c")
        assert counter is not None
        assert counter.data == {"n": workers * times}
    finally:
        await store.close()


async def test_sigkill_after_commit_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITE_UNTIL_KILLED,
        str(db),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        last = -1
        while last < 20:
            line = await asyncio.wait_for(proc.stdout.readline(), _HANG_S)
            assert line, (await proc.stderr.read()).decode()
            last = int(line)
    finally:
        # SIGKILL: no cleanup, possibly in the middle of the next round's writes.
        proc.kill()
        await proc.wait()

    store = await SqliteStore.open(db)
    try:
        logged = await store.count("log")
        assert logged >= last + 1
        assert [d.id for d in await store.get_many("log", [f"e{i}" for i in range(last + 1)])] == [
            f"e{i}" for i in range(last + 1)
        ]
        # Each transaction is all or nothing, including the one the kill may have interrupted.
        pairs = await store.count("pairs")
        assert pairs % 2 == 0
        assert pairs >= 2 * (last + 1)
        for i in range(pairs // 2):
            assert len(await store.get_many("pairs", [f"a{i}", f"b{i}"])) == 2
    finally:
        await store.close()
