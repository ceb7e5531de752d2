"""The single-process server: the Governor, the Coordinator and the Scheduler in one process, as
Loki's `-target=all` or Temporal's `start-dev` run a whole system in one.

Each service keeps its port, its API and its wiring (`create_app`); they share one set of
adapters (one store connection, so one writer and its group commit; one bus, whose consumers
on the embedded SQLite file get each event from memory once its transaction commits; one
cache) and one metrics endpoint. The services still call each other over gRPC, on loopback, as
they do between processes.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, field_validator
from tai_common.core import ServiceSettings
from tai_common.runtime import Dependencies, ServiceRuntime, service_main
from tai_coordinator.app import CoordinatorSettings
from tai_coordinator.app import create_app as create_coordinator
from tai_governor.app import GovernorSettings
from tai_governor.app import create_app as create_governor
from tai_scheduler.app import SchedulerSettings
from tai_scheduler.app import create_app as create_scheduler

# In the order they start (each one's callers after it); they stop together.
SERVICES = ("governor", "coordinator", "scheduler")


class ServerSettings(ServiceSettings):
    """The process's settings (`TAI_*`); each service also reads its own from the environment,
    with the ports below in place of `TAI_GRPC_PORT`."""

    service_name: str = "tai-server"
    # The whole process's /metrics (the services' own metrics ports are not opened).
    metrics_port: int = 9100
    # Which services this process runs (`--services` overrides): a comma-separated list.
    services: str = ",".join(SERVICES)
    governor_grpc_port: int = Field(default=50051, ge=0, le=65535)
    coordinator_grpc_port: int = Field(default=50052, ge=0, le=65535)
    scheduler_grpc_port: int = Field(default=50053, ge=0, le=65535)
    # Only this process opens the embedded SQLite file: its bus delivers from memory. Off
    # when other processes share the file (`--services governor` here, the rest elsewhere).
    sqlite_single_process: bool = True
    # The token each service presents on its calls to the others (service name -> file), in
    # place of the one TAI_SERVICE_TOKEN(_FILE) would give them all.
    service_token_files: dict[str, str] = Field(default_factory=dict)

    @field_validator("services")
    @classmethod
    def _known_services(cls, value: str) -> str:
        chosen = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown service {unknown[0]!r} (choose from {', '.join(SERVICES)})")
        if not chosen:
            raise ValueError(f"name at least one of {', '.join(SERVICES)}")
        return ",".join(name for name in SERVICES if name in chosen)

    def chosen(self) -> list[str]:
        """The services to run, in start order."""
        return self.services.split(",")


def grpc_ports(settings: ServerSettings) -> dict[str, int]:
    """Each chosen service's port; one set to 0 gets a free port now, so that the services
    calling it know where it is before it starts."""
    ports = {
        "governor": settings.governor_grpc_port,
        "coordinator": settings.coordinator_grpc_port,
        "scheduler": settings.scheduler_grpc_port,
    }
    for name in settings.chosen():
        if ports[name] == 0:
            with socket.create_server((settings.host, 0)) as probe:
                ports[name] = probe.getsockname()[1]
    return ports


def service_overrides(settings: ServerSettings, name: str, ports: dict[str, int]) -> dict[str, Any]:
    """What a service's own settings take from the server's: its port, no metrics port of its
    own, the bus mode, and the loopback address of each service this process runs (unless the
    environment names one)."""
    overrides: dict[str, Any] = {
        "grpc_port": ports[name],
        "metrics_port": 0,
        "sqlite_single_process": settings.sqlite_single_process,
    }
    if name in settings.service_token_files:
        overrides["service_token_file"] = settings.service_token_files[name]
    for other in settings.chosen():
        field = f"{other}_target"
        if field not in settings.model_fields_set:
            overrides[field] = f"127.0.0.1:{ports[other]}"
    return overrides


def create_apps(deps: Dependencies[ServerSettings]) -> list[ServiceRuntime]:
    """The chosen services' runtimes on `deps`' adapters, wired but not started."""
    settings = deps.settings
    builders: dict[str, Callable[[dict[str, Any]], ServiceRuntime]] = {
        "governor": lambda o: create_governor(deps.shared_with(GovernorSettings(**o))),
        "coordinator": lambda o: create_coordinator(deps.shared_with(CoordinatorSettings(**o))),
        "scheduler": lambda o: create_scheduler(deps.shared_with(SchedulerSettings(**o))),
    }
    ports = grpc_ports(settings)
    return [builders[name](service_overrides(settings, name, ports)) for name in settings.chosen()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tai-server",
        description="Run TAI's services in one process. Settings come from TAI_* variables "
        "(see the README); each service keeps its own port.",
    )
    parser.add_argument(
        "--services",
        help=f"comma-separated, from {', '.join(SERVICES)} (default: all; TAI_SERVICES)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """`tai-server [--services governor,coordinator,scheduler]`."""
    args = parse_args(argv)
    overrides = {} if args.services is None else {"services": args.services}
    service_main(ServerSettings, create_apps, **overrides)
