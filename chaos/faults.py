"""The faults chaos injects, in order, for each topology (`faults_for`). Each has an `inject`
and a `heal` (a restarted process, a server back, a link restored), and says what it did, for
the report.

`services` (a process per replica):

The outbox relay runs inside every service process (there is no separate relay process to
kill), so "SIGKILL the relay" kills the Governor's process the moment a policy change is
committed, while its relay has that change's event to publish: the event must still reach
every subscriber once the Governor is back. (So on the default and emulators backends, whose
bus is Pub/Sub; with `--backend embedded` the commit itself appends the event to the bus's log,
and the fault checks that an event committed just before a kill is delivered.)

`single` (one `tai-server` process): there is no other replica to take over, so every kill is
a crash of the whole suite, restarted on the same file and ports after the outage. It is
killed while it runs tasks (their leases must lapse and the tasks run again, once), then the
moment a policy change commits while signals and tasks are being written back to back (on the
embedded backend its bus consumers had the latest events in memory and had not written their
cursors: they must resume from the last written cursor and miss nothing), then twice in a row,
the second time half a second after it is back, while it resumes. The Redis and bus faults
follow where the backend has them, then a graceful restart (SIGTERM).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from support.processes import ServiceProcess
from tai.v1 import common_pb2, governor_pb2

from chaos.cluster import Cluster
from chaos.workload import Workload

Step = Callable[[Cluster, Workload], Awaitable[str]]
# `kill-server-writes`: how many callers each keep a signal or a task in flight, and how long
# at most they run before the policy change that triggers the kill.
WRITERS = 20
WRITERS_RAMP_S = 5.0
# `kill-server-twice`: how long the server is up between the two kills.
RECOVERING_S = 0.5


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Step
    heal: Step
    # Whether the fault lasts the run's outage time before it is healed (a restart does not).
    lasts: bool = True
    # Whether the cluster's backend has what the fault breaks.
    applies: Callable[[Cluster], bool] = lambda cluster: True


async def _running_attempts(workload: Workload, worker: str | None) -> int:
    """Waits up to 5 s for a running task attempt (on `worker`, or any) and counts them."""
    running = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        page = await workload.scheduler.list_page(status="running")
        running = sum(
            1
            for t in page.tasks
            if t.attempts and (worker is None or t.attempts[-1].worker == worker)
        )
        if running:
            break
        await asyncio.sleep(0.05)
    return running


async def _kill_scheduler(cluster: Cluster, workload: Workload) -> str:
    victim = _scheduler_1(cluster)
    replica = victim.replica_id
    # Kill it while it runs something, so the kill tests the lease takeover.
    running = await _running_attempts(workload, replica)
    pid = _pid(victim)
    victim.kill()
    return f"SIGKILL {replica} (pid {pid}) while it ran {running} task attempt(s)"


def _coordinator_1(cluster: Cluster) -> ServiceProcess:
    return cluster.coordinators[1]


def _scheduler_1(cluster: Cluster) -> ServiceProcess:
    return cluster.schedulers[1]


def _governor(cluster: Cluster) -> ServiceProcess:
    assert cluster.governor is not None
    return cluster.governor


def _server(cluster: Cluster) -> ServiceProcess:
    assert cluster.server is not None
    return cluster.server


def _restart(victim: Callable[[Cluster], ServiceProcess]) -> Step:
    async def restart(cluster: Cluster, workload: Workload) -> str:
        process = victim(cluster)
        started = time.monotonic()
        await process.start()
        return f"restarted {process.replica_id} ({time.monotonic() - started:.1f} s to SERVING)"

    return restart


async def _kill_coordinator(cluster: Cluster, workload: Workload) -> str:
    victim = _coordinator_1(cluster)
    pid = _pid(victim)
    victim.kill()
    return f"SIGKILL {victim.replica_id} (pid {pid})"


async def _propose_marker(workload: Workload, suffix: str) -> common_pb2.Receipt:
    """A policy change the load does not make (its name says which fault made it)."""
    name = f"chaos-{workload.run_id}-{suffix}"
    return await workload.governor.propose(
        policy_type="operational",
        name=name,
        condition=f'signal.metadata["service"] == "{name}"',
        action=governor_pb2.ActionTemplate(action_type="notify", target_service=name),
        request_id=name,
    )


async def _kill_relay(cluster: Cluster, workload: Workload) -> str:
    receipt = await _propose_marker(workload, "relay-kill")
    governor = _governor(cluster)
    pid = _pid(governor)
    governor.kill()
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


async def _kill_server_running_tasks(cluster: Cluster, workload: Workload) -> str:
    server = _server(cluster)
    running = await _running_attempts(workload, None)
    pid = _pid(server)
    server.kill()
    return f"SIGKILL {server.replica_id} (pid {pid}) while it ran {running} task attempt(s)"


async def _kill_server_writing(cluster: Cluster, workload: Workload) -> str:
    server = _server(cluster)
    writers = workload.start_writers(WRITERS)
    try:
        # Under way first (a round of them accepted), so that writes are in flight and others
        # just committed when the policy change's receipt comes back.
        await writers.wait_accepted(WRITERS, WRITERS_RAMP_S)
        receipt = await _propose_marker(workload, "server-kill")
        pid = _pid(server)
        server.kill()
        accepted, in_flight = writers.accepted, writers.in_flight
    finally:
        writers.stop()
    workload.record_policy(receipt)
    return (
        f"SIGKILL {server.replica_id} (pid {pid}) as ProposePolicy returned revision "
        f"{receipt.result_data['revision']}, with {in_flight} SubmitSignal and SubmitTask "
        f"calls of {WRITERS} back-to-back writers in flight ({accepted} accepted before)"
    )


async def _kill_server_twice(cluster: Cluster, workload: Workload) -> str:
    server = _server(cluster)
    first = _pid(server)
    server.kill()
    await server.start()
    # Back, and at once killed again: while its consumers re-read what the first kill left
    # unsettled, its restarted workers find the lapsed leases, and the load's writes resume.
    await asyncio.sleep(RECOVERING_S)
    second = _pid(server)
    server.kill()
    return (
        f"SIGKILL {server.replica_id} (pid {first}), restarted it, SIGKILL again (pid {second}) "
        f"{RECOVERING_S} s after it was SERVING"
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


def _terminate(victim: Callable[[Cluster], ServiceProcess]) -> Step:
    async def terminate(cluster: Cluster, workload: Workload) -> str:
        process = victim(cluster)
        pid = _pid(process)
        code = await asyncio.to_thread(process.terminate)
        return f"SIGTERM {process.replica_id} (pid {pid}), exited with {code}"

    return terminate


def _pid(process: ServiceProcess) -> int:
    assert process.process is not None
    return process.process.pid


STOP_REDIS = Fault("stop-redis", _stop_redis, _start_redis, applies=Cluster.has_redis)
CUT_BUS = Fault("cut-bus", _cut_bus, _restore_bus, applies=Cluster.has_networked_bus)

FAULTS = {
    "services": [
        Fault("kill-scheduler", _kill_scheduler, _restart(_scheduler_1)),
        Fault("kill-coordinator", _kill_coordinator, _restart(_coordinator_1)),
        Fault("kill-relay", _kill_relay, _restart(_governor)),
        STOP_REDIS,
        CUT_BUS,
        Fault("restart-governor", _terminate(_governor), _restart(_governor), lasts=False),
    ],
    "single": [
        Fault("kill-server-tasks", _kill_server_running_tasks, _restart(_server)),
        Fault("kill-server-writes", _kill_server_writing, _restart(_server)),
        Fault("kill-server-twice", _kill_server_twice, _restart(_server)),
        STOP_REDIS,
        CUT_BUS,
        Fault("restart-server", _terminate(_server), _restart(_server), lasts=False),
    ],
}


def faults_for(topology: str) -> list[Fault]:
    """The faults injected into a cluster of `topology`, in order."""
    return FAULTS[topology]
