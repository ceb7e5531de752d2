"""The latency scenarios: open-loop or event-driven measurements that a closed loop of unary
calls cannot make. Each runs in the harness's own process (separate from the servers), on its
own event loop, and returns one or more `LatencyResult` rows.

- `stream_fanout`: 50 StreamActions subscribers, each on a service name of its own; actions
  are requested (RequestAction, round robin over the 50) at a fixed rate; latency = receipt on
  the stream − start of the RequestAction call; messages/s = actions received per second.
- `signal_delivery`: one StreamActions subscriber for a target service; signals that match one
  enforced policy (whose action goes to that service) are submitted at a fixed rate; latency =
  receipt of the action on the stream − start of the SubmitSignal call.
- `policy_propagation`: K StreamPolicies subscribers on the Governor and two Coordinator
  replicas; each iteration enforces a policy; latency until every subscriber received the
  ENFORCED version, and until every replica's HealthCheck reports `policy_revision >= R`.
- `dispatch_lag`: N tasks of the `test_record` plug-in, all scheduled at one time T a few
  seconds ahead; lag = attempt start − T, from the Scheduler's records (the attempt's
  `started_at_ns`, set when a replica claims the task) and from the executor's ledger (when
  the executor itself started). Then N more, due one after another at half the rate the
  burst was worked through; lag = attempt start − the task's own scheduled time.

Rates default to half the peak the throughput scenario of the same call measured in this run
(`--rate` sets one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tai.v1 import governor_pb2
from tai_client import (
    CoordinatorClient,
    GovernorClient,
    SchedulerClient,
    Stream,
    TaiError,
    open_channel,
)

from bench.load import NS_PER_S, Summary
from bench.scenarios import (
    ACK_DEADLINE_S,
    TASK_TYPE,
    Context,
    condition_for,
    enforce_policies,
    health_detail,
    wait_policy_revision,
)
from bench.suite import Suite
from bench.task_starts import wait_for_starts

_DEFAULT_RATE = 20.0  # when the throughput scenario of the same call did not run
_GRACE_S = 10.0  # how long, at least, to wait for deliveries after the last send


@dataclass(frozen=True)
class LatencyOptions:
    warmup_s: float = 5.0
    duration_s: float = 10.0
    # Fixed send rate (per second) for the fan-out and delivery scenarios; None: half the peak.
    rate: float | None = None
    fanout_subscribers: int = 50
    policy_subscribers: int = 20
    propagation_iterations: int = 20
    tasks: int = 1000
    # Open-loop sends in flight at most; past it a send is skipped (and counted).
    max_in_flight: int = 2000
    start_timeout_s: float = 60.0


@dataclass
class LatencyResult:
    name: str
    title: str
    latency: Summary
    # What `rate` counts ("msgs/s", "tasks/s", …); empty when it has no rate.
    rate: float = 0.0
    rate_unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "kind": "latency",
            "latency": self.latency.as_dict(),
            "rate": self.rate,
            "rate_unit": self.rate_unit,
            "extra": self.extra,
        }


@dataclass
class _Paced:
    sent: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    call_latencies_ns: list[int] = field(default_factory=list)


async def _paced(
    rate: float,
    warmup_s: float,
    duration_s: float,
    max_in_flight: int,
    send: Callable[[int, bool], Awaitable[None]],
) -> _Paced:
    """Calls `send(seq, measured)` at `rate` per second (open loop: without waiting for the
    previous call), for `warmup_s` (measured=False) then `duration_s` (measured=True)."""
    stats = _Paced()
    interval_ns = int(NS_PER_S / rate)
    start = time.perf_counter_ns()
    measure_from = start + int(warmup_s * NS_PER_S)
    end = measure_from + int(duration_s * NS_PER_S)
    in_flight: set[asyncio.Task[None]] = set()
    next_at = start

    async def timed(seq: int, measured: bool) -> None:
        started = time.perf_counter_ns()
        try:
            await send(seq, measured)
        except TaiError as error:
            if measured:
                code = error.code.name
                stats.errors[code] = stats.errors.get(code, 0) + 1
            return
        if measured:
            stats.call_latencies_ns.append(time.perf_counter_ns() - started)

    for seq in itertools.count():
        if next_at >= end:
            break
        now = time.perf_counter_ns()
        if next_at > now:
            await asyncio.sleep((next_at - now) / NS_PER_S)
        measured = next_at >= measure_from
        if len(in_flight) >= max_in_flight:
            stats.skipped += measured
        else:
            task = asyncio.create_task(timed(seq, measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            stats.sent += measured
        next_at += interval_ns
    if in_flight:
        await asyncio.gather(*in_flight)
    return stats


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


async def _grace(condition: Callable[[], bool], opts: LatencyOptions) -> None:
    with contextlib.suppress(TimeoutError):
        await _wait_for(condition, max(_GRACE_S, 2 * opts.duration_s), "deliveries")


def _rate(ctx: Context, opts: LatencyOptions, peak_of: str) -> tuple[float, str]:
    if opts.rate:
        return opts.rate, "fixed (--rate)"
    if peak_of in ctx.peak_rps:
        peak = ctx.peak_rps[peak_of]
        return max(0.5, round(peak / 2, 1)), f"half the {peak_of} peak ({peak:.1f}/s)"
    return _DEFAULT_RATE, f"default ({peak_of} not measured in this run)"


def _delivery_row(
    name: str,
    title: str,
    sent_at: dict[str, int],
    received_at: dict[str, int],
    paced: _Paced,
    rate: float,
    rate_note: str,
    duration_s: float,
    call: str,
) -> LatencyResult:
    delivered = [received_at[key] - sent_at[key] for key in sent_at if key in received_at]
    return LatencyResult(
        name=name,
        title=title,
        latency=Summary.of(delivered),
        rate=len(delivered) / duration_s,
        rate_unit="msgs/s",
        extra={
            "offered_rate_per_s": rate,
            "rate_from": rate_note,
            "sent": paced.sent,
            "delivered": len(delivered),
            "missing": len(sent_at) - len(delivered),
            "skipped_over_max_in_flight": paced.skipped,
            "errors": paced.errors,
            f"{call}_latency": Summary.of(paced.call_latencies_ns).as_dict(),
        },
    )


async def stream_fanout(ctx: Context, suite: Suite, opts: LatencyOptions) -> list[LatencyResult]:
    rate, rate_note = _rate(ctx, opts, "request_action")
    services = [ctx.name(f"fan-{k:02d}") for k in range(opts.fanout_subscribers)]
    prefix = ctx.name("fan-action")
    sent_at: dict[str, int] = {}
    received_at: dict[str, int] = {}
    async with (
        open_channel(ctx.coordinator) as stream_channel,
        open_channel(ctx.coordinator) as call_channel,
    ):
        streams = [CoordinatorClient(stream_channel).stream_actions(s) for s in services]
        client = CoordinatorClient(call_channel)

        async def read(call: Stream[Any]) -> None:
            async for action in call:
                received_at.setdefault(action.id, time.perf_counter_ns())

        readers = [asyncio.create_task(read(call)) for call in streams]
        try:
            # Every subscriber connected: one action each, all received.
            hello = [f"{prefix}-hello-{k}" for k in range(len(services))]
            for action_id, service in zip(hello, services, strict=True):
                await client.request_action(
                    action_type="ping",
                    target_service=service,
                    action_id=action_id,
                    ack_deadline_seconds=ACK_DEADLINE_S,
                )
            await _wait_for(
                lambda: all(a in received_at for a in hello),
                opts.start_timeout_s,
                "every fan-out subscriber receiving its first action",
            )

            async def send(seq: int, measured: bool) -> None:
                action_id = f"{prefix}-{seq}"
                if measured:
                    sent_at[action_id] = time.perf_counter_ns()
                await client.request_action(
                    action_type="restart",
                    target_service=services[seq % len(services)],
                    action_id=action_id,
                    parameters={"replicas": "+1"},
                    ack_deadline_seconds=ACK_DEADLINE_S,
                )

            paced = await _paced(rate, opts.warmup_s, opts.duration_s, opts.max_in_flight, send)
            await _grace(lambda: all(a in received_at for a in sent_at), opts)
        finally:
            for call in streams:
                call.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    row = _delivery_row(
        "stream_fanout",
        f"StreamActions fan-out ({len(services)} subscribers): request → receipt",
        sent_at,
        received_at,
        paced,
        rate,
        rate_note,
        opts.duration_s,
        "request_action",
    )
    row.extra["subscribers"] = len(services)
    return [row]


async def signal_delivery(ctx: Context, suite: Suite, opts: LatencyOptions) -> list[LatencyResult]:
    rate, rate_note = _rate(ctx, opts, "submit_signal")
    target = ctx.name("deliver-target")
    matching = ctx.name("deliver-svc")
    prefix = ctx.name("deliver-signal")
    sent_at: dict[str, int] = {}
    received_at: dict[str, int] = {}
    async with (
        open_channel(ctx.governor) as g_channel,
        open_channel(ctx.coordinator) as stream_channel,
        open_channel(ctx.coordinator) as call_channel,
    ):
        client = CoordinatorClient(call_channel)
        revision = await enforce_policies(
            GovernorClient(g_channel),
            policy_type="operational",
            names=[ctx.name("deliver-policy")],
            conditions=[condition_for(matching)],
            target_service=target,
        )
        status = await wait_policy_revision(client, revision)
        stream = CoordinatorClient(stream_channel).stream_actions(target)

        async def read() -> None:
            async for action in stream:
                received_at.setdefault(action.signal_id, time.perf_counter_ns())

        reader = asyncio.create_task(read())
        try:
            hello = f"{prefix}-hello"
            await client.submit_signal(
                signal_type="alert",
                priority=9,
                metadata={"service": matching},
                source=hello,
                signal_id=hello,
            )
            await _wait_for(
                lambda: hello in received_at, opts.start_timeout_s, "the first delivery"
            )

            async def send(seq: int, measured: bool) -> None:
                signal_id = f"{prefix}-{seq}"
                if measured:
                    sent_at[signal_id] = time.perf_counter_ns()
                await client.submit_signal(
                    signal_type="alert",
                    priority=9,
                    metadata={"service": matching},
                    source=signal_id,  # a fingerprint of its own: no cooldown in the way
                    signal_id=signal_id,
                )

            paced = await _paced(rate, opts.warmup_s, opts.duration_s, opts.max_in_flight, send)
            await _grace(lambda: all(s in received_at for s in sent_at), opts)
        finally:
            stream.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    row = _delivery_row(
        "signal_delivery",
        "signal → action delivery: submit → receipt on stream",
        sent_at,
        received_at,
        paced,
        rate,
        rate_note,
        opts.duration_s,
        "submit_signal",
    )
    row.extra["enforced_policies"] = int(health_detail(status, "active_policies"))
    return [row]


async def policy_propagation(
    ctx: Context, suite: Suite, opts: LatencyOptions
) -> list[LatencyResult]:
    extra_replicas = []
    # A second replica where one may join (not beside a single process on its SQLite file).
    while suite.can_add_coordinator and len(suite.coordinator_targets()) < 2:
        extra_replicas.append(await suite.add_coordinator(opts.start_timeout_s))
    try:
        return await _propagation(ctx, suite.coordinator_targets(), opts)
    finally:
        for replica in extra_replicas:
            suite.stop_coordinator(replica)


async def _propagation(
    ctx: Context, coordinator_targets: list[str], opts: LatencyOptions
) -> list[LatencyResult]:
    k = opts.policy_subscribers
    # first_seen[i][revision] = when subscriber i received that revision.
    first_seen: list[dict[int, int]] = [{} for _ in range(k)]
    action = governor_pb2.ActionTemplate(
        action_type="scale", target_service=ctx.name("prop-target"), cooldown_seconds=0
    )
    async with contextlib.AsyncExitStack() as stack:
        governor = GovernorClient(await stack.enter_async_context(open_channel(ctx.governor)))
        coordinators = [
            CoordinatorClient(await stack.enter_async_context(open_channel(target)))
            for target in coordinator_targets
        ]
        base = await governor.propose(
            policy_type="operational", name=ctx.name("prop-base"), rules={"base": "1"}
        )
        from_revision = int(base.result_data["revision"])
        streams = [
            GovernorClient(await stack.enter_async_context(open_channel(ctx.governor))).watch(
                from_revision=from_revision
            )
            for _ in range(k)
        ]

        async def read(index: int, call: Stream[Any]) -> None:
            async for policy in call:
                first_seen[index].setdefault(policy.revision, time.perf_counter_ns())

        readers = [asyncio.create_task(read(i, call)) for i, call in enumerate(streams)]

        async def seen_by_replica(client: CoordinatorClient, revision: int) -> int:
            while True:
                status = await client.health()
                answered = time.perf_counter_ns()
                if int(health_detail(status, "policy_revision")) >= revision:
                    return answered
                await asyncio.sleep(0.001)

        def everyone_has(revision: int) -> bool:
            return all(revision in seen for seen in first_seen)

        to_streams: list[int] = []
        to_replicas: list[int] = []
        per_subscriber: list[int] = []
        try:
            for iteration in range(opts.propagation_iterations):
                proposed = await governor.propose(
                    policy_type="operational",
                    name=ctx.name(f"prop-{iteration}"),
                    condition=condition_for(ctx.name(f"prop-svc-{iteration}")),
                    action=action,
                )
                # Quiet before timing: every subscriber and replica has the proposal.
                proposed_revision = int(proposed.result_data["revision"])
                await _wait_for(
                    functools.partial(everyone_has, proposed_revision),
                    opts.start_timeout_s,
                    "every StreamPolicies subscriber receiving the proposal",
                )
                for client in coordinators:
                    await wait_policy_revision(client, proposed_revision, opts.start_timeout_s)

                started = time.perf_counter_ns()
                enforced = await governor.enforce(proposed.resource_id)
                revision = int(enforced.result_data["revision"])
                replicas_done = await asyncio.gather(
                    *(seen_by_replica(client, revision) for client in coordinators)
                )
                await _wait_for(
                    functools.partial(everyone_has, revision),
                    opts.start_timeout_s,
                    "every StreamPolicies subscriber receiving the enforcement",
                )
                arrivals = [seen[revision] - started for seen in first_seen]
                per_subscriber.extend(arrivals)
                to_streams.append(max(arrivals))
                to_replicas.append(max(replicas_done) - started)
        finally:
            for call in streams:
                call.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    common = {"iterations": opts.propagation_iterations}
    return [
        LatencyResult(
            "policy_propagation_streams",
            f"policy propagation: enforce → all {k} StreamPolicies subscribers",
            Summary.of(to_streams),
            extra={
                **common,
                "subscribers": k,
                "per_subscriber": Summary.of(per_subscriber).as_dict(),
            },
        ),
        LatencyResult(
            "policy_propagation_coordinators",
            f"policy propagation: enforce → all {len(coordinators)} Coordinator replicas",
            Summary.of(to_replicas),
            extra={
                **common,
                "replicas": len(coordinators),
                "how": "HealthCheck policy_revision polled every ~1 ms per replica",
            },
        ),
    ]


async def _claim_lags(scheduler: SchedulerClient, prefix: str) -> dict[str, int]:
    """task id → its first attempt's start (the claim) − its scheduled time, from ListTasks."""
    claims: dict[str, int] = {}
    token = ""
    while True:
        page = await scheduler.list_page(
            task_type=TASK_TYPE, page_size=1000, page_token=token, timeout=60
        )
        for task in page.tasks:
            if task.task_id.startswith(prefix) and task.attempts:
                claims[task.task_id] = task.attempts[0].started_at_ns - task.scheduled_time_ns
        token = page.next_page_token
        if not token:
            return claims


async def dispatch_lag(ctx: Context, suite: Suite, opts: LatencyOptions) -> list[LatencyResult]:
    """N tasks due at one time T (a burst the replicas work through at their peak rate), then
    N tasks due one after another at half that peak rate (the lag of a Scheduler that keeps
    up, as the other latency scenarios run at half of their peak)."""
    n = opts.tasks
    path = str(ctx.ledger)
    async with open_channel(ctx.scheduler) as channel:
        scheduler = SchedulerClient(channel)
        semaphore = asyncio.Semaphore(32)

        async def submit(task_id: str, scheduled_ns: int) -> None:
            async with semaphore:
                await scheduler.submit(
                    task_type=TASK_TYPE,
                    task_id=task_id,
                    scheduled_time_ns=scheduled_ns,
                    priority=5,
                    timeout=60,
                )

        # Submission must end before the first task is due: lead time from the SubmitTask
        # rate (measured here, by 64 tasks parked a day ahead, when the throughput scenario
        # did not run).
        submit_rps = ctx.peak_rps.get("submit_task", 0.0)
        if submit_rps <= 0:
            parked = time.time_ns() + 86_400 * NS_PER_S
            began = time.perf_counter()
            await asyncio.gather(*(submit(ctx.name(f"lag-cal-{i}"), parked) for i in range(64)))
            submit_rps = 64 / max(1e-3, time.perf_counter() - began)
        lead_s = 2.0 + 1.5 * n / submit_rps

        async def run(prefix: str, spacing_ns: int) -> tuple[dict[str, int], dict[str, int]]:
            """Submits `n` tasks due from T on, `spacing_ns` apart; returns each one's lag to
            the executor's start and to the claim."""
            first_ns = time.time_ns() + int(lead_s * NS_PER_S)
            due = {f"{prefix}{i:05d}": first_ns + i * spacing_ns for i in range(n)}
            await asyncio.gather(*(submit(task_id, at) for task_id, at in due.items()))
            span_s = (n - 1) * spacing_ns / NS_PER_S
            starts = await wait_for_starts(path, prefix, n, lead_s + span_s + 60.0 + n / 10)
            executor = {task_id: started - due[task_id] for task_id, started in starts.items()}
            return executor, await _claim_lags(scheduler, prefix)

        burst, burst_claims = await run(ctx.name("lag") + "-", 0)
        burst_rate = n / max(1e-9, max(burst.values()) / NS_PER_S)
        steady_rate = burst_rate / 2
        steady, steady_claims = await run(ctx.name("steady") + "-", int(NS_PER_S / steady_rate))

    common = {"tasks": n, "lead_s": round(lead_s, 2)}
    burst_extra = {
        **common,
        "first_to_last_start_s": (max(burst.values()) - min(burst.values())) / NS_PER_S,
    }
    steady_extra = {**common, "offered_rate_per_s": round(steady_rate, 1)}
    at_once = f"task dispatch lag ({n} due at once)"
    spaced = f"task dispatch lag ({n} due at {steady_rate:.0f}/s, half the burst rate)"
    claim_source = "ListTasks attempts[0].started_at_ns - scheduled_time_ns"
    executor_source = "test_record ledger started_ns - scheduled time"

    def row(
        name: str, title: str, lags: dict[str, int], rate: float, extra: dict[str, Any]
    ) -> LatencyResult:
        return LatencyResult(
            name,
            title,
            Summary.of(list(lags.values())),
            rate=rate,
            rate_unit="tasks/s",
            extra=extra,
        )

    return [
        row(
            "dispatch_lag_claim",
            f"{at_once}: T → claimed (attempt started_at)",
            burst_claims,
            burst_rate,
            {**burst_extra, "source": claim_source},
        ),
        row(
            "dispatch_lag_executor",
            f"{at_once}: T → executor start",
            burst,
            burst_rate,
            {**burst_extra, "source": executor_source},
        ),
        row(
            "dispatch_lag_steady_claim",
            f"{spaced}: due → claimed",
            steady_claims,
            steady_rate,
            {**steady_extra, "source": claim_source},
        ),
        row(
            "dispatch_lag_steady_executor",
            f"{spaced}: due → executor start",
            steady,
            steady_rate,
            {**steady_extra, "source": executor_source},
        ),
    ]


LatencyScenario = Callable[[Context, Suite, LatencyOptions], Awaitable[list[LatencyResult]]]

LATENCY: dict[str, LatencyScenario] = {
    "stream_fanout": stream_fanout,
    "signal_delivery": signal_delivery,
    "policy_propagation": policy_propagation,
    "dispatch_lag": dispatch_lag,
}
