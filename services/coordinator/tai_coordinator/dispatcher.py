"""Delivery of actions to the `StreamActions` streams connected to this replica.

For each target service with at least one stream here, one loop claims the service's due
actions (a store transaction per action, so replicas compete safely: each delivery goes to one
stream somewhere), hands them to the least busy local stream, and sleeps until the next action
falls due — an action's ack deadline passing makes it due again, until it runs out of
deliveries and expires. Loops wake at once when this replica creates an action, and on the
`action.created` and `action.released` events replicas publish.

An action this replica creates for a service with a stream here is written already DELIVERED
by the transaction that creates it, and handed out as soon as that commits (`hand_out`): the
claim transaction, the wake-up and the query are skipped on the path whose latency users see.
Either way the DELIVERED transition is written by `deliver_in`.

Everything is per namespace: a loop serves one (namespace, target service), runs inside that
namespace (its task is started from the stream's call, which works in it), and hands out only
that namespace's actions, so a stream never carries another namespace's actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from tai.v1 import events_pb2
from tai_common.core import Clock, continued, wait_event
from tai_common.core.namespace import current_namespace
from tai_common.core.units import ns_to_seconds
from tai_common.messaging import events
from tai_common.ports import DocumentStore, Transaction

from tai_coordinator import metrics
from tai_coordinator.model import Action
from tai_coordinator.repository import CoordinatorRepository

log = logging.getLogger(__name__)

CLAIM_BATCH = 100
# Even with no known due action, look again this often: the safety net for a missed wake-up.
MAX_SLEEP_SECONDS = 1.0
SINK_SIZE = 1000


class Sink:
    """One stream's queue of actions to send."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Action] = asyncio.Queue(SINK_SIZE)

    def offer(self, action: Action) -> bool:
        try:
            self.queue.put_nowait(action)
        except asyncio.QueueFull:
            return False
        return True

    def drain(self) -> list[Action]:
        pending = []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        return pending


# How many of the actions it handed out with their commit a replica remembers (`hand_out`):
# far more than arrive within the actions subscription's batch delay at any rate.
HANDED_OUT_REMEMBERED = 10_000

# A loop's key: (namespace, target service).
_LoopKey = tuple[str, str]


@dataclass
class _ServiceLoop:
    sinks: list[Sink] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ActionDispatcher:
    # The action events `on_action_event` acts on (its subscription's filter): those that make
    # an action due at once.
    WAKING_EVENTS: tuple[str, ...] = ("action.created", "action.released", "action.approved")
    # How long that subscription lets events gather. An action for a stream on this replica
    # goes out with its own commit; these events only matter for the actions other replicas
    # create, which reach a stream here up to this much later. Taking each commit's events as
    # it came cost this replica a claim and an acknowledgement per signal: 1.4 of its 5.1 ms of
    # CPU per signal at 150/s.
    WAKING_BATCH_DELAY_SECONDS = 0.025

    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        event_factory: events.EventFactory,
        on_committed: Callable[[], None],
    ) -> None:
        """`on_committed` wakes the outbox relay after each delivery is recorded."""
        self._store = store
        self._repo = CoordinatorRepository(store, event_factory)
        self._clock = clock
        self._on_committed = on_committed
        self._loops: dict[_LoopKey, _ServiceLoop] = {}
        # Actions this replica created delivered and handed out (`hand_out`), oldest first:
        # their `action.created` event, coming back over the bus, has nothing left to wake a
        # loop for. Under a steady 500 actions/s each such wake cost a service's loop two
        # queries, and the reader's thread fell seconds behind.
        self._handed_out: dict[_LoopKey, None] = {}

    @contextlib.contextmanager
    def connect(self, service_name: str) -> Iterator[Sink]:
        """Registers a stream of `service_name` in the current namespace for as long as the
        context is open. Actions claimed for it but not yet sent when it closes are made due
        again at once."""
        key = (current_namespace(), service_name)
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = _ServiceLoop()
            # The task inherits the call's namespace: its store reads are the namespace's.
            loop.task = asyncio.create_task(
                self._run(key, loop), name=f"dispatch-{key[0]}-{service_name}"
            )
        sink = Sink()
        loop.sinks.append(sink)
        loop.wake.set()
        metrics.ACTION_STREAMS.inc()
        try:
            yield sink
        finally:
            metrics.ACTION_STREAMS.dec()
            loop.sinks.remove(sink)
            unsent = sink.drain()
            if unsent:
                asyncio.get_running_loop().create_task(self._release(unsent))
            if not loop.sinks:
                loop.wake.set()  # lets the loop see it has no stream left and end

    def deliver_in(
        self, tx: Transaction, action: Action, now_ns: int, *, create: bool = False
    ) -> Action:
        """Writes in `tx` that `action` is delivered now (with its `action.delivered` event)
        and returns it so; `create`: the action is not stored yet (it is created delivered)."""
        delivered = action.delivered(now_ns)
        self._repo.write_action_in(tx, "action.delivered", delivered, action.status, create=create)
        return delivered

    def has_stream_for(self, service_name: str) -> bool:
        """Whether a stream of `service_name` in the current namespace is connected to this
        replica."""
        loop = self._loops.get((current_namespace(), service_name))
        return loop is not None and bool(loop.sinks)

    def hand_out(self, actions: Sequence[Action]) -> None:
        """Sends actions their committed transaction already marked DELIVERED to the local
        streams; one no stream takes any more (it closed meanwhile) is released."""
        refused: list[Action] = []
        namespace = current_namespace() if actions else ""
        for action in actions:
            with self._delivery_span(action):
                loop = self._loops.get((namespace, action.target_service))
                if loop is None or not self._hand_out(loop, action):
                    refused.append(action)
                    continue
            self._count_delivery(action)
            self._handed_out[(namespace, action.id)] = None
            if len(self._handed_out) > HANDED_OUT_REMEMBERED:
                del self._handed_out[next(iter(self._handed_out))]
        if refused:
            asyncio.get_running_loop().create_task(self._release(refused))

    def notify(self, actions: Sequence[Action]) -> None:
        """Actions were created or changed in the current namespace: wake the loops of their
        services there."""
        namespace = current_namespace() if actions else ""
        for action in actions:
            loop = self._loops.get((namespace, action.target_service))
            if loop is not None:
                loop.wake.set()

    async def on_action_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to action events (run inside the
        event's namespace)."""
        if event.event_type not in self.WAKING_EVENTS:
            return
        payload = events.unpack(event, events_pb2.ActionEvent)
        namespace = current_namespace()
        if (
            event.event_type == "action.created"
            and self._handed_out.pop((namespace, payload.action.id), "absent") is None
        ):
            return  # this replica delivered it with its commit
        loop = self._loops.get((namespace, payload.action.target_service))
        if loop is not None:
            loop.wake.set()

    async def close(self) -> None:
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()

    async def _run(self, key: _LoopKey, loop: _ServiceLoop) -> None:
        namespace, service_name = key
        failures = 0
        try:
            while loop.sinks:
                loop.wake.clear()
                try:
                    sleep = await self._deliver_due(service_name, loop)
                    failures = 0
                except Exception:
                    failures += 1
                    log.exception(
                        "delivering actions of %s in namespace %s failed; retrying",
                        service_name,
                        namespace,
                    )
                    sleep = min(MAX_SLEEP_SECONDS * 5, 0.05 * 2**failures)
                if loop.sinks and not loop.wake.is_set():
                    await wait_event(loop.wake, sleep)
        finally:
            if self._loops.get(key) is loop:
                del self._loops[key]

    async def _deliver_due(self, service_name: str, loop: _ServiceLoop) -> float:
        """Claims and hands out what is due; returns how long to sleep."""
        while loop.sinks:
            now = self._clock.now_ns()
            due = await self._repo.due_actions(service_name, now, CLAIM_BATCH)
            if not due:
                break
            # Claimed concurrently, so the claims share the store's group commits; handed out
            # in the order they were due. Claims a closing stream can no longer take go back.
            claims = await asyncio.gather(*(self._claim_traced(service_name, a) for a in due))
            refused = [c for c in claims if c is not None and not self._hand_out(loop, c)]
            if refused:
                await self._release(refused)
            if not loop.sinks:
                return 0.0
            if len(due) < CLAIM_BATCH:
                break
        following = await self._repo.next_delivery_ns(service_name)
        if following is None:
            return MAX_SLEEP_SECONDS
        return max(0.0, min(MAX_SLEEP_SECONDS, ns_to_seconds(following - self._clock.now_ns())))

    async def _claim_traced(self, service_name: str, action: Action) -> Action | None:
        with self._delivery_span(action):
            return await self._claim(action.id, action.version)

    @staticmethod
    def _delivery_span(action: Action) -> contextlib.AbstractContextManager[trace.Span]:
        # The delivery continues the trace of the call that created the action.
        return continued(
            f"deliver action {action.action_type}",
            action.trace_context,
            kind=trace.SpanKind.PRODUCER,
            attributes={"tai.action.target_service": action.target_service},
        )

    @staticmethod
    def _count_delivery(delivered: Action) -> None:
        metrics.ACTION_TRANSITIONS.labels(status="DELIVERED").inc()
        if delivered.delivery_count == 1:
            metrics.ACTION_DELIVERY.labels(stage="created_to_delivered").observe(
                ns_to_seconds(max(0, delivered.updated_at_ns - delivered.created_at_ns))
            )

    @staticmethod
    def _hand_out(loop: _ServiceLoop, action: Action) -> bool:
        return any(sink.offer(action) for sink in sorted(loop.sinks, key=lambda s: s.queue.qsize()))

    async def _claim(self, action_id: str, expected_version: int) -> Action | None:
        """Marks a due action DELIVERED (or EXPIRED once out of deliveries) if nobody changed
        it since it was read at `expected_version`; returns it when it should be sent."""

        expired_now: list[str] = []

        async def apply(tx: Transaction) -> Action | None:
            expired_now.clear()
            action = await self._repo.action_in(tx, action_id)
            now = self._clock.now_ns()
            if action is None or action.version != expected_version or not action.is_due(now):
                return None
            if action.exhausted:
                expired = action.expired(now)
                self._repo.write_action_in(tx, "action.expired", expired, action.status)
                expired_now.append(action.id)
                return None
            return self.deliver_in(tx, action, now)

        claimed = await self._store.run_transaction(apply)
        self._on_committed()
        if expired_now:
            metrics.ACTION_TRANSITIONS.labels(status="EXPIRED").inc()
        if claimed is not None:
            self._count_delivery(claimed)
        return claimed

    async def _release(self, actions: Sequence[Action]) -> None:
        """Makes delivered actions due again at once (their stream closed before sending),
        with an `action.released` event that wakes the loops of their service."""
        for action in actions:

            async def apply(tx: Transaction, action: Action = action) -> None:
                current = await self._repo.action_in(tx, action.id)
                if current is not None and current.version == action.version:
                    released = current.released(self._clock.now_ns())
                    self._repo.write_action_in(tx, "action.released", released, current.status)

            try:
                await self._store.run_transaction(apply)
            except Exception:
                # Not fatal: the action falls due again when its ack deadline passes.
                log.warning("could not release action %s early", action.id, exc_info=True)
        self._on_committed()
