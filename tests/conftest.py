"""Fixtures shared by every suite."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.processes import ServiceProcess, free_port


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """One SQLite file for store and bus, as `make run` uses."""
    return f"sqlite:///{tmp_path}/tai.db"


@pytest.fixture
def service_processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Makes service processes (`make("tai_governor", TAI_STORE=…)`), stopped at the end."""
    made: list[ServiceProcess] = []

    def make(module: str, **env: str) -> ServiceProcess:
        env.setdefault("TAI_GRPC_PORT", str(free_port()))
        env.setdefault("TAI_AUTH", "off")
        env.setdefault("TAI_METRICS_PORT", "0")
        env.setdefault("TAI_SHUTDOWN_GRACE_SECONDS", "2")
        env.setdefault("TAI_LOG_FORMAT", "json")
        process = ServiceProcess(module, env, tmp_path / f"{module}-{len(made)}.log")
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()
        # Shown by pytest only when the test failed: what each process logged last.
        print(f"--- {process.log_path.name} ---\n{process.log_tail()}", file=sys.stderr)
