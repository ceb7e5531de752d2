"""The transactional outbox's relay: an event written with the change it describes
(`Transaction.publish`) is published afterwards, from the outbox document the store wrote (its
format: `tai_common.ports.publishing`).

So a crash between the write and the publish loses no event, and a bus outage only delays
delivery: the relay keeps retrying, and the outbox grows meanwhile. Delivery is at least once
(a relay may die after publishing and before deleting); consumers are idempotent by event id.

A store that holds the bus's log itself (the embedded default: one SQLite file for both)
publishes in the commit and writes no outbox document (`DocumentStore.publishes_through_outbox`
is False). The relay still runs there, polling for entries an earlier configuration left
behind, and ignores `notify()`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

from tai_common.core import Clock, Unavailable, metrics, wait_event
from tai_common.core.units import seconds_to_ns
from tai_common.ports import (
    OUTBOX,
    OUTBOX_INDEXES,
    DocumentStore,
    EventBus,
    Filter,
    Op,
    Order,
    OutboxEntry,
    Query,
    Transaction,
    claimed_document,
    event_message,
    read_outbox_entry,
)

__all__ = ["OUTBOX", "OUTBOX_INDEXES", "OutboxRelay", "RelayConfig"]

log = logging.getLogger(__name__)


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
    relay polls every `idle_poll_seconds`. When the store publishes in its commits (its
    `publishes_through_outbox` is False, so writers leave no entries) `notify()` does nothing
    and the relay only polls, for leftovers.
    """

    def __init__(
        self,
        store: DocumentStore,
        bus: EventBus,
        clock: Clock,
        owner: str,
        config: RelayConfig | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._owner = owner
        self._config = config or RelayConfig()
        # Read once: whether writers leave entries is fixed when the store is opened.
        self._announced = store.publishes_through_outbox
        self._wake = asyncio.Event()
        self._held: list[OutboxEntry] = []
        self._failures = 0

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
                    [event_message(entry.topic, entry.event) for entry in self._held]
                )
            ids = [entry.id for entry in self._held]
            await self._store.run_transaction(functools.partial(_delete_all, ids=ids))
            published += len(ids)
            self._held = []

    async def backlog(self) -> int:
        """Entries not yet published."""
        return await self._store.count(OUTBOX)

    async def _claim(self) -> list[OutboxEntry]:
        now = self._clock.now_ns()
        until = now + seconds_to_ns(self._config.claim_seconds)
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

        async def claim(tx: Transaction) -> list[OutboxEntry]:
            claimed = []
            for doc in await tx.get_many(OUTBOX, ids):
                entry = read_outbox_entry(doc)
                # Deleted (published) or claimed by another relay since the query: skip it.
                if entry.claimed_until_ns > now:
                    continue
                tx.set(OUTBOX, doc.id, claimed_document(doc, until, self._owner))
                claimed.append(entry)
            return claimed

        entries = await self._store.run_transaction(claim)
        # Oldest first, whatever order the claims came in.
        entries.sort(key=lambda entry: entry.event.occurred_at_ns)
        return entries


async def _delete_all(tx: Transaction, ids: list[str]) -> None:
    for entry_id in ids:
        tx.delete(OUTBOX, entry_id)
