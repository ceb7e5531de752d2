"""The steady load chaos keeps on the suite while it injects faults, and the stream clients
that must resume after each one.

- Paced callers (a new call every 1/rate s, never waiting for the previous one, so a stalled
  service does not slow the pace): `SubmitSignal` (each matches one of two enforced policies
  and so makes an action for one of two target services), `SubmitTask` (the test executor that
  records each run in a ledger), `ProposePolicy` (each a new policy revision) and `GetPolicy`
  (a cached read). Every call's outcome is logged with its time, so the report can give each
  fault window's error rate; every accepted write's receipt is kept for the checks.
- On demand (a fault's), back-to-back writers: callers that each keep a `SubmitSignal` or a
  `SubmitTask` in flight, so that a kill lands among writes just accepted and writes under way.
- Two `StreamActions` clients, one per target service, acknowledge every action they receive;
  two `StreamPolicies` clients record every revision. When a stream breaks, its client
  reconnects (StreamPolicies from the last revision it saw, as a real client resumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, SchedulerClient, Stream, TaiError

T = TypeVar("T")
# One target service per StreamActions client, so each client's liveness can be checked (the
# actions of one service go to whichever of its streams a replica picks).
TARGET_SERVICES = ("chaos-target-0", "chaos-target-1")
TASK_TYPE = "test_record"
# Every call's deadline: a fault shows up as errors, not as calls that hang for ever.
CALL_TIMEOUT_S = 10.0
# Undelivered or unacknowledged actions come back this soon (a stream that broke mid-way)...
ACK_DEADLINE_S = 5
# ...as often as a run's faults may need; an action never expires during a run.
MAX_DELIVERIES = 100
# A stream client reconnects after this, doubling up to the max while connections fail.
RECONNECT_DELAY_S = 0.2
MAX_RECONNECT_DELAY_S = 2.0


@dataclass(frozen=True)
class Rates:
    """Calls per second of each kind."""

    signals: float = 10.0
    tasks: float = 5.0
    proposals: float = 0.5
    reads: float = 10.0


@dataclass(frozen=True)
class CallOutcome:
    at: float  # time.monotonic() when the call ended
    method: str
    code: str  # a grpc.StatusCode name, "OK" included


@dataclass
class StreamClient:
    """One stream client's record: how often it connected, how each connection ended, and
    when it last received something."""

    name: str
    connects: int = 0
    breaks: list[str] = field(default_factory=list)
    received: int = 0
    last_received_at: float = 0.0


@dataclass
class Writers:
    """Callers started by `Workload.start_writers`: how many of their writes were accepted so
    far, how many are in flight now."""

    accepted: int = 0
    in_flight: int = 0
    stopped: bool = False
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Each caller ends once its call in flight does."""
        self.stopped = True

    def count_accepted(self) -> None:
        self.accepted += 1
        self._progress.set()

    async def wait_accepted(self, count: int, timeout: float) -> None:
        """Returns once `count` writes were accepted, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.accepted < count:
                    self._progress.clear()
                    await self._progress.wait()


@dataclass
class PolicyReceipt:
    policy_id: str
    version: int
    revision: int


class Workload:
    def __init__(
        self,
        run_id: str,
        governor: grpc.aio.Channel,
        coordinator: grpc.aio.Channel,
        scheduler: grpc.aio.Channel,
        rates: Rates,
        action_stream_channels: list[grpc.aio.Channel],
    ) -> None:
        """`action_stream_channels`: one Coordinator channel per StreamActions client."""
        self.run_id = run_id
        self._action_streams = [CoordinatorClient(c) for c in action_stream_channels]
        self.rates = rates
        self.governor = GovernorClient(governor)
        self.coordinator = CoordinatorClient(coordinator)
        self.scheduler = SchedulerClient(scheduler)
        self.outcomes: list[CallOutcome] = []
        # Accepted writes (an OK receipt), by id.
        self.signals: dict[str, common_pb2.Receipt] = {}
        self.tasks: dict[str, common_pb2.Receipt] = {}
        self.policies: list[PolicyReceipt] = []
        # What the stream clients saw.
        self.actions_received: dict[str, int] = {}  # action id -> times received
        self.revisions_seen: dict[str, set[int]] = {}
        self.streams: dict[str, StreamClient] = {}
        self.matching_policy_id = ""
        # The last revision of the setup; the stream clients start after it.
        self.setup_revision = 0
        self._sequence = itertools.count()
        self._signal_count = itertools.count()
        self._producers: list[asyncio.Task[None]] = []
        self._streams: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[Any]] = set()

    # --- setup and lifecycle -------------------------------------------------------------

    async def setup(self) -> None:
        """Enforces the policies the signals match, one per target service."""
        for target in TARGET_SERVICES:
            receipt = await self.governor.propose(
                policy_type="operational",
                name=f"chaos-{self.run_id}-scale-{target}",
                condition=(
                    'signal.type == "alert" && signal.priority >= 8 && '
                    f'signal.metadata["service"] == "{target}"'
                ),
                action=governor_pb2.ActionTemplate(
                    action_type="scale",
                    target_service=target,
                    parameters={"replicas": "+1"},
                    cooldown_seconds=0,
                    ack_deadline_seconds=ACK_DEADLINE_S,
                    max_deliveries=MAX_DELIVERIES,
                ),
            )
            enforced = await self.governor.enforce(receipt.resource_id)
            self.matching_policy_id = receipt.resource_id
            self.policies.append(
                PolicyReceipt(
                    receipt.resource_id,
                    enforced.resource_version,
                    int(enforced.result_data["revision"]),
                )
            )
        self.setup_revision = self.policies[-1].revision

    def start_streams(self) -> None:
        for index, target in enumerate(TARGET_SERVICES):
            self._streams.append(
                asyncio.create_task(
                    self._follow_actions(f"actions-{index}", target, self._action_streams[index])
                )
            )
            self._streams.append(asyncio.create_task(self._follow_policies(f"policies-{index}")))

    def start_load(self) -> None:
        self._producers = [
            asyncio.create_task(self._paced(self.rates.signals, self._submit_signal)),
            asyncio.create_task(self._paced(self.rates.tasks, self._submit_task)),
            asyncio.create_task(self._paced(self.rates.proposals, self._propose)),
            asyncio.create_task(self._paced(self.rates.reads, self._read)),
        ]

    async def stop_load(self) -> None:
        """Stops the callers and waits for the calls in flight to end."""
        for task in self._producers:
            task.cancel()
        await asyncio.gather(*self._producers, return_exceptions=True)
        await asyncio.gather(*list(self._calls), return_exceptions=True)

    async def close(self) -> None:
        await self.stop_load()
        for task in self._streams:
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)

    # --- the load ------------------------------------------------------------------------

    async def _paced(self, rate: float, call: Callable[[], Coroutine[Any, Any, object]]) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate
        next_at = loop.time()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self._spawn(call())

    def _spawn(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Runs a call as one of the load's (stop_load waits for it)."""
        task = asyncio.create_task(call)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    def start_writers(self, writers: int) -> Writers:
        """Starts `writers` callers beside the paced load that each submit a signal, then a
        task, then a signal..., one call after the other, until stopped: `writers` writes are
        in flight at any moment (their outcomes and receipts are kept as the load's are)."""
        state = Writers()

        async def write() -> None:
            calls = itertools.cycle((self._submit_signal, self._submit_task))
            while not state.stopped:
                state.in_flight += 1
                try:
                    accepted = await next(calls)()
                finally:
                    state.in_flight -= 1
                if accepted:
                    state.count_accepted()

        for _ in range(writers):
            self._spawn(write())
        return state

    async def _outcome(self, method: str, call: Awaitable[Any]) -> Any | None:
        """Awaits `call`, logs its outcome, and returns its result (None when it failed)."""
        try:
            result = await call
        except TaiError as error:
            self.outcomes.append(CallOutcome(time.monotonic(), method, error.code.name))
            return None
        self.outcomes.append(CallOutcome(time.monotonic(), method, "OK"))
        return result

    def _next_id(self, kind: str) -> str:
        return f"chaos-{self.run_id}-{kind}-{next(self._sequence):06d}"

    async def _submit_signal(self) -> bool:
        signal_id = self._next_id("signal")
        target = TARGET_SERVICES[next(self._signal_count) % len(TARGET_SERVICES)]
        receipt = await self._outcome(
            "SubmitSignal",
            self.coordinator.submit_signal(
                signal_id=signal_id,
                signal_type="alert",
                priority=9,
                metadata={"service": target},
                source="chaos",
                timeout=CALL_TIMEOUT_S,
            ),
        )
        if receipt is None:
            return False
        self.signals[signal_id] = receipt
        return True

    async def _submit_task(self) -> bool:
        task_id = self._next_id("task")
        receipt = await self._outcome(
            "SubmitTask",
            self.scheduler.submit(
                task_id=task_id,
                task_type=TASK_TYPE,
                # Long enough that a killed replica is likely to hold a running attempt.
                parameters={"sleep_ms": "200"},
                timeout=CALL_TIMEOUT_S,
            ),
        )
        if receipt is None:
            return False
        self.tasks[task_id] = receipt
        return True

    async def _propose(self) -> None:
        name = self._next_id("policy")
        receipt = await self._outcome(
            "ProposePolicy",
            self.governor.propose(
                policy_type="operational",
                name=name,
                # Matches nothing the load sends: only its revision matters.
                condition=f'signal.metadata["service"] == "{name}"',
                action=governor_pb2.ActionTemplate(action_type="notify", target_service=name),
                request_id=name,
                timeout=CALL_TIMEOUT_S,
            ),
        )
        if receipt is not None:
            self.record_policy(receipt)

    def record_policy(self, receipt: common_pb2.Receipt) -> None:
        self.policies.append(
            PolicyReceipt(
                receipt.resource_id, receipt.resource_version, int(receipt.result_data["revision"])
            )
        )

    async def _read(self) -> None:
        await self._outcome(
            "GetPolicy",
            self.governor.get(self.matching_policy_id, timeout=CALL_TIMEOUT_S),
        )

    # --- the stream clients --------------------------------------------------------------

    async def _follow_actions(self, name: str, target: str, client: CoordinatorClient) -> None:
        def received(action: coordinator_pb2.Action) -> None:
            self.actions_received[action.id] = self.actions_received.get(action.id, 0) + 1
            self._spawn(self._acknowledge(action.id))

        await self._follow(name, lambda: client.stream_actions(target), received)

    async def _acknowledge(self, action_id: str) -> None:
        # A lost acknowledgement is not retried here: the action comes back after its
        # deadline, as it would to any client, and is acknowledged then.
        await self._outcome(
            "AcknowledgeAction",
            self.coordinator.acknowledge(action_id, "completed", timeout=CALL_TIMEOUT_S),
        )

    async def _follow_policies(self, name: str) -> None:
        seen = self.revisions_seen[name] = set()
        await self._follow(
            name,
            # Resume after the last revision received; the first time, snapshot then changes.
            lambda: self.governor.watch(
                policy_type="operational", from_revision=max(seen, default=0)
            ),
            lambda policy: seen.add(policy.revision),
        )

    async def _follow(
        self,
        name: str,
        open_stream: Callable[[], Stream[Any]],
        received: Callable[[Any], None],
    ) -> None:
        """Reads a stream, and opens it again whenever it ends, as a client would."""
        stream = self.streams[name] = StreamClient(name)
        delay = RECONNECT_DELAY_S
        while True:
            call = open_stream()
            stream.connects += 1
            try:
                async for message in call:
                    delay = RECONNECT_DELAY_S
                    stream.received += 1
                    stream.last_received_at = time.monotonic()
                    received(message)
                stream.breaks.append("OK")  # the server ended it (a graceful shutdown)
            except TaiError as error:
                stream.breaks.append(error.code.name)
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RECONNECT_DELAY_S)


async def close_quietly(*channels: grpc.aio.Channel) -> None:
    for channel in channels:
        with contextlib.suppress(Exception):
            await channel.close()
