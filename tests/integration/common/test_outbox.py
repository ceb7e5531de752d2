"""The transactional outbox over the real SQLite store and bus: an event written with its
change is published once the bus takes it, and a bus outage only delays it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from tai.v1 import events_pb2, governor_pb2
from tai_common.bus import events
from tai_common.bus.local_bus import SqliteBus
from tai_common.bus.outbox import OUTBOX, OUTBOX_INDEXES, OutboxRelay, add_event
from tai_common.bus.port import EventBus, Message, OutgoingMessage, Subscription, SubscriptionSpec
from tai_common.clock import SystemClock, UuidFactory
from tai_common.errors import Unavailable
from tai_common.store.port import Transaction
from tai_common.store.sqlite_store import SqliteStore


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
            add_event(tx, "t", event)

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
            add_event(tx, "t", event)

        await store.run_transaction(write)
    relays = [OutboxRelay(store, bus, clock, owner=f"relay-{n}") for n in range(2)]
    counts = await asyncio.gather(*(r.drain() for r in relays))
    assert sum(counts) == 50
    assert await store.count(OUTBOX) == 0
