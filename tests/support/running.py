"""Handles on servers the tests run in-process."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from tai_client import CoordinatorClient, GovernorClient, SchedulerClient
from tai_common.runtime import ServiceRuntime


@dataclass
class RunningGovernor:
    runtime: ServiceRuntime
    channel: grpc.aio.Channel
    client: GovernorClient
    target: str


@dataclass
class RunningCoordinator:
    runtime: ServiceRuntime
    channel: grpc.aio.Channel
    client: CoordinatorClient
    target: str


@dataclass
class RunningScheduler:
    runtime: ServiceRuntime
    channel: grpc.aio.Channel
    client: SchedulerClient
    target: str


@dataclass
class Suite:
    """A Governor and a Coordinator sharing one store and bus."""

    governor: RunningGovernor
    coordinator: RunningCoordinator
