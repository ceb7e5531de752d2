"""The transactional outbox: an event is written in the same store transaction as the state
change it describes, and a relay publishes it afterwards.

So a crash between the write and the publish loses no event, and a bus outage only delays
delivery: the relay keeps retrying, and the outbox grows meanwhile. Delivery is at least once
(a relay may die after publishing and before deleting); consumers are idempotent by event id.

When the store holds the bus's log itself (the embedded default: one SQLite file for both),
the transaction appends the event to the log directly (`PublishingTransaction`): the event is
published exactly when the change commits, with no outbox document and no relay round trips.
The relay still runs there, for entries an earlier configuration left behind.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from dataclasses import dataclass

from tai.v1 import events_pb2

from tai_common.core import Clock, Unavailable, metrics, wait_event
from tai_common.messaging import events
from tai_common.ports import (
    DocumentStore,
    EventBus,
    Filter,
    IndexSpec,
    Op,
    Order,
    PublishingTransaction,
    Query,
    Transaction,
)

log = logging.getLogger(__name__)

OUTBOX = "outbox"
OUTBOX_INDEXES = (IndexSpec(OUTBOX, ("claimed_until_ns", "created_ns")),)


def add_event(tx: Transaction, topic: str, event: events_pb2.Event) -> None:
    """Publishes `event` on `topic` as part of transaction `tx`: in the transaction itself
    when the store holds the bus's log, else through an outbox entry for the relay."""
    if isinstance(tx, PublishingTransaction):
        tx.publish(events.to_message(topic, event))
        return
    tx.create(
        OUTBOX,
        event.event_id,
        {
            "topic": topic,
            "event": base64.b64encode(event.SerializeToString()).decode(),
            "created_ns": event.occurred_at_ns,
            # 0 = never claimed; a relay claims entries for a while so that two relays don't
            # publish the same entry, and a crashed relay's claims lapse.
            "claimed_until_ns": 0,
            "claimed_by": "",
        },
    )


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int = 200
    # How long a claimed batch is reserved for this relay.
    claim_seconds: float = 30.0
    # How often to look for entries nobody announced (other processes' leftovers).
    idle_poll_seconds: float = 0.5
    max_backoff_seconds: float = 5.0
    # How often the backlog gauge is refreshed (a count query) while things are healthy.
    backlog_count_seconds: float = 5.0


class OutboxRelay:
    """Publishes outbox entries to the bus, oldest first, and deletes them once published.

    Writers call `notify()` after committing, so their events go out at once; otherwise the
    relay polls every `idle_poll_seconds`. With `announced=False` (the store publishes in its
    transactions, so writers leave no entries) `notify()` does nothing and the relay only
    polls, for leftovers.
    """

    def __init__(
        self,
        store: DocumentStore,
        bus: EventBus,
        clock: Clock,
        owner: str,
        config: RelayConfig | None = None,
        *,
        announced: bool = True,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._owner = owner
        self._config = config or RelayConfig()
        self._announced = announced
        self._wake = asyncio.Event()
        self._held: list[tuple[str, str, events_pb2.Event]] = []
        self._failures = 0
        self.published_total = 0

    def notify(self) -> None:
        """Wakes the relay: an entry was just committed."""
        if self._announced:
            self._wake.set()

    async def run(self) -> None:
        """Runs until cancelled."""
        last_count = 0.0
        while True:
            await wait_event(self._wake, self._config.idle_poll_seconds)
            self._wake.clear()
            try:
                now = time.monotonic()
                if now - last_count >= self._config.backlog_count_seconds or self._failures:
                    last_count = now
                    metrics.OUTBOX_BACKLOG.set(await self.backlog())
                await self.drain()
                self._failures = 0
            except Unavailable as error:
                metrics.BUS_PUBLISH_FAILURES.inc()
                self._failures += 1
                delay = min(self._config.max_backoff_seconds, 0.05 * 2 ** min(self._failures, 8))
                if self._failures == 1:
                    log.warning("outbox relay: cannot publish yet (%s); retrying", error)
                await asyncio.sleep(delay)
                self._wake.set()

    async def drain(self) -> int:
        """Publishes every entry currently claimable; returns how many were published."""
        published = 0
        while True:
            if not self._held:
                self._held = await self._claim()
            if not self._held:
                return published
            with metrics.BUS_PUBLISH_SECONDS.time():
                await self._bus.publish_many(
                    [events.to_message(topic, event) for _, topic, event in self._held]
                )
            ids = [entry_id for entry_id, _, _ in self._held]
            await self._store.run_transaction(functools.partial(_delete_all, ids=ids))
            published += len(ids)
            self.published_total += len(ids)
            self._held = []

    async def backlog(self) -> int:
        """Entries not yet published."""
        return await self._store.count(OUTBOX)

    async def _claim(self) -> list[tuple[str, str, events_pb2.Event]]:
        now = self._clock.now_ns()
        until = now + int(self._config.claim_seconds * 1e9)
        # Candidates come from a query outside the transaction, which then reads them by key:
        # on Firestore a query inside a transaction locks the whole collection, so every
        # writer's outbox entry would wait for the claim, and for a minute when the claiming
        # process dies holding the lock. By key, only the claimed entries are locked.
        candidates = await self._store.query(
            Query(
                OUTBOX,
                filters=(Filter("claimed_until_ns", Op.LE, now),),
                order_by=(Order("claimed_until_ns"), Order("created_ns")),
                limit=self._config.batch_size,
            )
        )
        if not candidates.documents:
            return []
        ids = [doc.id for doc in candidates.documents]

        async def claim(tx: Transaction) -> list[tuple[str, str, events_pb2.Event]]:
            claimed = []
            for doc in await tx.get_many(OUTBOX, ids):
                # Deleted (published) or claimed by another relay since the query: skip it.
                if int(doc.data["claimed_until_ns"]) > now:
                    continue
                tx.set(
                    OUTBOX,
                    doc.id,
                    {**doc.data, "claimed_until_ns": until, "claimed_by": self._owner},
                )
                event = events_pb2.Event()
                event.ParseFromString(base64.b64decode(doc.data["event"]))
                claimed.append((doc.id, str(doc.data["topic"]), event))
            return claimed

        entries = await self._store.run_transaction(claim)
        # Oldest first, whatever order the claims came in.
        entries.sort(key=lambda entry: entry[2].occurred_at_ns)
        return entries


async def _delete_all(tx: Transaction, ids: list[str]) -> None:
    for entry_id in ids:
        tx.delete(OUTBOX, entry_id)
