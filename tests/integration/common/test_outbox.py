"""The transactional outbox over the real SQLite store and bus: an event written with its
change is published once the bus takes it, and a bus outage only delays it; with one file for
both, the event is published by the transaction itself. `Transaction.publish` on every store
(SQLite with and without the bus's log, Firestore): published once if the change commits, never
if it does not. And on the Firestore emulator: a relay that dies inside its claim does not block
other writers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.firestore_emulator import FirestoreEmulator
from tai.v1 import events_pb2, governor_pb2
from tai_common.core import AlreadyExists, ServiceSettings, SystemClock, Unavailable, UuidFactory
from tai_common.factory import open_store_and_bus
from tai_common.gcp import FirestoreStore
from tai_common.messaging import OUTBOX, OUTBOX_INDEXES, OutboxRelay, events
from tai_common.ports import (
    DocumentStore,
    EventBus,
    Message,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
    Transaction,
)
from tai_common.sqlite import SqliteBus, SqliteStore


class FlakyBus:
    """Wraps the real bus and refuses publishes while `down` is set — an outage on demand,
    which a real SQLite bus cannot be made to have from the outside."""

    def __init__(self, inner: EventBus) -> None:
        self.inner = inner
        self.down = False

    async def publish(self, message: OutgoingMessage) -> str:
        return (await self.publish_many([message]))[0]

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        if self.down:
            raise Unavailable("bus is down (test)")
        return await self.inner.publish_many(messages)

    async def subscribe(self, spec: SubscriptionSpec, handler: object) -> Subscription:
        return await self.inner.subscribe(spec, handler)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, FlakyBus]]:
    store = await SqliteStore.open(tmp_path / "tai.db")
    await store.ensure_indexes(OUTBOX_INDEXES)
    bus = FlakyBus(await SqliteBus.open(tmp_path / "tai.db"))
    yield store, bus
    await bus.close()
    await store.close()


def make_event(factory: events.EventFactory, aggregate: str) -> events_pb2.Event:
    return factory.build(
        event_type="policy.proposed",
        aggregate_type="policy",
        aggregate_id=aggregate,
        aggregate_version=1,
        payload=events_pb2.PolicyEvent(policy=governor_pb2.Policy(id=aggregate)),
    )


async def test_events_survive_a_bus_outage_and_are_published_once(
    parts: tuple[SqliteStore, FlakyBus],
) -> None:
    store, bus = parts
    clock = SystemClock()
    factory = events.EventFactory("test", clock, UuidFactory())
    relay = OutboxRelay(store, bus, clock, owner="relay-1")
    received: list[str] = []
    delivered = asyncio.Event()

    async def handler(message: Message) -> None:
        received.append(events.from_message(message).aggregate_id)
        if len(received) >= 10:
            delivered.set()

    subscription = await bus.subscribe(SubscriptionSpec(topic="t", name="consumer"), handler)
    bus.down = True
    for i in range(10):
        event = make_event(factory, f"p{i}")

        async def write(tx: Transaction, event: events_pb2.Event = event) -> None:
            tx.publish("t", event)

        await store.run_transaction(write)

    runner = asyncio.create_task(relay.run())
    relay.notify()
    await asyncio.sleep(0.3)
    assert await relay.backlog() == 10  # nothing lost, nothing published
    assert received == []

    bus.down = False
    await asyncio.wait_for(delivered.wait(), 10)
    # The relay deletes its entries once the bus has taken them, which may be after the
    # consumer already saw them.
    for _ in range(200):
        if await store.count(OUTBOX) == 0:
            break
        await asyncio.sleep(0.05)
    runner.cancel()
    await subscription.close()
    assert sorted(received) == sorted(f"p{i}" for i in range(10))
    assert await store.count(OUTBOX) == 0


async def test_two_relays_do_not_publish_the_same_entry(
    parts: tuple[SqliteStore, FlakyBus],
) -> None:
    store, bus = parts
    clock = SystemClock()
    factory = events.EventFactory("test", clock, UuidFactory())
    for i in range(50):
        event = make_event(factory, f"p{i}")

        async def write(tx: Transaction, event: events_pb2.Event = event) -> None:
            tx.publish("t", event)

        await store.run_transaction(write)
    relays = [OutboxRelay(store, bus, clock, owner=f"relay-{n}") for n in range(2)]
    counts = await asyncio.gather(*(r.drain() for r in relays))
    assert sum(counts) == 50
    assert await store.count(OUTBOX) == 0


# --- Transaction.publish, on every store ----------------------------------------------------
#
# Whatever the store, an event published in a transaction goes out once if the transaction
# commits, and never if it does not. The embedded default (one SQLite file for the store and the
# bus) appends it to the bus's log in the commit; SQLite under another bus, and Firestore, write
# an outbox document that the relay publishes.


def _settings(store: Path, bus: Path) -> ServiceSettings:
    return ServiceSettings(store=f"sqlite:///{store}", bus=f"sqlite:///{bus}")


@dataclass
class Publisher:
    store: DocumentStore
    bus: EventBus
    # What the store's transactions are expected to do with a published event.
    through_outbox: bool


@pytest.fixture(params=["sqlite-with-log", "sqlite-without-log", "firestore"])
async def publisher(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Publisher]:
    if request.param == "firestore":
        emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
        project = emulator.new_project()
        with emulator.environ():
            store: DocumentStore = await FirestoreStore.open(project)
        bus: EventBus = await SqliteBus.open(tmp_path / "bus.db")
        yield Publisher(store, bus, through_outbox=True)
        await bus.close()
        await store.close()
        emulator.wipe(project)
        return
    one_file = request.param == "sqlite-with-log"
    bus_file = tmp_path / ("tai.db" if one_file else "bus.db")
    opened = await open_store_and_bus(_settings(tmp_path / "tai.db", bus_file), SystemClock())
    yield Publisher(opened.store, opened.bus, through_outbox=not one_file)
    await opened.bus.close()
    await opened.store.close()


async def test_an_event_is_published_once_with_the_change_that_commits(
    publisher: Publisher,
) -> None:
    store, bus = publisher.store, publisher.bus
    assert store.publishes_through_outbox is publisher.through_outbox
    await store.ensure_indexes(OUTBOX_INDEXES)
    clock = SystemClock()
    factory = events.EventFactory("test", clock, UuidFactory())
    relay = OutboxRelay(store, bus, clock, owner="relay-1")
    received: list[str] = []
    last_seen = asyncio.Event()

    async def handler(message: Message) -> None:
        received.append(events.from_message(message).event_id)
        if len(received) == 2:
            last_seen.set()

    # One aggregate, so one ordering key: the bus delivers its events in publish order.
    committed, raised, conflicted, last = (make_event(factory, "p") for _ in range(4))

    def change(
        event: events_pb2.Event, doc_id: str, *, fail: bool = False
    ) -> Callable[[Transaction], Any]:
        async def write(tx: Transaction) -> None:
            tx.create("changes", doc_id, {"v": 1})
            tx.publish("t", event)
            if fail:
                raise RuntimeError("the change fails after publishing its event")

        return write

    subscription = await bus.subscribe(SubscriptionSpec(topic="t", name="consumer"), handler)
    runner = asyncio.create_task(relay.run())
    try:
        await store.run_transaction(change(committed, "a"))
        relay.notify()
        with pytest.raises(RuntimeError):
            await store.run_transaction(change(raised, "b", fail=True))
        with pytest.raises(AlreadyExists):  # "changes/a" exists: the commit fails
            await store.run_transaction(change(conflicted, "a"))
        await store.run_transaction(change(last, "c"))
        relay.notify()
        await asyncio.wait_for(last_seen.wait(), 10)
        # The relay deletes its entries once the bus has taken them, which may be after the
        # consumer already saw them.
        for _ in range(200):
            if await store.count(OUTBOX) == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    try:
        assert await relay.drain() == 0  # nothing left to publish a second time
        await asyncio.sleep(0.3)  # time for a duplicate to arrive, were there one
    finally:
        await subscription.close()
    # The events of the failed changes would have come before the last one.
    assert received == [committed.event_id, last.event_id]
    assert await store.count(OUTBOX) == 0


async def test_separate_files_publish_through_outbox_entries(tmp_path: Path) -> None:
    clock = SystemClock()
    opened = await open_store_and_bus(_settings(tmp_path / "store.db", tmp_path / "bus.db"), clock)
    try:
        assert opened.store.publishes_through_outbox
        event = make_event(events.EventFactory("test", clock, UuidFactory()), "p")

        async def write(tx: Transaction) -> None:
            tx.publish("t", event)

        await opened.store.run_transaction(write)
        assert await opened.store.count(OUTBOX) == 1  # waiting for the relay
    finally:
        await opened.bus.close()
        await opened.store.close()


async def test_one_sqlite_file_leaves_no_outbox_entry(tmp_path: Path) -> None:
    clock = SystemClock()
    opened = await open_store_and_bus(_settings(tmp_path / "tai.db", tmp_path / "tai.db"), clock)
    try:
        assert not opened.store.publishes_through_outbox
        event = make_event(events.EventFactory("test", clock, UuidFactory()), "p")

        async def write(tx: Transaction) -> None:
            tx.publish("t", event)

        await opened.store.run_transaction(write)
    finally:
        await opened.bus.close()
        await opened.store.close()
    assert await _outbox_entries(tmp_path / "tai.db") == 0


async def _outbox_entries(file: Path) -> int:
    store = await SqliteStore.open(file, expire_every_seconds=None)
    try:
        return await store.count(OUTBOX)
    finally:
        await store.close()


# --- Firestore: a relay that dies inside its claim ----------------------------------------------
#
# A Firestore transaction whose process dies keeps its locks until it expires (60 s after its
# last request, on the emulator and in production), and a query inside a transaction locks the
# whole collection. So the claim reads its candidates by key inside the transaction; this test
# kills a relay right after those reads and checks that another process's entry commits at once.

# Runs a relay whose claim transaction stops for good after its reads (the process is then
# SIGKILLed, so its Firestore transaction is never committed nor rolled back). Only the store
# wrapper is made up; the relay, the adapter and the emulator are the real ones.
_DYING_RELAY = textwrap.dedent(
    """
    import asyncio, sys
    from tai_common.core import SystemClock
    from tai_common.gcp import FirestoreStore
    from tai_common.messaging import OutboxRelay

    class StopsAfterReads:
        def __init__(self, tx):
            self._tx = tx

        async def _stop(self, result):
            print("READ", flush=True)
            await asyncio.sleep(3600)
            return result

        async def get(self, *args):
            return await self._stop(await self._tx.get(*args))

        async def get_many(self, *args):
            return await self._stop(await self._tx.get_many(*args))

        async def query(self, *args):
            return await self._stop(await self._tx.query(*args))

    class Store:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        async def run_transaction(self, fn, **kwargs):
            return await self._inner.run_transaction(
                lambda tx: fn(StopsAfterReads(tx)), **kwargs
            )

    async def main():
        store = await FirestoreStore.open(sys.argv[1])
        relay = OutboxRelay(Store(store), bus=None, clock=SystemClock(), owner="dying")
        await relay.drain()

    asyncio.run(main())
    """
)


@pytest.fixture
async def unwiped_project(firestore_emulator: FirestoreEmulator) -> str:
    """A project of this test's own that is not wiped afterwards: wiping would wait out the
    dead transaction's locks (a minute), and nothing else uses the project."""
    return firestore_emulator.new_project()


async def test_a_relay_killed_inside_its_claim_does_not_block_other_writers(
    unwiped_project: str, firestore_emulator: FirestoreEmulator
) -> None:
    with firestore_emulator.environ():
        firestore_store = await FirestoreStore.open(unwiped_project)
    try:
        await _kill_a_relay_inside_its_claim_then_write(
            firestore_store, unwiped_project, firestore_emulator.host
        )
    finally:
        await firestore_store.close()


async def _kill_a_relay_inside_its_claim_then_write(
    firestore_store: FirestoreStore, project: str, emulator_host: str
) -> None:
    factory = events.EventFactory("test", SystemClock(), UuidFactory())

    async def write_entry(tx: Transaction) -> None:
        tx.publish("tai-test", make_event(factory, "p"))

    await firestore_store.run_transaction(write_entry)
    env = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host}
    relay = subprocess.Popen(  # noqa: ASYNC220 (a child to kill, not awaited)
        [sys.executable, "-c", _DYING_RELAY, project],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(relay.stdout.readline), 30)
        assert line.strip() == "READ", f"the relay did not reach its claim: {line!r}"
    finally:
        relay.send_signal(signal.SIGKILL)
        relay.wait()

    # Another process's change and its outbox entry, while the dead relay's locks live on. A
    # blocked writer would wait out the lock's 60 s; 15 s tells the two apart on a busy machine.
    await asyncio.wait_for(firestore_store.run_transaction(write_entry), 15)
    assert await firestore_store.count(OUTBOX) == 2
