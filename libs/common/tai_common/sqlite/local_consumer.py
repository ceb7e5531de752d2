"""The embedded bus's consumer when one process owns the SQLite file (`SqliteBus.open(...,
single_process=True)`, what `tai-server` runs).

With no other process on the file, nothing needs a lease in the database: a message is read
from the log once the transaction that appended it commits, handed to the handler, and settled
in memory. Only the subscription's cursor is written, for every subscription at once, a few
times a second (`SqliteBus` flushes it), so a consumer costs no write transaction per message.
The log stays the durable record: after a crash or restart a consumer resumes from its last
written cursor and sees again what it had not settled then, delivery is at least once as on
every other bus.

What a shared-file consumer keeps in `bus_deliveries` lives here in memory: the attempts of each
unsettled message, its lease (a handler still running at the ack deadline loses the message,
which is delivered again and the late outcome dropped, as on Pub/Sub), its backoff after a
nack, which ordering keys are busy. Attempts start again from 1 after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

from tai_common.core import Clock, wait_event
from tai_common.core.units import NS_PER_SECOND
from tai_common.ports import (
    DEAD_LETTER_DELIVERY_ATTEMPTS,
    DEAD_LETTER_SOURCE_MESSAGE_ID,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    Handler,
    Message,
    OutgoingMessage,
    SubscriptionSpec,
)

logger = logging.getLogger(__name__)

# Unsettled messages a consumer holds in memory at most; it reads on as they settle.
WINDOW: Final = 1000
_MAX_ERROR_BACKOFF_SECONDS: Final = 5.0

READ_SQL: Final = """
    SELECT seq, message_id, ordering_key, attributes, data, publish_time_ns
    FROM bus_messages
    WHERE topic = ? AND seq > ?
    ORDER BY seq
    LIMIT ?
"""

# (seq, message_id, ordering_key, attributes, data, publish_time_ns), attributes decoded.
Row = tuple[int, str, str, dict[str, str], bytes, int]


@dataclass
class _Unsettled:
    seq: int
    message_id: str
    ordering_key: str
    attributes: dict[str, str]
    data: bytes
    publish_time_ns: int
    attempts: int = 0
    # Not before this: a nack's backoff, or while running the end of its lease.
    visible_at_ns: int = 0
    running: bool = False


async def finish_or_cancel(handlers: Collection[asyncio.Task[None]], timeout: float) -> None:
    """Lets running handlers finish for up to `timeout` seconds (a consumer's ack deadline),
    then cancels those still running and waits for them to end."""
    if not handlers:
        return
    _, running = await asyncio.wait(set(handlers), timeout=timeout)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


class LocalConsumer:
    """One subscription's consumer inside the process that owns the file.

    `read` fetches the messages past a seq (one read on the bus's connection); `publish`
    appends dead letters. Both come from the bus, which also calls `flushed` after it wrote
    `cursor`.
    """

    def __init__(
        self,
        spec: SubscriptionSpec,
        handler: Handler,
        *,
        cursor: int,
        clock: Clock,
        read: Callable[[str, int, int], Awaitable[list[Row]]],
        publish: Callable[[list[OutgoingMessage]], Awaitable[Any]],
        on_closed: Callable[[LocalConsumer], Awaitable[None]],
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._clock = clock
        self._read = read
        self._publish = publish
        self._on_closed = on_closed
        # Every message with seq <= cursor is settled; `persisted` is what the file has.
        self.cursor = cursor
        self.persisted = cursor
        # The last seq read into `_unsettled`.
        self._read_to = cursor
        # Insertion order is seq order.
        self._unsettled: dict[int, _Unsettled] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        # Whether the last read left messages in the log (the window was full).
        self._behind = False
        self._task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None

    @property
    def topic(self) -> str:
        return self._spec.topic

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def durable(self) -> bool:
        """Whether its cursor is kept in the file (ephemeral subscriptions live in memory)."""
        return not self._spec.ephemeral

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"sqlite-bus-local-{self.name}")

    async def close(self) -> None:
        """Stops taking messages and waits for the handlers (at most the ack deadline; those
        still running then are cancelled, their messages left for the next start)."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await finish_or_cancel(self._inflight, self._spec.ack_deadline_seconds)
        await self._on_closed(self)

    async def _loop(self) -> None:
        failures = 0
        while not self._closed.is_set():
            if self._spec.batch_delay_seconds > 0 and not self._behind:
                # As on the shared file: handlers in no hurry (the audit log) get their
                # messages in fewer, larger batches.
                await wait_event(self._closed, self._spec.batch_delay_seconds)
                if self._closed.is_set():
                    break
            self._wake.clear()
            try:
                next_due_ns = await self._step()
                failures = 0
            except Exception:
                failures += 1
                logger.exception("event bus consumer %r failed; retrying", self.name)
                next_due_ns = self._clock.now_ns() + int(
                    min(0.05 * 2**failures, _MAX_ERROR_BACKOFF_SECONDS) * NS_PER_SECOND
                )
            if self._closed.is_set():
                break
            if self._behind and self._capacity() > 0 and len(self._unsettled) < WINDOW:
                continue
            timeout = None
            if next_due_ns is not None:
                timeout = max(next_due_ns - self._clock.now_ns(), 0) / NS_PER_SECOND + 0.001
            await wait_event(self._wake, timeout)

    def _capacity(self) -> int:
        return self._spec.max_concurrency - len(self._inflight)

    async def _step(self) -> int | None:
        """Reads new messages, starts what may start; returns when a backoff ends (ns)."""
        room = WINDOW - len(self._unsettled)
        if room > 0:
            rows = await self._read(self.topic, self._read_to, room)
            self._behind = len(rows) >= room
            for seq, message_id, key, attributes, data, published in rows:
                self._read_to = seq
                if self._spec.wants(attributes):
                    self._unsettled[seq] = _Unsettled(
                        seq, message_id, key, attributes, data, published
                    )
            self._advance()
        now = self._clock.now_ns()
        blocked: set[str] = set()
        dead: list[_Unsettled] = []
        next_due_ns: int | None = None
        for entry in list(self._unsettled.values()):
            if entry.ordering_key and entry.ordering_key in blocked:
                continue
            if entry.running and entry.visible_at_ns <= now:
                # Its handler overran the ack deadline: the message is free again.
                entry.running = False
            if entry.running or entry.visible_at_ns > now:
                due = entry.visible_at_ns
                next_due_ns = due if next_due_ns is None else min(next_due_ns, due)
                blocked.add(entry.ordering_key)
                continue
            if entry.attempts >= self._spec.max_delivery_attempts:
                dead.append(entry)
                blocked.add(entry.ordering_key)
                continue
            if self._capacity() <= 0:
                break
            entry.running = True
            entry.attempts += 1
            entry.visible_at_ns = now + int(self._spec.ack_deadline_seconds * NS_PER_SECOND)
            blocked.add(entry.ordering_key)
            task = asyncio.create_task(self._deliver(entry, entry.attempts))
            self._inflight.add(task)
        if dead:
            await self._dead_letter(dead)
        return next_due_ns

    async def _dead_letter(self, dead: list[_Unsettled]) -> None:
        await self._publish(
            [
                OutgoingMessage(
                    topic=self._spec.dead_letter,
                    data=entry.data,
                    ordering_key=entry.ordering_key,
                    attributes=entry.attributes
                    | {
                        DEAD_LETTER_SOURCE_SUBSCRIPTION: self.name,
                        DEAD_LETTER_SOURCE_MESSAGE_ID: entry.message_id,
                        DEAD_LETTER_DELIVERY_ATTEMPTS: str(entry.attempts),
                    },
                )
                for entry in dead
            ]
        )
        for entry in dead:
            logger.warning(
                "message %s of subscription %r failed %d deliveries; sent to %r",
                entry.message_id,
                self.name,
                entry.attempts,
                self._spec.dead_letter,
            )
            del self._unsettled[entry.seq]
        self._advance()
        # Its ordering keys may now proceed.
        self._wake.set()

    async def _deliver(self, entry: _Unsettled, attempt: int) -> None:
        message = Message(
            message_id=entry.message_id,
            topic=self.topic,
            data=entry.data,
            ordering_key=entry.ordering_key,
            attributes=entry.attributes,
            publish_time_ns=entry.publish_time_ns,
            delivery_attempt=attempt,
        )

        # Whether this delivery still holds the message (no redelivery after its deadline,
        # no settlement since).
        def current() -> bool:
            return entry.running and entry.attempts == attempt and entry.seq in self._unsettled

        try:
            await self._handler(message)
        except asyncio.CancelledError:
            if current():
                # Given back without counting the attempt; the next start delivers it again.
                entry.attempts -= 1
                entry.running = False
                entry.visible_at_ns = 0
            raise
        except Exception:
            logger.warning(
                "handler of subscription %r failed on message %s (attempt %d)",
                self.name,
                entry.message_id,
                attempt,
                exc_info=True,
            )
            if current():
                entry.running = False
                entry.visible_at_ns = 0
                if attempt < self._spec.max_delivery_attempts:
                    delay = min(
                        self._spec.min_backoff_seconds * 2 ** (attempt - 1),
                        self._spec.max_backoff_seconds,
                    )
                    entry.visible_at_ns = self._clock.now_ns() + int(delay * NS_PER_SECOND)
        else:
            # A late ack (after a redelivery) is dropped, as Pub/Sub drops acks of lapsed
            # leases: the newer delivery settles the message.
            if current():
                del self._unsettled[entry.seq]
                self._advance()
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._inflight.discard(task)
            self._wake.set()

    def _advance(self) -> None:
        """Moves the cursor over the settled prefix (the bus writes it on its next flush)."""
        first = next(iter(self._unsettled), None)
        self.cursor = self._read_to if first is None else first - 1
