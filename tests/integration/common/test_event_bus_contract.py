"""The EventBus contract: what every adapter (SQLite, Pub/Sub, Kafka) must do.

`bus_factory` makes bus instances that share one backend (one SQLite file, one project in the
Pub/Sub emulator, one Kafka-protocol broker), so a test can run several consumers of one
subscription. A new adapter adds an entry to `_BACKENDS`, with the durations its backend allows
(`bus_timing`: Pub/Sub's ack deadline is at least 10 s). Topic and subscription names are random
per test, so tests never collide on a shared backend. Tests wait for conditions with timeouts and
never assert on speed.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tai_common.core import FailedPrecondition
from tai_common.gcp import PubSubBus
from tai_common.kafka import KafkaBus
from tai_common.ports import EventBus, Message, OutgoingMessage, SubscriptionSpec
from tai_common.sqlite import SqliteBus

if TYPE_CHECKING:
    # Loaded by pytest as plugins (below); importing them first would skip their assert
    # rewriting.
    from support.kafka_broker import KafkaBroker
    from support.pubsub_emulator import PubSubEmulator

# The session's Pub/Sub emulator and Kafka broker, each started only when one of its tests runs.
pytest_plugins = ["support.pubsub_emulator", "support.kafka_broker"]

BusFactory = Callable[[], Awaitable[EventBus]]
Behaviour = Callable[[Message], Awaitable[None]]

WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Timing:
    """Durations a backend needs; assertions stay the same for every backend."""

    # The ack deadline of the slow-handler test, and how long that handler takes the first time
    # (longer than the lease the backend may grant: Pub/Sub's client can stretch a lease to
    # under twice the deadline).
    ack_deadline_seconds: float
    slow_handler_seconds: float
    # How long to wait for that redelivery.
    redelivery_wait_seconds: float
    # How long to watch for messages that must not arrive.
    quiet_seconds: float


BackendOpener = Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[BusFactory]]


@dataclass(frozen=True)
class Backend:
    open: BackendOpener
    timing: Timing
    # One process owns the file (`tai-server`): every "bus" the factory makes is that process's
    # one bus, and a subscription has one consumer there.
    single_process: bool = False


@asynccontextmanager
async def _sqlite_backend(_: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BusFactory]:
    """Buses on one SQLite file, as separate local processes would open it."""
    path = tmp_path / "tai.db"
    buses: list[SqliteBus] = []

    async def make() -> EventBus:
        bus = await SqliteBus.open(path, poll_interval=0.005)
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()


@asynccontextmanager
async def _sqlite_single_process_backend(
    _: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BusFactory]:
    """The one bus of the process that owns a SQLite file (consumers in memory)."""
    bus = await SqliteBus.open(tmp_path / "tai.db", single_process=True)

    async def make() -> EventBus:
        return bus

    try:
        yield make
    finally:
        await bus.close()


@asynccontextmanager
async def _pubsub_backend(request: pytest.FixtureRequest, _: Path) -> AsyncIterator[BusFactory]:
    """Buses on the session's emulator, in a project of this test's own (the emulator has no
    reset; a project isolates the test's topics and subscriptions)."""
    emulator: PubSubEmulator = request.getfixturevalue("pubsub_emulator")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    project = unique("tai-test")
    buses: list[PubSubBus] = []

    async def make() -> EventBus:
        bus = await PubSubBus.open(project, create_missing=True)
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()


@asynccontextmanager
async def _kafka_backend(request: pytest.FixtureRequest, _: Path) -> AsyncIterator[BusFactory]:
    """Buses on the session's broker (Tansu); topics and groups are named per test."""
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    buses: list[KafkaBus] = []

    async def make() -> EventBus:
        bus = await broker.open_bus()
        buses.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in buses:
            await bus.close()


_BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(_sqlite_backend, Timing(0.5, 1.5, WAIT_SECONDS, 0.2)),
    "sqlite-single-process": Backend(
        _sqlite_single_process_backend, Timing(0.5, 1.5, WAIT_SECONDS, 0.2), single_process=True
    ),
    "pubsub": Backend(_pubsub_backend, Timing(10.0, 21.0, 45.0, 1.0)),
    # Kafka has no leases: the adapter cancels a handler at its ack deadline and delivers the
    # message again after the backoff. A consumer's first join takes about a second on Tansu.
    "kafka": Backend(_kafka_backend, Timing(0.5, 1.5, WAIT_SECONDS, 0.5)),
}


@pytest.fixture(params=sorted(_BACKENDS))
def bus_backend(request: pytest.FixtureRequest) -> Backend:
    return _BACKENDS[request.param]


@pytest.fixture
async def bus_factory(
    bus_backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BusFactory]:
    async with bus_backend.open(request, tmp_path) as make:
        yield make


@pytest.fixture
def bus_timing(bus_backend: Backend) -> Timing:
    return bus_backend.timing


@pytest.fixture
async def sqlite_bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventBus]:
    """One SQLite bus, for what only that adapter does (it honours batch delays)."""
    async with _sqlite_backend(request, tmp_path) as make_bus:
        yield await make_bus()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _ack(_: Message) -> None:
    return None


class Recorder:
    """A handler that records every delivery and every successful one (an ack)."""

    def __init__(self, behaviour: Behaviour = _ack) -> None:
        self.delivered: list[Message] = []
        self.acked: list[Message] = []
        self._behaviour = behaviour

    async def __call__(self, message: Message) -> None:
        self.delivered.append(message)
        await self._behaviour(message)
        self.acked.append(message)

    def acked_ids(self) -> set[str]:
        return {m.message_id for m in self.acked}


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Polls, because a condition often spans several consumers (later: other processes)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def messages(topic: str, count: int, *, key: str = "") -> list[OutgoingMessage]:
    return [OutgoingMessage(topic, f"m{i}".encode(), ordering_key=key) for i in range(count)]


async def test_publish_then_subscribe_delivers_the_message_intact(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    data = bytes(range(256))
    attributes = {"kind": "policy.enforced", "ünïcode": "✓", "empty": ""}
    message_id = await bus.publish(
        OutgoingMessage(topic, data, ordering_key="policy-1", attributes=attributes)
    )
    recorder = Recorder()
    subscription = await bus.subscribe(SubscriptionSpec(topic, unique("sub")), recorder)

    await wait_until(lambda: len(recorder.acked) == 1)
    (message,) = recorder.acked
    assert message.message_id == message_id
    assert message.topic == topic
    assert message.data == data
    assert message.ordering_key == "policy-1"
    assert dict(message.attributes) == attributes
    assert message.delivery_attempt == 1
    assert message.publish_time_ns > 0
    await subscription.close()


async def test_every_subscription_gets_every_message(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    first, second = Recorder(), Recorder()
    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), first)
    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), second)

    ids = await bus.publish_many(messages(topic, 20))

    assert len(set(ids)) == 20
    for recorder in (first, second):
        await wait_until(lambda r=recorder: r.acked_ids() == set(ids))  # type: ignore[misc]


async def test_a_subscription_filtered_by_event_type_gets_only_those_events(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    types = ["a.created", "b.changed", "a.created", "c.done", "b.changed", "c.done"]
    await bus.publish_many(
        [
            OutgoingMessage(
                topic, f"m{i}".encode(), ordering_key="k", attributes={"event_type": kind}
            )
            for i, kind in enumerate(types)
        ]
    )
    filtered, everything = Recorder(), Recorder()
    wanted = ("a.created", "c.done")
    await bus.subscribe(SubscriptionSpec(topic, unique("sub"), event_types=wanted), filtered)
    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), everything)

    await wait_until(lambda: len(everything.acked) == 6)
    await wait_until(lambda: len(filtered.acked) == 4)
    assert [m.data for m in filtered.acked] == [b"m0", b"m2", b"m3", b"m5"]
    # The events left out hold nothing up: later ones still arrive, in order, once each.
    await bus.publish(
        OutgoingMessage(topic, b"late", ordering_key="k", attributes={"event_type": "c.done"})
    )
    await wait_until(lambda: len(filtered.acked) == 5)
    assert filtered.acked[-1].data == b"late"
    assert [m.attributes["event_type"] for m in filtered.delivered] == [
        "a.created",
        "a.created",
        "c.done",
        "c.done",
        "c.done",
    ]


def test_event_types_must_be_plain_names() -> None:
    with pytest.raises(ValueError, match="event_types"):
        SubscriptionSpec("topic", "sub", event_types=('a" OR attributes.x = "y',))


async def test_a_subscription_with_a_batch_delay_gets_every_message_once(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    recorder = Recorder()
    subscription = await bus.subscribe(
        SubscriptionSpec(topic, unique("sub"), batch_delay_seconds=0.3), recorder
    )
    ids = [await bus.publish(message) for message in messages(topic, 10)]

    await wait_until(lambda: recorder.acked_ids() == set(ids))
    await subscription.close()
    assert len(recorder.delivered) == 10


async def test_sqlite_a_batch_delay_lets_messages_gather_before_any_is_taken(
    sqlite_bus: EventBus,
) -> None:
    # Only the SQLite bus honours the delay (see `SubscriptionSpec.batch_delay_seconds`).
    topic = unique("topic")
    published: list[str] = []
    seen_when_handled: list[int] = []

    async def handle(_: Message) -> None:
        seen_when_handled.append(len(published))

    await sqlite_bus.subscribe(
        SubscriptionSpec(topic, unique("sub"), batch_delay_seconds=2.0), handle
    )
    # A trickle: without the delay the first message is taken before the next one comes.
    for message in messages(topic, 5):
        published.append(await sqlite_bus.publish(message))
        await asyncio.sleep(0.05)

    await wait_until(lambda: len(seen_when_handled) == 5)
    assert seen_when_handled == [5] * 5


async def test_sqlite_a_batch_delay_does_not_hold_back_a_backlog(sqlite_bus: EventBus) -> None:
    topic = unique("topic")
    ids = await sqlite_bus.publish_many(messages(topic, 40))
    recorder = Recorder()
    # Ten claims of four: with the delay before each, the backlog would take 50 s.
    await sqlite_bus.subscribe(
        SubscriptionSpec(topic, unique("sub"), max_concurrency=4, batch_delay_seconds=5.0),
        recorder,
    )
    await wait_until(lambda: recorder.acked_ids() == set(ids), timeout=20.0)


async def test_sqlite_a_batch_delay_does_not_hold_back_a_backlog_of_left_out_events(
    sqlite_bus: EventBus,
) -> None:
    topic = unique("topic")
    # More left-out events than one claim reads (64, then 1,000), then one wanted.
    left_out = [
        OutgoingMessage(topic, b"x", attributes={"event_type": "other"}) for _ in range(1500)
    ]
    await sqlite_bus.publish_many(left_out)
    wanted = await sqlite_bus.publish(
        OutgoingMessage(topic, b"y", attributes={"event_type": "wanted"})
    )
    recorder = Recorder()
    # One delay before the first claim; a second one would take the wait past 8 s.
    await sqlite_bus.subscribe(
        SubscriptionSpec(topic, unique("sub"), event_types=("wanted",), batch_delay_seconds=4.0),
        recorder,
    )
    await wait_until(lambda: recorder.acked_ids() == {wanted}, timeout=7.5)


async def test_sqlite_closing_cuts_a_batch_delay_short(sqlite_bus: EventBus) -> None:
    topic = unique("topic")
    subscription = await sqlite_bus.subscribe(
        SubscriptionSpec(topic, unique("sub"), batch_delay_seconds=25.0), _ack
    )
    await sqlite_bus.publish(OutgoingMessage(topic, b"waiting"))
    await asyncio.sleep(0.1)  # the consumer is now inside its delay
    # Far less than the delay: a close must not wait it out.
    async with asyncio.timeout(WAIT_SECONDS):
        await subscription.close()


def test_batch_delay_must_be_shorter_than_the_ack_deadline() -> None:
    with pytest.raises(ValueError, match="batch_delay_seconds"):
        SubscriptionSpec("topic", "sub", ack_deadline_seconds=10, batch_delay_seconds=10)
    with pytest.raises(ValueError, match="batch_delay_seconds"):
        SubscriptionSpec("topic", "sub", batch_delay_seconds=-1)


async def test_consumers_of_one_subscription_share_its_messages(
    bus_factory: BusFactory, bus_backend: Backend
) -> None:
    topic, name = unique("topic"), unique("sub")
    rng = random.Random(7)

    async def work(_: Message) -> None:
        await asyncio.sleep(rng.uniform(0, 0.005))

    if bus_backend.single_process:
        # One process, one consumer per subscription: a second is refused, never given copies.
        bus = await bus_factory()
        spec = SubscriptionSpec(topic, name)
        await bus.subscribe(spec, Recorder())
        with pytest.raises(FailedPrecondition, match="already has a consumer"):
            await bus.subscribe(spec, Recorder())
        return
    consumers = [Recorder(work), Recorder(work)]
    for recorder in consumers:
        bus = await bus_factory()
        await bus.subscribe(
            SubscriptionSpec(topic, name, max_concurrency=4, ack_deadline_seconds=30), recorder
        )
    publisher = await bus_factory()

    ids = set(await publisher.publish_many(messages(topic, 60)))

    a, b = consumers
    await wait_until(lambda: a.acked_ids() | b.acked_ids() == ids)
    handled = Counter(m.message_id for r in consumers for m in r.delivered)
    assert a.acked_ids() & b.acked_ids() == set()
    assert max(handled.values()) == 1


async def test_nacked_message_is_redelivered_with_increasing_attempts(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic = unique("topic")

    async def fail_twice(message: Message) -> None:
        if message.delivery_attempt < 3:
            raise RuntimeError("not yet")

    recorder = Recorder(fail_twice)
    spec = SubscriptionSpec(
        topic, unique("sub"), min_backoff_seconds=0.01, max_backoff_seconds=0.05
    )
    await bus.subscribe(spec, recorder)
    await bus.publish(OutgoingMessage(topic, b"flaky"))

    await wait_until(lambda: len(recorder.acked) == 1)
    assert [m.delivery_attempt for m in recorder.delivered] == [1, 2, 3]


async def test_poisoned_message_goes_to_dead_letter_while_others_flow(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic, name = unique("topic"), unique("sub")
    spec = SubscriptionSpec(
        topic, name, max_delivery_attempts=3, min_backoff_seconds=0.01, max_backoff_seconds=0.05
    )
    dead_letters = Recorder()
    await bus.subscribe(SubscriptionSpec(spec.dead_letter, unique("dlq-sub")), dead_letters)

    async def reject_poison(message: Message) -> None:
        if message.attributes.get("poison") == "yes":
            raise ValueError("cannot handle this")

    recorder = Recorder(reject_poison)
    await bus.subscribe(spec, recorder)
    good = messages(topic, 10)
    poison = OutgoingMessage(topic, b"poison", attributes={"poison": "yes"})
    ids = await bus.publish_many([*good[:5], poison, *good[5:]])
    poison_id = ids[5]

    await wait_until(lambda: recorder.acked_ids() == set(ids) - {poison_id})
    await wait_until(lambda: len(dead_letters.acked) == 1)
    (dead,) = dead_letters.acked
    assert dead.data == b"poison"
    assert dict(dead.attributes) == {
        "poison": "yes",
        "dead_letter_source_subscription": name,
        "dead_letter_source_message_id": poison_id,
        "delivery_attempts": "3",
    }
    poison_attempts = [m.delivery_attempt for m in recorder.delivered if m.message_id == poison_id]
    assert poison_attempts == [1, 2, 3]


async def test_messages_of_one_ordering_key_are_handled_in_order_one_at_a_time(
    bus_factory: BusFactory,
) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    rng = random.Random(42)
    keys = ["a", "b", "c"]
    outgoing = [
        OutgoingMessage(topic, f"{key}:{i}".encode(), ordering_key=key)
        for i in range(8)
        for key in [*keys, ""]
    ]
    active: Counter[str] = Counter()
    overlaps: list[str] = []
    max_active = 0
    failed_once: set[bytes] = set()

    async def work(message: Message) -> None:
        nonlocal max_active
        key = message.ordering_key
        if key and active[key]:
            overlaps.append(key)
        active[key] += 1
        max_active = max(max_active, sum(active.values()))
        try:
            await asyncio.sleep(rng.uniform(0, 0.01))
            # A nack in the middle of key b: b's later messages must wait for its redelivery.
            if message.data == b"b:2" and message.data not in failed_once:
                failed_once.add(message.data)
                raise RuntimeError("transient")
        finally:
            active[key] -= 1

    await bus.publish_many(outgoing)
    recorder = Recorder(work)
    spec = SubscriptionSpec(
        topic, unique("sub"), max_concurrency=4, min_backoff_seconds=0.01, max_backoff_seconds=0.02
    )
    await bus.subscribe(spec, recorder)

    await wait_until(lambda: len(recorder.acked) == len(outgoing))
    assert overlaps == []
    assert max_active > 1
    for key in keys:
        handled = [m.data for m in recorder.acked if m.ordering_key == key]
        assert handled == [m.data for m in outgoing if m.ordering_key == key]


async def test_handler_slower_than_the_ack_deadline_gets_a_redelivery(
    bus_factory: BusFactory, bus_timing: Timing
) -> None:
    bus = await bus_factory()
    topic = unique("topic")

    async def slow_first_time(message: Message) -> None:
        if message.delivery_attempt == 1:
            await asyncio.sleep(bus_timing.slow_handler_seconds)

    recorder = Recorder(slow_first_time)
    spec = SubscriptionSpec(
        topic, unique("sub"), ack_deadline_seconds=bus_timing.ack_deadline_seconds
    )
    await bus.subscribe(spec, recorder)
    message_id = await bus.publish(OutgoingMessage(topic, b"slow"))

    await wait_until(
        lambda: any(m.delivery_attempt == 2 for m in recorder.acked),
        bus_timing.redelivery_wait_seconds,
    )
    assert {m.message_id for m in recorder.delivered} == {message_id}


async def test_start_at_latest_skips_older_messages(
    bus_factory: BusFactory, bus_timing: Timing
) -> None:
    bus = await bus_factory()
    topic = unique("topic")
    await bus.publish_many([OutgoingMessage(topic, b"old") for _ in range(3)])
    recorder = Recorder()
    await bus.subscribe(SubscriptionSpec(topic, unique("sub"), start_at_latest=True), recorder)

    new_ids = set(await bus.publish_many([OutgoingMessage(topic, b"new") for _ in range(3)]))

    await wait_until(lambda: recorder.acked_ids() >= new_ids)
    # Old messages would precede the new ones in the log; give them a moment to show up anyway.
    await asyncio.sleep(bus_timing.quiet_seconds)
    assert [m.data for m in recorder.delivered] == [b"new"] * 3


async def test_closing_a_consumer_mid_stream_and_starting_another_loses_nothing(
    bus_factory: BusFactory,
) -> None:
    topic, name = unique("topic"), unique("sub")
    spec = SubscriptionSpec(topic, name, max_concurrency=2)

    async def work(_: Message) -> None:
        await asyncio.sleep(0.005)

    first_bus = await bus_factory()
    first = Recorder(work)
    subscription = await first_bus.subscribe(spec, first)
    ids = set(await first_bus.publish_many(messages(topic, 40)))
    await wait_until(lambda: len(first.acked) >= 10)

    await subscription.close()
    # Close lets in-flight handlers finish: whatever the first consumer got, it handled.
    assert first.acked_ids() == {m.message_id for m in first.delivered}
    second = Recorder(work)
    await (await bus_factory()).subscribe(spec, second)

    await wait_until(lambda: first.acked_ids() | second.acked_ids() == ids)


async def test_subscription_name_cannot_move_to_another_topic(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    name = unique("sub")
    await bus.subscribe(SubscriptionSpec(unique("topic"), name), Recorder())

    with pytest.raises(FailedPrecondition):
        await bus.subscribe(SubscriptionSpec(unique("topic"), name), Recorder())
