"""The throughput scenarios: for each, a setup (run once in the parent, against the running
suite, returning the picklable parameters the load workers need) and a request factory (run in
each load worker: `request_factory(name, params, worker)(i)` → the i-th request's bytes).

Shared helpers for the latency scenarios (bench/latency.py) live here too: policies with
conditions, and waiting until a Coordinator replica has caught up with a Governor revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2, scheduler_pb2
from tai_client import CoordinatorClient, GovernorClient, open_channel

from bench import empty_server

NS_PER_S = 1_000_000_000
# Parked actions (no stream reads their target service) are never redelivered during a run.
ACK_DEADLINE_S = 3600
# The test plug-in executor the task scenarios use (tests/plugins/executors): records its
# attempt in the ledger (TAI_TEST_LEDGER, set by bench/suite.py) and completes.
TASK_TYPE = "test_record"


@dataclass
class Context:
    """What a setup needs: the targets, a run id that keeps this run's names apart, and the
    results of earlier scenarios (the latency scenarios pace themselves on them)."""

    run_id: str
    governor: str
    coordinator: str
    scheduler: str
    empty: str
    # The empty handler inside the services' server and interceptor stack; the same with
    # tracing on and every call sampled out.
    empty_stack: str
    empty_stack_traced: str
    ledger: Path
    # Every server process of the suite (empty handlers included): their CPU per call.
    server_pids: list[int] = field(default_factory=list)
    peak_rps: dict[str, float] = field(default_factory=dict)
    # Setups already run (GetPolicies and GetPolicy share theirs), by setup function.
    setups: dict[str, dict[str, str]] = field(default_factory=dict)

    def name(self, suffix: str) -> str:
        return f"bench-{self.run_id}-{suffix}"


@dataclass(frozen=True)
class Throughput:
    name: str
    title: str
    # "governor" | "coordinator" | "scheduler" | "empty" | "empty_stack[_traced]": whose target
    # is loaded.
    service: str
    method: str
    setup: Callable[[Context], Awaitable[dict[str, str]]]


def condition_for(service: str, clauses: int = 3) -> str:
    """A CEL condition shaped like the README walk-through's, matching `service`'s alerts."""
    parts = ['signal.type == "alert"', "signal.priority >= 8"][: clauses - 1]
    return " && ".join([*parts, f'signal.metadata["service"] == "{service}"'])


async def enforce_policies(
    governor: GovernorClient,
    *,
    policy_type: str,
    names: list[str],
    conditions: list[str],
    target_service: str,
) -> int:
    """Proposes and enforces one policy per name; returns the last change's revision."""
    revision = 0
    for name, condition in zip(names, conditions, strict=True):
        receipt = await governor.propose(
            policy_type=policy_type,
            name=name,
            condition=condition,
            action=governor_pb2.ActionTemplate(
                action_type="scale",
                target_service=target_service,
                parameters={"replicas": "+1"},
                cooldown_seconds=0,
                ack_deadline_seconds=ACK_DEADLINE_S,
            ),
        )
        enforced = await governor.enforce(receipt.resource_id)
        revision = int(enforced.result_data["revision"])
    return revision


def health_detail(status: common_pb2.HealthStatus, key: str) -> str:
    for detail in status.details:
        name, _, value = detail.partition("=")
        if name == key:
            return value
    raise KeyError(f"HealthCheck details carry no {key}= ({list(status.details)})")


async def wait_policy_revision(
    coordinator: CoordinatorClient, revision: int, timeout: float = 60.0
) -> common_pb2.HealthStatus:
    """Until the replica's HealthCheck reports `policy_revision >= revision`."""
    deadline = time.monotonic() + timeout
    while True:
        status = await coordinator.health()
        if int(health_detail(status, "policy_revision")) >= revision:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"coordinator stuck at policy_revision={health_detail(status, 'policy_revision')}"
                f" < {revision} after {timeout}s"
            )
        await asyncio.sleep(0.02)


# --- setups ---------------------------------------------------------------------------------


async def _no_setup(ctx: Context) -> dict[str, str]:
    return {}


async def _setup_reads(ctx: Context) -> dict[str, str]:
    """10 `finance` policies (GetPolicies lists them; GetPolicy reads them in turn)."""
    async with open_channel(ctx.governor) as channel:
        governor = GovernorClient(channel)
        ids = []
        for k in range(10):
            receipt = await governor.propose(
                policy_type="finance",
                name=ctx.name(f"read-{k}"),
                rules={"max_spend": str(1000 * k)},
                condition=condition_for(ctx.name(f"read-{k}")),
                action=governor_pb2.ActionTemplate(action_type="notify", target_service="billing"),
                description="bench: read scenarios",
            )
            ids.append(receipt.resource_id)
        # Warm the cache and check the listing returns them.
        listing = await governor.list_page(policy_type="finance")
        if len(listing.policies) < 10:
            raise RuntimeError(f"GetPolicies(finance) lists {len(listing.policies)} policies")
    return {"policy_ids": ",".join(ids)}


async def _setup_propose(ctx: Context) -> dict[str, str]:
    return {"prefix": ctx.name("propose"), "condition_service": ctx.name("proposed")}


async def _setup_signals(ctx: Context) -> dict[str, str]:
    """10 enforced policies whose conditions differ only in the service; the signals match
    one (the other nine fail on the last clause, so each is evaluated in full)."""
    services = [ctx.name(f"signal-svc{k}") for k in range(10)]
    async with (
        open_channel(ctx.governor) as g_channel,
        open_channel(ctx.coordinator) as c_channel,
    ):
        revision = await enforce_policies(
            GovernorClient(g_channel),
            policy_type="operational",
            names=[ctx.name(f"signal-policy{k}") for k in range(10)],
            conditions=[condition_for(service) for service in services],
            target_service=ctx.name("signal-sink"),
        )
        coordinator = CoordinatorClient(c_channel)
        status = await wait_policy_revision(coordinator, revision)
        active = int(health_detail(status, "active_policies"))
        probe = await coordinator.submit_signal(
            signal_type="alert",
            priority=9,
            metadata={"service": services[0]},
            source=ctx.name("signal-probe"),
        )
        if len(probe.matched_policy_ids) != 1 or len(probe.action_ids) != 1:
            raise RuntimeError(f"the probe signal matched {list(probe.matched_policy_ids)}")
    return {
        "service": services[0],
        "prefix": ctx.name("signal"),
        "active_policies": str(active),
    }


async def _setup_actions(ctx: Context) -> dict[str, str]:
    return {"target": ctx.name("action-sink"), "prefix": ctx.name("action")}


async def _setup_tasks(ctx: Context) -> dict[str, str]:
    # A day ahead: the submitted tasks never run during the benchmark.
    return {"scheduled_ns": str(time.time_ns() + 86_400 * NS_PER_S)}


EMPTY = Throughput(
    "empty", "empty unary handler (baseline)", "empty", empty_server.METHOD, _no_setup
)

THROUGHPUT: list[Throughput] = [
    # Not a TAI method: the ceiling of one (its server and interceptors around no work).
    Throughput(
        "empty_stack",
        "empty handler + TAI's interceptors",
        "empty_stack",
        empty_server.METHOD,
        _no_setup,
    ),
    Throughput(
        "empty_stack_traced",
        "empty handler + TAI's interceptors, tracing on, sampled out",
        "empty_stack_traced",
        empty_server.METHOD,
        _no_setup,
    ),
    Throughput(
        "get_policies",
        "GetPolicies (cached, 10 policies)",
        "governor",
        "/tai.v1.Governor/GetPolicies",
        _setup_reads,
    ),
    Throughput("get_policy", "GetPolicy", "governor", "/tai.v1.Governor/GetPolicy", _setup_reads),
    Throughput(
        "propose_policy",
        "ProposePolicy",
        "governor",
        "/tai.v1.Governor/ProposePolicy",
        _setup_propose,
    ),
    Throughput(
        "submit_signal",
        "SubmitSignal (10 enforced, 1 matching)",
        "coordinator",
        "/tai.v1.Coordinator/SubmitSignal",
        _setup_signals,
    ),
    Throughput(
        "request_action",
        "RequestAction",
        "coordinator",
        "/tai.v1.Coordinator/RequestAction",
        _setup_actions,
    ),
    Throughput(
        "submit_task", "SubmitTask", "scheduler", "/tai.v1.Scheduler/SubmitTask", _setup_tasks
    ),
]


# --- requests (built in the load workers) ---------------------------------------------------

RequestFactory = Callable[[int], bytes]


def request_factory(name: str, params: Mapping[str, str], worker: int) -> RequestFactory:
    """The i-th request of `worker` for scenario `name`, serialized. Requests that create
    something differ per call (so no dedup or idempotency shortcut serves them)."""
    if name in ("empty", "empty_stack", "empty_stack_traced"):
        return lambda i: b""
    if name == "get_policies":
        body = governor_pb2.GetPoliciesRequest(policy_type="finance").SerializeToString()
        return lambda i: body
    if name == "get_policy":
        bodies = [
            governor_pb2.GetPolicyRequest(id=policy_id).SerializeToString()
            for policy_id in params["policy_ids"].split(",")
        ]
        return lambda i: bodies[i % len(bodies)]
    if name == "propose_policy":
        template = governor_pb2.ActionTemplate(
            action_type="scale", target_service="api", parameters={"replicas": "+2"}
        )
        condition = condition_for(params["condition_service"])
        prefix = f"{params['prefix']}-w{worker}"

        def propose(i: int) -> bytes:
            return governor_pb2.ProposePolicyRequest(
                policy_type="security",
                policy_name=f"{prefix}-{i}",
                rules={"tls_version": "1.3"},
                condition=condition,
                action=template,
            ).SerializeToString()

        return propose
    if name == "submit_signal":
        metadata = {"service": params["service"], "region": "eu-west-1"}
        prefix = f"{params['prefix']}-w{worker}"

        def signal(i: int) -> bytes:
            # A source of its own: a new fingerprint, so the cooldown suppresses nothing.
            return coordinator_pb2.SubmitSignalRequest(
                signal_type="alert", priority=9, metadata=metadata, source=f"{prefix}-{i}"
            ).SerializeToString()

        return signal
    if name == "request_action":
        target = params["target"]
        source = f"{params['prefix']}-w{worker}"

        def action(i: int) -> bytes:
            return coordinator_pb2.RequestActionRequest(
                action_type="restart",
                target_service=target,
                source_service=source,
                parameters={"replicas": "+1"},
                ack_deadline_seconds=ACK_DEADLINE_S,
            ).SerializeToString()

        return action
    if name == "submit_task":
        scheduled = int(params["scheduled_ns"])

        def task(i: int) -> bytes:
            return scheduler_pb2.SubmitTaskRequest(
                task_type=TASK_TYPE,
                parameters={"n": str(i)},
                scheduled_time_ns=scheduled,
                priority=5,
            ).SerializeToString()

        return task
    raise KeyError(f"no request factory for scenario {name!r}")


async def check_once(target: str, method: str, request: bytes) -> None:
    """One call of the scenario's kind before loading it: a broken setup fails loudly."""
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await call(request, timeout=30)
