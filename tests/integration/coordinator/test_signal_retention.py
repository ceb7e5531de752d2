"""`SignalRetention` against real stores (a SQLite file and the Firestore emulator): which
signals a pass deletes (too old, then the oldest beyond the kept count), how a pass stops at its
budget and the next one carries on, two replicas pruning the same store at once, the
`tai_signals_pruned_total` counter, and the background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from tai_common.core.units import NS_PER_SECOND
from tai_common.gcp import FirestoreStore
from tai_common.ports import DocumentStore, Query, Transaction
from tai_common.sqlite import SqliteStore
from tai_coordinator.model import SignalInput, StoredSignal
from tai_coordinator.repository import INDEXES, SIGNALS
from tai_coordinator.retention import PruneResult, SignalRetention

HOUR_NS = 3600 * NS_PER_SECOND
DAY_SECONDS = 24 * 3600.0
# A fixed "now", years ahead: the SQLite janitor (on the real clock) never expires these.
NOW_NS = 2_000_000_000 * NS_PER_SECOND

OpenStore = Callable[[], Awaitable[DocumentStore]]


class PinnedClock:
    """A clock that stays at NOW_NS."""

    def now_ns(self) -> int:
        return NOW_NS

    def monotonic(self) -> float:
        return 0.0


@pytest.fixture(params=["sqlite", "firestore"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store on this test's data (each call a new client, as another replica has)."""
    if request.param == "sqlite":
        path = tmp_path / "store" / "tai.db"

        async def open_sqlite() -> DocumentStore:
            return await SqliteStore.open(path)

        yield open_sqlite
        return
    # Looked up here, so that the SQLite run never starts the JVM.
    emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
    project = emulator.new_project()

    async def open_firestore() -> DocumentStore:
        with emulator.environ():
            return await FirestoreStore.open(project)

    yield open_firestore
    emulator.wipe(project)


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[DocumentStore]:
    """The store with the Coordinator's indexes, as the service opens it."""
    opened = await open_store()
    await opened.ensure_indexes(INDEXES)
    try:
        yield opened
    finally:
        await opened.close()


def signal_doc(signal_id: str, received_at_ns: int) -> dict[str, object]:
    signal = StoredSignal(
        signal=SignalInput(signal_id=signal_id, signal_type="alert", priority=5),
        fingerprint=f"fp-{signal_id}",
        received_at_ns=received_at_ns,
    )
    return signal.to_doc(received_at_ns + 7 * 24 * HOUR_NS)


async def put_signals(store: DocumentStore, received: dict[str, int]) -> None:
    """Stores one signal per id, received at the given instant."""
    items = list(received.items())
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]

        async def create_all(tx: Transaction, chunk: list[tuple[str, int]] = chunk) -> None:
            for signal_id, received_at_ns in chunk:
                tx.create(SIGNALS, signal_id, signal_doc(signal_id, received_at_ns))

        await store.run_transaction(create_all)


async def stored_ids(store: DocumentStore) -> set[str]:
    page = await store.query(Query(SIGNALS))
    return {d.id for d in page.documents}


def pruned_total(reason: str) -> float:
    return REGISTRY.get_sample_value("tai_signals_pruned_total", {"reason": reason}) or 0.0


def retention(store: DocumentStore, **overrides: float) -> SignalRetention:
    settings: dict[str, float] = {
        "max_age_seconds": DAY_SECONDS,
        "max_count": 0,
        "every_seconds": 60.0,
        "batch_size": 4,
    }
    settings.update(overrides)
    return SignalRetention(
        store,
        PinnedClock(),
        max_age_seconds=settings["max_age_seconds"],
        max_count=int(settings["max_count"]),
        every_seconds=settings["every_seconds"],
        batch_size=int(settings["batch_size"]),
        max_batches_per_pass=int(settings.get("max_batches_per_pass", 20)),
    )


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(0.05)


def ages_in_hours(hours: dict[str, float]) -> dict[str, int]:
    return {signal_id: NOW_NS - int(h * HOUR_NS) for signal_id, h in hours.items()}


async def test_a_pass_deletes_the_too_old_then_the_oldest_beyond_the_count(
    store: DocumentStore,
) -> None:
    # 10 signals older than a day, 20 younger; two of the young ones tie on received_at_ns
    # where the count bound falls, so the id decides (the lower goes first).
    old = {f"sig-old-{i:02d}": 25.0 + i for i in range(10)}
    young = {f"sig-new-{i:02d}": 1.0 + i for i in range(18)}
    young |= {"sig-tie-a": 14.5, "sig-tie-b": 14.5}
    await put_signals(store, ages_in_hours(old | young))
    by_age_before, by_count_before = pruned_total("age"), pruned_total("count")

    # 20 young signals, 15 kept: the oldest 5 go. By age: sig-new-17..14 (18h..15h) are the
    # four oldest, then sig-tie-a (14.5h, and "a" < "b").
    result = await retention(store, max_count=15).prune_once()

    assert result == PruneResult(by_age=10, by_count=5, complete=True)
    gone = {f"sig-new-{i:02d}" for i in (14, 15, 16, 17)} | {"sig-tie-a"}
    assert await stored_ids(store) == set(young) - gone
    assert pruned_total("age") - by_age_before == 10
    assert pruned_total("count") - by_count_before == 5
    # A second pass finds nothing left to do.
    assert await retention(store, max_count=15).prune_once() == PruneResult()


async def test_without_a_count_bound_only_age_prunes(store: DocumentStore) -> None:
    await put_signals(store, ages_in_hours({"sig-a": 23.0, "sig-b": 24.5, "sig-c": 1.0}))

    result = await retention(store, max_count=0).prune_once()

    assert result == PruneResult(by_age=1, by_count=0, complete=True)
    assert await stored_ids(store) == {"sig-a", "sig-c"}


async def test_a_pass_stops_at_its_budget_and_the_next_carries_on_oldest_first(
    store: DocumentStore,
) -> None:
    old = {f"sig-old-{i:02d}": 30.0 + i for i in range(10)}  # sig-old-09 is the oldest
    await put_signals(store, ages_in_hours(old | {"sig-young": 1.0}))
    pruner = retention(store, batch_size=3, max_batches_per_pass=2)

    first = await pruner.prune_once()

    assert first == PruneResult(by_age=6, complete=False)
    assert await stored_ids(store) == {f"sig-old-{i:02d}" for i in range(4)} | {"sig-young"}
    assert await pruner.prune_once() == PruneResult(by_age=4, complete=True)
    assert await stored_ids(store) == {"sig-young"}


async def test_the_count_bound_carries_over_too(store: DocumentStore) -> None:
    await put_signals(store, ages_in_hours({f"sig-{i:02d}": 1.0 + i for i in range(12)}))
    pruner = retention(store, max_count=2, batch_size=3, max_batches_per_pass=2)

    assert await pruner.prune_once() == PruneResult(by_count=6, complete=False)
    assert await pruner.prune_once() == PruneResult(by_count=4, complete=True)
    assert await stored_ids(store) == {"sig-00", "sig-01"}


async def test_replicas_pruning_at_once_keep_exactly_the_right_signals(
    store: DocumentStore, open_store: OpenStore
) -> None:
    # Two replicas, each with its own client on the same data, pruning in the same instant:
    # they list the same oldest signals and race to delete them.
    old = {f"sig-old-{i:02d}": 30.0 + i for i in range(13)}
    young = {f"sig-new-{i:02d}": 1.0 + i / 2 for i in range(40)}
    await put_signals(store, ages_in_hours(old | young))
    other = await open_store()
    try:
        by_age_before, by_count_before = pruned_total("age"), pruned_total("count")
        replicas = [retention(s, max_count=12, batch_size=5) for s in (store, other)]

        results = await asyncio.gather(*(r.prune_once() for r in replicas))

        kept = {f"sig-new-{i:02d}" for i in range(12)}  # the 12 youngest
        assert await stored_ids(store) == kept
        assert all(r.complete for r in results)
        # Each replica counts the deletes it issued; a signal both deleted counts twice, one
        # neither deleted is not gone (checked above), so the sums cover at least what went.
        by_age = sum(r.by_age for r in results)
        by_count = sum(r.by_count for r in results)
        assert 13 <= by_age <= 26
        assert 28 <= by_count <= 56
        assert pruned_total("age") - by_age_before == by_age
        assert pruned_total("count") - by_count_before == by_count
    finally:
        await other.close()


async def test_the_worker_prunes_in_the_background_until_cancelled(
    store: DocumentStore,
) -> None:
    await put_signals(store, ages_in_hours({"sig-old": 48.0, "sig-young": 1.0}))
    worker = asyncio.create_task(retention(store, every_seconds=0.05).run())
    try:

        async def only_the_young_one_left() -> bool:
            return await stored_ids(store) == {"sig-young"}

        await wait_for(only_the_young_one_left)
        assert not worker.done()
    finally:
        worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker


async def test_the_worker_logs_an_unreachable_store_and_carries_on(
    open_store: OpenStore, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await open_store()
    await closed.close()  # every call now raises Unavailable
    with caplog.at_level(logging.WARNING, logger="tai_coordinator.retention"):
        worker = asyncio.create_task(retention(closed, every_seconds=0.05).run())
        try:

            async def failed_twice() -> bool:
                return caplog.text.count("signal pruning failed") >= 2

            await wait_for(failed_twice)
            assert not worker.done()
        finally:
            worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert worker.cancelled()


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_age_seconds": 0},
        {"max_count": -1},
        {"every_seconds": 0},
        {"batch_size": 0},
        {"batch_size": 501},
        {"max_batches_per_pass": 0},
    ],
)
async def test_settings_out_of_range_are_refused(
    overrides: dict[str, float], tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "tai.db")
    try:
        with pytest.raises(ValueError, match="must be"):
            retention(store, **overrides)
    finally:
        await store.close()
