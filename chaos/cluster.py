"""The system chaos runs against, in one of two topologies, on one of bench/suite.py's
backends.

Topologies:

- `single`: one `tai-server` process runs the Governor, the Coordinator and the Scheduler, each
  on its own port, sharing one store and bus (what `make run` starts). On the embedded backend
  it owns the SQLite file: its bus consumers take events from memory and write their cursors
  every 0.1 s. Its faults kill and restart that one process on the same file and ports.
- `services`: a Governor, two Coordinator replicas and two Scheduler replicas, each a process
  of its own; its faults kill one replica while the other carries on.

Backends:

- `mixed`: the production bus and cache (the Pub/Sub emulator, a real redis-server) over the
  embedded SQLite store; every fault applies.
- `emulators`: the same with the Firestore emulator as the store.
- `embedded`: SQLite store and bus, in-process cache; the Redis and bus faults do not apply.

The services reach the Pub/Sub emulator through a TCP proxy (tests/support) that the bus fault
cuts, so the emulator keeps its state across the outage as a real Pub/Sub would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from support.processes import ServiceProcess, free_port
from support.tcp_proxy import TcpProxy
from tai_client import ChannelOptions, open_channel

from bench.suite import SERVICES, Suite, make_suite

# Short leases so a killed Scheduler's tasks are taken over within a fault's window.
LEASE_SECONDS = "3"
# The single process's replica id (its Scheduler's task attempts carry it).
SERVER_REPLICA = "server-0"


@dataclass
class Cluster:
    suite: Suite
    topology: str
    # `single`: the one process.
    server: ServiceProcess | None = None
    # `services`: a process each.
    governor: ServiceProcess | None = None
    coordinators: list[ServiceProcess] = field(default_factory=list)
    schedulers: list[ServiceProcess] = field(default_factory=list)
    # Each service's addresses: one per replica (`services`), the server's port (`single`).
    targets: dict[str, list[str]] = field(default_factory=dict)
    bus_proxy: TcpProxy | None = None

    def has_redis(self) -> bool:
        return self.suite.redis is not None

    def has_networked_bus(self) -> bool:
        return self.bus_proxy is not None

    @property
    def bus_emulator(self) -> tuple[str, str] | None:
        """The Pub/Sub emulator's own address (not the proxy's) and the bus's project, when
        the bus is the emulator."""
        if self.bus_proxy is None:
            return None
        host, port = self.bus_proxy.target
        return f"{host}:{port}", self.suite.base_env["TAI_BUS"].removeprefix("pubsub://")

    @property
    def processes(self) -> list[ServiceProcess]:
        if self.server is not None:
            return [self.server]
        assert self.governor is not None
        return [self.governor, *self.coordinators, *self.schedulers]

    @classmethod
    async def start(
        cls, backend: str, workdir: Path, topology: str = "services", timeout: float = 90.0
    ) -> Cluster:
        suite = make_suite(backend, workdir, topology)
        cluster = cls(suite, topology)
        try:
            suite.base_env.update(
                TAI_LEASE_SECONDS=LEASE_SECONDS,
                TAI_LOG_LEVEL="INFO",
                # A limit far above the load, so every call goes through the limiter, which
                # keeps its buckets in Redis on the emulators backend (the Redis fault).
                TAI_RATE_LIMIT_PER_SECOND="10000",
                TAI_RATE_LIMIT_BURST="10000",
            )
            if "PUBSUB_EMULATOR_HOST" in suite.base_env:
                host, _, port = suite.base_env["PUBSUB_EMULATOR_HOST"].rpartition(":")
                cluster.bus_proxy = await TcpProxy(host, int(port)).start()
                suite.base_env["PUBSUB_EMULATOR_HOST"] = cluster.bus_proxy.address
            if topology == "single":
                await cluster._start_server(timeout)
            else:
                await cluster._start_services(timeout)
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    async def _start_server(self, timeout: float) -> None:
        ports = {name: free_port() for name in SERVICES}
        self.server = self.suite.process(
            "tai_server",
            TAI_REPLICA_ID=SERVER_REPLICA,
            # What ServiceProcess waits on: the Scheduler's port, the last service to start.
            TAI_GRPC_PORT=str(ports["scheduler"]),
            **{f"TAI_{name.upper()}_GRPC_PORT": str(port) for name, port in ports.items()},
        )
        await self.server.start(timeout)
        self.targets = {name: [f"127.0.0.1:{port}"] for name, port in ports.items()}

    async def _start_services(self, timeout: float) -> None:
        suite = self.suite
        self.governor = await suite.process("tai_governor", TAI_REPLICA_ID="governor-0").start(
            timeout
        )
        for index in range(2):
            self.coordinators.append(
                await suite.process(
                    "tai_coordinator",
                    TAI_REPLICA_ID=f"coordinator-{index}",
                    TAI_GOVERNOR_TARGET=self.governor.target,
                ).start(timeout)
            )
        for index in range(2):
            self.schedulers.append(
                await suite.process(
                    "tai_scheduler",
                    TAI_REPLICA_ID=f"scheduler-{index}",
                    TAI_GOVERNOR_TARGET=self.governor.target,
                    # The Coordinator replica no fault kills.
                    TAI_COORDINATOR_TARGET=self.coordinators[0].target,
                ).start(timeout)
            )
        self.targets = {
            "governor": [self.governor.target],
            "coordinator": [p.target for p in self.coordinators],
            "scheduler": [p.target for p in self.schedulers],
        }

    async def stop(self) -> None:
        started = [self.server, self.governor, *self.coordinators, *self.schedulers]
        for process in reversed([p for p in started if p is not None]):
            with contextlib.suppress(Exception):
                process.stop()
        self.suite.stop()
        if self.bus_proxy is not None:
            await self.bus_proxy.close()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.replica_id} ({p.log_path})\n{p.log_tail(15)}" for p in self.processes
        )


def balanced_channel(targets: list[str], policy: str = "round_robin") -> grpc.aio.Channel:
    """One channel over several replicas' addresses, retrying UNAVAILABLE on another: what a
    client behind a Kubernetes Service (or the mesh) sees when a replica dies. `pick_first`
    keeps to the first replica while it is up (a stream client that should start on that
    replica)."""
    return open_channel(
        f"ipv4:{','.join(targets)}", ChannelOptions(load_balancing=policy, max_backoff_seconds=1.0)
    )
