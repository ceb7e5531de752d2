"""The system chaos runs against: a Governor, two Coordinator replicas and two Scheduler
replicas as separate processes, on one of bench/suite.py's backends:

- `mixed` (the default): the production bus and cache (the Pub/Sub emulator, a real
  redis-server) over the embedded SQLite store; every fault applies.
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
from support.processes import ServiceProcess
from support.tcp_proxy import TcpProxy
from tai_client import ChannelOptions, open_channel

from bench.suite import Suite, make_suite

# Short leases so a killed Scheduler's tasks are taken over within a fault's window.
LEASE_SECONDS = "3"


@dataclass
class Cluster:
    suite: Suite
    governor: ServiceProcess
    coordinators: list[ServiceProcess] = field(default_factory=list)
    schedulers: list[ServiceProcess] = field(default_factory=list)
    bus_proxy: TcpProxy | None = None

    def has_redis(self) -> bool:
        return self.suite.redis is not None

    def has_networked_bus(self) -> bool:
        return self.bus_proxy is not None

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.governor, *self.coordinators, *self.schedulers]

    @classmethod
    async def start(cls, backend: str, workdir: Path, timeout: float = 90.0) -> Cluster:
        suite = make_suite(backend, workdir)
        proxy: TcpProxy | None = None
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
                proxy = await TcpProxy(host, int(port)).start()
                suite.base_env["PUBSUB_EMULATOR_HOST"] = proxy.address
            governor = await suite.process("tai_governor", TAI_REPLICA_ID="governor-0").start(
                timeout
            )
            cluster = cls(suite, governor, bus_proxy=proxy)
            for index in range(2):
                cluster.coordinators.append(
                    await suite.process(
                        "tai_coordinator",
                        TAI_REPLICA_ID=f"coordinator-{index}",
                        TAI_GOVERNOR_TARGET=governor.target,
                    ).start(timeout)
                )
            for index in range(2):
                cluster.schedulers.append(
                    await suite.process(
                        "tai_scheduler",
                        TAI_REPLICA_ID=f"scheduler-{index}",
                        TAI_GOVERNOR_TARGET=governor.target,
                        # The Coordinator replica no fault kills.
                        TAI_COORDINATOR_TARGET=cluster.coordinators[0].target,
                    ).start(timeout)
                )
        except BaseException:
            suite.stop()
            if proxy is not None:
                await proxy.close()
            raise
        return cluster

    async def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        self.suite.stop()
        if self.bus_proxy is not None:
            await self.bus_proxy.close()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.env['TAI_REPLICA_ID']} ({p.log_path})\n{p.log_tail(15)}"
            for p in self.processes
        )


def balanced_channel(
    processes: list[ServiceProcess], policy: str = "round_robin"
) -> grpc.aio.Channel:
    """One channel over several replicas, retrying UNAVAILABLE on another: what a client
    behind a Kubernetes Service (or the mesh) sees when a replica dies. `pick_first` keeps to
    the first replica while it is up (a stream client that should start on that replica)."""
    addresses = ",".join(p.target for p in processes)
    return open_channel(
        f"ipv4:{addresses}", ChannelOptions(load_balancing=policy, max_backoff_seconds=1.0)
    )
