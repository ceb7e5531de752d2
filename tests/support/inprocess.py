"""Start real TAI servers inside the test's event loop, on ephemeral ports, over real gRPC."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tai_client import CoordinatorClient, GovernorClient, SchedulerClient, open_channel
from tai_common.runtime import Dependencies
from tai_coordinator.app import CoordinatorSettings
from tai_coordinator.app import create_app as create_coordinator
from tai_governor.app import GovernorSettings
from tai_governor.app import create_app as create_governor
from tai_scheduler.app import SchedulerSettings
from tai_scheduler.app import create_app as create_scheduler

from support.running import RunningCoordinator, RunningGovernor, RunningScheduler

COMMON: dict[str, Any] = {
    # Authentication has suites of its own (tests/integration/security).
    "auth": "off",
    "grpc_port": 0,
    "metrics_port": 0,
    "shutdown_grace_seconds": 1.0,
}


@contextlib.asynccontextmanager
async def governor(
    url: str, replica: str = "test-governor", bus: str = "", **settings: Any
) -> AsyncIterator[RunningGovernor]:
    runtime = create_governor(
        await Dependencies.open(
            GovernorSettings(
                **{"store": url, "bus": bus or url, "replica_id": replica, **COMMON, **settings}
            )
        )
    )
    port = await runtime.start()
    target = f"127.0.0.1:{port}"
    channel = open_channel(target)
    try:
        yield RunningGovernor(runtime, channel, GovernorClient(channel), target)
    finally:
        await channel.close()
        await runtime.stop()


@contextlib.asynccontextmanager
async def coordinator(
    url: str,
    governor_target: str,
    replica: str = "test-coordinator",
    bus: str = "",
    **settings: Any,
) -> AsyncIterator[RunningCoordinator]:
    runtime = create_coordinator(
        await Dependencies.open(
            CoordinatorSettings(
                store=url,
                bus=bus or url,
                replica_id=replica,
                governor_target=governor_target,
                **{**COMMON, **settings},
            )
        )
    )
    port = await runtime.start()
    target = f"127.0.0.1:{port}"
    channel = open_channel(target)
    try:
        yield RunningCoordinator(runtime, channel, CoordinatorClient(channel), target)
    finally:
        await channel.close()
        await runtime.stop()


@contextlib.asynccontextmanager
async def scheduler(
    url: str,
    governor_target: str,
    coordinator_target: str,
    replica: str = "test-scheduler",
    bus: str = "",
    **settings: Any,
) -> AsyncIterator[RunningScheduler]:
    runtime = create_scheduler(
        await Dependencies.open(
            SchedulerSettings(
                store=url,
                bus=bus or url,
                replica_id=replica,
                governor_target=governor_target,
                coordinator_target=coordinator_target,
                **{**COMMON, **settings},
            )
        )
    )
    port = await runtime.start()
    target = f"127.0.0.1:{port}"
    channel = open_channel(target)
    try:
        yield RunningScheduler(runtime, channel, SchedulerClient(channel), target)
    finally:
        await channel.close()
        await runtime.stop()
