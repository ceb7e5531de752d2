"""The faults chaos injects, in order. Each has an `inject` and a `heal` (a restarted process,
a server back, a link restored), and says what it did, for the report.

The outbox relay runs inside every service process (there is no separate relay process to
kill), so "SIGKILL the relay" kills the Governor's process the moment a policy change is
committed, while its relay has that change's event to publish: the event must still reach
every subscriber once the Governor is back. (So on the default and emulators backends, whose
bus is Pub/Sub; with `--backend embedded` the commit itself appends the event to the bus's log,
and the fault checks that an event committed just before a kill is delivered.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from support.processes import ServiceProcess
from tai.v1 import governor_pb2

from chaos.cluster import Cluster
from chaos.workload import Workload

Step = Callable[[Cluster, Workload], Awaitable[str]]


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Step
    heal: Step
    # Whether the fault lasts the run's outage time before it is healed (a restart does not).
    lasts: bool = True
    # Whether the cluster's backend has what the fault breaks.
    applies: Callable[[Cluster], bool] = lambda cluster: True


async def _kill_scheduler(cluster: Cluster, workload: Workload) -> str:
    victim = _scheduler_1(cluster)
    replica = victim.env["TAI_REPLICA_ID"]
    # Kill it while it runs something, so the kill tests the lease takeover.
    running = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        page = await workload.scheduler.list_page(status="running")
        running = sum(1 for t in page.tasks if t.attempts and t.attempts[-1].worker == replica)
        if running:
            break
        await asyncio.sleep(0.05)
    pid = _pid(victim)
    victim.kill()
    return f"SIGKILL {replica} (pid {pid}) while it ran {running} task attempt(s)"


def _coordinator_1(cluster: Cluster) -> ServiceProcess:
    return cluster.coordinators[1]


def _scheduler_1(cluster: Cluster) -> ServiceProcess:
    return cluster.schedulers[1]


def _governor(cluster: Cluster) -> ServiceProcess:
    return cluster.governor


def _restart(victim: Callable[[Cluster], ServiceProcess]) -> Step:
    async def restart(cluster: Cluster, workload: Workload) -> str:
        process = victim(cluster)
        await process.start()
        return f"restarted {process.env['TAI_REPLICA_ID']}"

    return restart


async def _kill_coordinator(cluster: Cluster, workload: Workload) -> str:
    victim = _coordinator_1(cluster)
    pid = _pid(victim)
    victim.kill()
    return f"SIGKILL {victim.env['TAI_REPLICA_ID']} (pid {pid})"


async def _kill_relay(cluster: Cluster, workload: Workload) -> str:
    name = f"chaos-{workload.run_id}-relay-kill"
    receipt = await workload.governor.propose(
        policy_type="operational",
        name=name,
        condition=f'signal.metadata["service"] == "{name}"',
        action=governor_pb2.ActionTemplate(action_type="notify", target_service=name),
        request_id=name,
    )
    pid = _pid(cluster.governor)
    cluster.governor.kill()
    workload.record_policy(receipt)
    publisher = (
        " (its commit had published the event: store and bus are one SQLite file)"
        if cluster.suite.backend == "embedded"
        else ", before its relay could publish it"
    )
    return (
        f"SIGKILL governor-0 (pid {pid}) as ProposePolicy returned revision "
        f"{receipt.result_data['revision']}{publisher}"
    )


async def _stop_redis(cluster: Cluster, workload: Workload) -> str:
    cluster.suite.redis.stop()
    return f"stopped redis-server (port {cluster.suite.redis.port}; its data is gone)"


async def _start_redis(cluster: Cluster, workload: Workload) -> str:
    await asyncio.to_thread(cluster.suite.redis.start)
    return "started an empty redis-server on the same port"


async def _cut_bus(cluster: Cluster, workload: Workload) -> str:
    assert cluster.bus_proxy is not None
    await cluster.bus_proxy.cut()
    return "cut every connection to the Pub/Sub emulator and refused new ones"


async def _restore_bus(cluster: Cluster, workload: Workload) -> str:
    assert cluster.bus_proxy is not None
    await cluster.bus_proxy.restore()
    return "restored the link to the Pub/Sub emulator"


async def _terminate_governor(cluster: Cluster, workload: Workload) -> str:
    pid = _pid(cluster.governor)
    code = await asyncio.to_thread(cluster.governor.terminate)
    return f"SIGTERM governor-0 (pid {pid}), exited with {code}"


def _pid(process: ServiceProcess) -> int:
    assert process.process is not None
    return process.process.pid


FAULTS = [
    Fault("kill-scheduler", _kill_scheduler, _restart(_scheduler_1)),
    Fault("kill-coordinator", _kill_coordinator, _restart(_coordinator_1)),
    Fault("kill-relay", _kill_relay, _restart(_governor)),
    Fault("stop-redis", _stop_redis, _start_redis, applies=Cluster.has_redis),
    Fault("cut-bus", _cut_bus, _restore_bus, applies=Cluster.has_networked_bus),
    Fault("restart-governor", _terminate_governor, _restart(_governor), lasts=False),
]
