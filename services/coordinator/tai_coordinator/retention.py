"""Prunes the `signals` collection: signals older than a maximum age, and the oldest beyond a
maximum count. Signals with their decision records are what ExplainSignal reads and
SimulatePolicy replays, so how much history is kept is a setting, not the store's TTL alone.

Every replica may run the pruner at once. Each pass reads the oldest signals (ascending
`received_at_ns`, the `signals` index) and deletes them by id in one write-only transaction per
batch: one commit per batch on both stores (SQLite: one savepoint in a group commit, one sync;
Firestore: begin and commit, no locks since nothing is read in it) instead of one commit per
document. Deleting a document that another replica has just deleted is a no-op on both
adapters, so overlapping passes agree on what is left; each counts the deletes it issued, so
`tai_signals_pruned_total` summed over replicas can exceed the signals removed when passes
overlap (the jitter between passes keeps that rare).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from tai_common.core import Aborted, Clock, Unavailable
from tai_common.core.namespace import in_namespace
from tai_common.core.units import seconds_to_ns
from tai_common.ports import Document, DocumentStore, Filter, Op, Order, Query, Transaction

from tai_coordinator import metrics
from tai_coordinator.repository import SIGNALS

log = logging.getLogger(__name__)

# One batch is one commit: 500 writes is what a Firestore commit has always accepted.
MAX_BATCH_SIZE: Final = 500
# The spread of the pause between passes (±20%), so replicas started together drift apart.
_JITTER: Final = 0.2
_OLDEST_FIRST: Final = (Order("received_at_ns"),)


@dataclass(frozen=True)
class PruneResult:
    """What one pass deleted."""

    by_age: int = 0
    by_count: int = 0
    # False when the pass stopped at its batch budget with more left to delete.
    complete: bool = True

    @property
    def total(self) -> int:
        return self.by_age + self.by_count


class SignalRetention:
    """Deletes signals beyond the retention age and count, a bounded amount per pass."""

    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        *,
        max_age_seconds: float,
        max_count: int,
        every_seconds: float,
        batch_size: int = MAX_BATCH_SIZE,
        max_batches_per_pass: int = 20,
        backlog_pause_seconds: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        """Configures the pruner; nothing runs until `prune_once` or `run`.

        Args:
            store: the store holding the `signals` collection.
            clock: what the age cutoff is measured from.
            max_age_seconds: signals received longer ago than this are deleted.
            max_count: at most this many signals are kept, the oldest deleted first (0: no
                bound).
            every_seconds: the pause between passes of `run` (jittered by ±20%).
            batch_size: signals read and deleted per transaction (at most 500).
            max_batches_per_pass: batches one pass deletes at most; a backlog carries over.
            backlog_pause_seconds: the pause before the next pass when one stopped at its
                budget, so a backlog drains without waiting `every_seconds` each time.
            rng: the source of jitter; a fresh `random.Random()` by default.

        Raises:
            ValueError: a value is out of range.
        """
        if not max_age_seconds > 0:
            raise ValueError("max_age_seconds must be positive")
        if max_count < 0:
            raise ValueError("max_count must be 0 (no bound) or positive")
        if not every_seconds > 0 or not backlog_pause_seconds > 0:
            raise ValueError("every_seconds and backlog_pause_seconds must be positive")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if max_batches_per_pass < 1:
            raise ValueError("max_batches_per_pass must be positive")
        self._store = store
        self._clock = clock
        self._max_age_ns = seconds_to_ns(max_age_seconds)
        self._max_count = max_count
        self._every_seconds = every_seconds
        self._batch_size = batch_size
        self._max_batches = max_batches_per_pass
        self._backlog_pause_seconds = backlog_pause_seconds
        self._rng = rng or random.Random()

    async def prune_once(self) -> PruneResult:
        """One pass: deletes signals older than the maximum age, then the oldest beyond the
        maximum count, at most `max_batches_per_pass` batches in all.

        Raises:
            Unavailable: the store cannot be reached (what was deleted before stays deleted).
            Aborted: a delete transaction kept meeting other writers.
        """
        budget = self._max_batches
        by_age, budget, age_done = await self._prune_by_age(budget)
        by_count, count_done = 0, True
        if self._max_count:
            by_count, count_done = await self._prune_by_count(budget)
        return PruneResult(by_age=by_age, by_count=by_count, complete=age_done and count_done)

    async def run(self, namespaces: Callable[[], Awaitable[Sequence[str]]] | None = None) -> None:
        """Prunes every `every_seconds` (jittered) until cancelled (a service worker): each
        namespace `namespaces()` names in turn, inside it (each keeps its own signals, and its
        own maximum count), or, without `namespaces`, the store as it is. The first pass comes
        at a random point of the first interval, so replicas started together do not prune
        together; a store that cannot be reached is logged and tried again at the next pass."""
        await asyncio.sleep(self._rng.uniform(0, self._every_seconds))
        while True:
            pause = self._every_seconds * (1 + self._rng.uniform(-_JITTER, _JITTER))
            names: Sequence[str | None] = [None]
            if namespaces is not None:
                try:
                    names = await namespaces()
                except (Unavailable, Aborted) as error:
                    log.warning("cannot list the namespaces (%s); next pass", error.message)
                    names = []
            for namespace in names:
                if namespace is None:
                    complete = await self._pass("")
                else:
                    with in_namespace(namespace):
                        complete = await self._pass(namespace)
                if not complete:
                    pause = self._backlog_pause_seconds
            await asyncio.sleep(pause)

    async def _pass(self, namespace: str) -> bool:
        """One logged pass over the current store; False when a backlog is left."""
        where = f" of namespace {namespace}" if namespace else ""
        try:
            result = await self.prune_once()
        except (Unavailable, Aborted) as error:
            log.warning(
                "signal pruning%s failed (%s); trying again next pass", where, error.message
            )
            return True
        if result.total:
            log.info(
                "pruned %d signals%s (%d too old, %d beyond the kept count)",
                result.total,
                where,
                result.by_age,
                result.by_count,
            )
        return result.complete

    async def _prune_by_age(self, budget: int) -> tuple[int, int, bool]:
        """Deletes signals received before the cutoff, oldest first. Returns how many, the
        batches left, and whether none are left."""
        cutoff_ns = self._clock.now_ns() - self._max_age_ns
        query = Query(
            SIGNALS,
            filters=(Filter("received_at_ns", Op.LT, cutoff_ns),),
            order_by=_OLDEST_FIRST,
            limit=self._batch_size,
        )
        deleted = 0
        while budget:
            page = await self._store.query(query)
            if page.documents:
                await self._delete(page.documents, "age")
                deleted += len(page.documents)
                budget -= 1
            if len(page.documents) < self._batch_size:
                return deleted, budget, True
            await asyncio.sleep(0)  # other tasks between batches
        return deleted, budget, False

    async def _prune_by_count(self, budget: int) -> tuple[int, bool]:
        """Deletes the oldest signals beyond `max_count`. Returns how many and whether the
        count is now within the bound.

        Another replica may prune at the same time, so the count is taken after the oldest
        signals are listed: the i-th listed signal then has at least `count - i` signals newer
        than itself, and only those with at least `max_count` newer are deleted. Counting first
        and deleting "the oldest count - max_count" would delete too many when another pass
        removes the same oldest signals in between.
        """
        # An upper bound of the excess, taken first so that a collection within its bound
        # costs one count and no read.
        excess = await self._store.count(SIGNALS) - self._max_count
        deleted = 0
        while excess > 0:
            if not budget:
                return deleted, False
            page = await self._store.query(
                Query(SIGNALS, order_by=_OLDEST_FIRST, limit=min(self._batch_size, excess))
            )
            excess = await self._store.count(SIGNALS) - self._max_count
            doomed = page.documents[: max(excess, 0)]
            if not doomed:
                break
            await self._delete(doomed, "count")
            deleted += len(doomed)
            budget -= 1
            excess -= len(doomed)
            await asyncio.sleep(0)  # other tasks between batches
        return deleted, True

    async def _delete(self, documents: Sequence[Document], reason: str) -> None:
        """Deletes `documents` in one transaction (writes only: nothing read, nothing locked)."""
        ids = [d.id for d in documents]

        async def delete_all(tx: Transaction) -> None:
            for doc_id in ids:
                tx.delete(SIGNALS, doc_id)

        await self._store.run_transaction(delete_all)
        metrics.SIGNALS_PRUNED.labels(reason=reason).inc(len(ids))
