"""`tai-server` as an operator starts it: the services it is told to run, each on its port;
a bad `--services` refused in one line; the SQLite file it owns refused to other processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from support.processes import ServiceProcess, free_port, health_status
from tai_client import GovernorClient, open_channel

MakeProcess = Callable[..., ServiceProcess]

pytestmark = pytest.mark.slow


def test_an_unknown_service_is_refused_in_one_line_naming_the_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tai_server", "--services", "governor,billing"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tai-server: TAI_SERVICES: Value error, unknown service 'billing' "
        "(choose from governor, coordinator, scheduler)"
    ]


async def test_it_runs_the_services_it_is_told_to_and_owns_its_file(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    governor_port, coordinator_port, scheduler_port = free_port(), free_port(), free_port()
    server = await service_processes(
        "tai_server",
        TAI_STORE=sqlite_url,
        TAI_BUS=sqlite_url,
        TAI_SERVICES="governor,coordinator",
        # What ServiceProcess waits for: the last service the server starts.
        TAI_GRPC_PORT=str(coordinator_port),
        TAI_GOVERNOR_GRPC_PORT=str(governor_port),
        TAI_COORDINATOR_GRPC_PORT=str(coordinator_port),
        TAI_SCHEDULER_GRPC_PORT=str(scheduler_port),
    ).start()
    assert await health_status(f"127.0.0.1:{governor_port}") == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert await health_status(f"127.0.0.1:{scheduler_port}") is None  # not asked for
    async with open_channel(f"127.0.0.1:{governor_port}") as channel:
        receipt = await GovernorClient(channel).propose(policy_type="finance", name="budget")
    assert receipt.resource_id

    # A service process of its own on the same file would share its bus: refused at start.
    intruder = service_processes("tai_scheduler", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url)
    refused = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tai_scheduler",
        env=intruder.env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(refused.communicate(), 60)
    assert refused.returncode == 2
    assert "owned by a single-process TAI server (tai-server)" in stderr.decode()
    assert server.process is not None
    assert server.process.poll() is None
