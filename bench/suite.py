"""The system under test: the three services on free loopback ports, by default in one
`tai-server` process (`single`, what `make run` starts) or each in a process of its own
(`services`), and the empty-handler baseline server, started with the tests' `ServiceProcess`
(tests/support).

- `embedded`: the embedded default `make run` uses — one SQLite file for store and bus, in a
  temporary directory; in-process cache.
- `emulators`: Firestore and Pub/Sub emulators and a real redis-server (tests/support's helpers),
  each service on its production adapters (`firestore://`, `pubsub://`, `redis://`).
- `mixed`: the production bus and cache (Pub/Sub emulator, redis-server) over the embedded
  SQLite store.

Every `TAI_*` variable of the environment is passed on (ServiceProcess does), and overrides the
defaults below except ports, targets and replica ids: `TAI_SQLITE_SYNCHRONOUS=NORMAL make bench`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# tests/support is imported from where it lives (appended: bench/ itself comes first).
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))

from support.processes import ServiceProcess  # noqa: E402
from support.processes import free_port as free_port  # noqa: E402  (used by bench.memory too)

BACKENDS = ("embedded", "emulators", "mixed")
TOPOLOGIES = ("single", "services")
SERVICES = ("governor", "coordinator", "scheduler")
# Variables the harness sets per process; the environment cannot override them.
_FIXED = {
    "TAI_GRPC_PORT",
    "TAI_REPLICA_ID",
    "TAI_GOVERNOR_TARGET",
    "TAI_COORDINATOR_TARGET",
    *(f"TAI_{name.upper()}_GRPC_PORT" for name in SERVICES),
}


def tai_overrides() -> dict[str, str]:
    """The caller's TAI_* variables (recorded in the results)."""
    return {k: v for k, v in os.environ.items() if k.startswith("TAI_") and k not in _FIXED}


@dataclass
class Suite:
    backend: str
    workdir: Path
    base_env: dict[str, str]
    ledger_path: Path
    topology: str = "single"
    # `single`: the one process every service runs in.
    server: ServiceProcess | None = None
    # `services`: a process each (and, on any topology, Coordinator replicas added later).
    governor: ServiceProcess | None = None
    coordinators: list[ServiceProcess] = field(default_factory=list)
    scheduler: ServiceProcess | None = None
    # Each service's address (the first Coordinator's, for the Coordinator).
    targets: dict[str, str] = field(default_factory=dict)
    empty: ServiceProcess | None = None
    # The empty handler inside the services' server and interceptors.
    empty_stack: ServiceProcess | None = None
    empty_stack_traced: ServiceProcess | None = None
    # The emulators backend's redis-server (chaos stops and restarts it).
    redis: Any = None
    _emulators: list[Any] = field(default_factory=list)
    _count: int = 0

    @property
    def governor_target(self) -> str:
        return self.targets["governor"]

    @property
    def coordinator_target(self) -> str:
        return self.targets["coordinator"]

    @property
    def scheduler_target(self) -> str:
        return self.targets["scheduler"]

    def coordinator_targets(self) -> list[str]:
        """Every Coordinator replica's address, the first one's first."""
        return [self.coordinator_target, *(c.target for c in self.coordinators[self._own :])]

    @property
    def _own(self) -> int:
        # In `services`, the first Coordinator process is the suite's own.
        return 1 if self.topology == "services" else 0

    @property
    def can_add_coordinator(self) -> bool:
        """Whether another Coordinator process may join: not beside a single process that
        owns the embedded SQLite file."""
        return not (self.topology == "single" and self.backend == "embedded")

    @property
    def empty_target(self) -> str:
        assert self.empty is not None
        return self.empty.target

    @property
    def empty_stack_target(self) -> str:
        assert self.empty_stack is not None
        return self.empty_stack.target

    @property
    def empty_stack_traced_target(self) -> str:
        assert self.empty_stack_traced is not None
        return self.empty_stack_traced.target

    def processes(self) -> list[ServiceProcess]:
        """The server processes, in the order they start."""
        started = [
            self.empty,
            self.empty_stack,
            self.empty_stack_traced,
            self.server,
            self.governor,
            *self.coordinators,
            self.scheduler,
        ]
        return [p for p in started if p is not None]

    def pids(self) -> list[int]:
        """The running server processes' ids."""
        return [p.process.pid for p in self.processes() if p.process is not None]

    def process(self, module: str, **env: str) -> ServiceProcess:
        """A (not yet started) process of `module` on the suite's settings and a free port."""
        self._count += 1
        settings = {
            **self.base_env,
            **tai_overrides(),
            "TAI_GRPC_PORT": str(free_port()),
            **env,
        }
        return ServiceProcess(module, settings, self.workdir / f"{self._count:02d}-{module}.log")

    async def start(self, timeout: float) -> None:
        """The empty-handler servers, then the services (`topology`)."""
        self.empty = await self.process(
            "bench.empty_server", PYTHONPATH=_pythonpath(), TAI_REPLICA_ID="empty"
        ).start(timeout)
        self.empty_stack = await self.process(
            "bench.empty_server",
            PYTHONPATH=_pythonpath(),
            TAI_REPLICA_ID="empty-stack",
            BENCH_EMPTY_STACK="1",
        ).start(timeout)
        self.empty_stack_traced = await self.process(
            "bench.empty_server",
            PYTHONPATH=_pythonpath(),
            TAI_REPLICA_ID="empty-stack-traced",
            BENCH_EMPTY_STACK="traced",
        ).start(timeout)
        if self.topology == "single":
            ports = {name: free_port() for name in SERVICES}
            # Ready once the Scheduler, started last, is.
            self.server = await self.process(
                "tai_server",
                TAI_REPLICA_ID="server-0",
                TAI_GRPC_PORT=str(ports["scheduler"]),
                **{f"TAI_{name.upper()}_GRPC_PORT": str(port) for name, port in ports.items()},
            ).start(timeout)
            self.targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
            return
        self.governor = await self.process("tai_governor", TAI_REPLICA_ID="governor-0").start(
            timeout
        )
        self.targets["governor"] = self.governor.target
        self.targets["coordinator"] = (await self.add_coordinator(timeout)).target
        self.scheduler = await self.process(
            "tai_scheduler",
            TAI_REPLICA_ID="scheduler-0",
            TAI_GOVERNOR_TARGET=self.governor_target,
            TAI_COORDINATOR_TARGET=self.coordinator_target,
        ).start(timeout)
        self.targets["scheduler"] = self.scheduler.target

    async def add_coordinator(self, timeout: float) -> ServiceProcess:
        """Another Coordinator replica, a process of its own (the suite's first Coordinator
        is the one the scenarios load)."""
        process = await self.process(
            "tai_coordinator",
            TAI_REPLICA_ID=f"coordinator-{len(self.coordinators) + 1}",
            TAI_GOVERNOR_TARGET=self.governor_target,
        ).start(timeout)
        self.coordinators.append(process)
        return process

    def stop_coordinator(self, process: ServiceProcess) -> None:
        process.stop()
        self.coordinators.remove(process)

    def stop(self) -> None:
        for process in reversed(self.processes()):
            with contextlib.suppress(Exception):
                process.stop()
        for emulator in reversed(self._emulators):
            with contextlib.suppress(Exception):
                emulator.stop()

    def log_tails(self) -> str:
        parts = [
            f"--- {process.module} ({process.log_path.name})\n{process.log_tail()}"
            for process in self.processes()
        ]
        return "\n".join(parts)


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH", "")
    return f"{ROOT}{os.pathsep}{existing}" if existing else str(ROOT)


def make_suite(backend: str, workdir: Path, topology: str = "single") -> Suite:
    """The suite's settings (emulators are started here, the services by `Suite.start`)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}")
    ledger = workdir / "ledger.db"
    common = {
        "TAI_AUTH": "off",  # as `make run`
        "TAI_METRICS_PORT": "0",
        "TAI_LOG_FORMAT": "text",
        "TAI_SHUTDOWN_GRACE_SECONDS": "2",
        # The test executors' ledger (the dispatch-lag and SubmitTask scenarios' task type).
        "TAI_TEST_LEDGER": str(ledger),
    }
    if backend == "embedded":
        db = f"sqlite:///{workdir / 'tai.db'}"
        return Suite(backend, workdir, {**common, "TAI_STORE": db, "TAI_BUS": db}, ledger, topology)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}")

    from support.firestore_emulator import FirestoreEmulator
    from support.pubsub_emulator import EMULATOR_BINARY, PubSubEmulator
    from support.redis_server import RedisServer

    suite = Suite(backend, workdir, {}, ledger, topology)
    project = f"tai-bench-{uuid.uuid4().hex[:12]}"
    try:
        if backend == "emulators":
            firestore = FirestoreEmulator.start(workdir / "firestore-emulator.log")
            suite._emulators.append(firestore)
            store = {
                "TAI_STORE": f"firestore://{project}",
                "FIRESTORE_EMULATOR_HOST": firestore.host,
            }
        else:  # mixed
            store = {"TAI_STORE": f"sqlite:///{workdir / 'tai.db'}"}
        pubsub = PubSubEmulator(EMULATOR_BINARY, free_port(), workdir / "pubsub-emulator.log")
        pubsub.start()
        suite._emulators.append(pubsub)
        redis = RedisServer().start()
        suite._emulators.append(redis)
        suite.redis = redis
    except BaseException:
        suite.stop()
        raise
    suite.base_env = {
        **common,
        **store,
        "TAI_BUS": f"pubsub://{project}",
        "TAI_BUS_CREATE_MISSING": "true",
        "TAI_CACHE": redis.url,
        "PUBSUB_EMULATOR_HOST": pubsub.host,
    }
    return suite
