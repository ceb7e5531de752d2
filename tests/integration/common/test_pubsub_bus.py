"""What only the Pub/Sub adapter has: outages, how it sets up topics and subscriptions, its
options. The EventBus contract itself runs in test_event_bus_contract.py.

Every test works in a project of its own on the session's emulator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from google.api_core import exceptions as gexc
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from support.processes import free_port
from tai_common.core import InvalidArgument, NotFound, StartupError, Unavailable
from tai_common.gcp import PubSubBus
from tai_common.ports import Message, MissingBusResource, OutgoingMessage, SubscriptionSpec

if TYPE_CHECKING:
    # Loaded by pytest as a plugin (below); importing it first would skip its assert rewriting.
    from support.pubsub_emulator import PubSubEmulator

pytest_plugins = ["support.pubsub_emulator"]

OpenBus = Callable[..., Awaitable[PubSubBus]]

WAIT_SECONDS = 15.0
# A publish must give up within this (the bus's publish timeout in these tests)...
PUBLISH_TIMEOUT = 2.0
# ...and is considered hung past this.
HANG_SECONDS = PUBLISH_TIMEOUT + 8.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def seconds(duration: object) -> float:
    """A Duration field of a Pub/Sub resource (proto-plus hands them out as timedeltas)."""
    assert isinstance(duration, dt.timedelta)
    return duration.total_seconds()


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class Recorder:
    def __init__(self, fail: Callable[[Message], bool] = lambda _: False) -> None:
        self.delivered: list[Message] = []
        self.acked: list[Message] = []
        self.threads: set[int] = set()
        self._fail = fail

    async def __call__(self, message: Message) -> None:
        self.delivered.append(message)
        self.threads.add(threading.get_ident())
        if self._fail(message):
            raise RuntimeError("rejected")
        self.acked.append(message)

    def acked_data(self) -> list[bytes]:
        return [m.data for m in self.acked]


@pytest.fixture
def emulator(pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> PubSubEmulator:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    return pubsub_emulator


@pytest.fixture
def project() -> str:
    return unique("tai-test")


@pytest.fixture
async def open_bus(emulator: PubSubEmulator, project: str) -> AsyncIterator[OpenBus]:
    """Opens buses on the test's project (`create_missing` unless told otherwise)."""
    buses: list[PubSubBus] = []

    async def make(**options: Any) -> PubSubBus:
        options.setdefault("create_missing", True)
        bus = await PubSubBus.open(project, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def subscriptions_admin(emulator: PubSubEmulator) -> AsyncIterator[SubscriberAsyncClient]:
    async with SubscriberAsyncClient() as client:
        yield client


@pytest.fixture
async def topics_admin(emulator: PubSubEmulator) -> AsyncIterator[PublisherAsyncClient]:
    async with PublisherAsyncClient() as client:
        yield client


@pytest.mark.timeout(300)  # an emulator restart and the waits around it
async def test_publish_fails_fast_while_pubsub_is_down_and_works_again_once_it_is_back(
    open_bus: OpenBus, emulator: PubSubEmulator
) -> None:
    bus = await open_bus(publish_timeout_seconds=PUBLISH_TIMEOUT)
    topic = unique("topic")
    recorder = Recorder()
    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), recorder)
    await bus.publish(OutgoingMessage(topic, b"before", ordering_key="policy-1"))
    await wait_until(lambda: b"before" in recorder.acked_data())

    emulator.stop()
    try:
        # Writes go on meanwhile (into the outbox): the publish must raise, not hang.
        with pytest.raises(Unavailable):
            async with asyncio.timeout(HANG_SECONDS):
                await bus.publish(OutgoingMessage(topic, b"during", ordering_key="policy-1"))
    finally:
        emulator.start()

    # The restarted emulator starts empty: a new bus recreates the topic and publishes at once.
    fresh = await open_bus(publish_timeout_seconds=PUBLISH_TIMEOUT)
    await fresh.publish(OutgoingMessage(topic, b"after, new bus", ordering_key="policy-1"))

    # The old bus reconnects, and the ordering key its failed publish paused was resumed.
    async def publish_with_old_bus() -> None:
        while True:
            try:
                await bus.publish(OutgoingMessage(topic, b"after", ordering_key="policy-1"))
                return
            except Unavailable:
                await asyncio.sleep(0.5)

    async with asyncio.timeout(30):
        await publish_with_old_bus()
    # Its consumer recreated the lost subscription and goes on (the topic's retention replays
    # what was published before the subscription was back).
    await wait_until(lambda: {b"after", b"after, new bus"} <= set(recorder.acked_data()), 30)


@pytest.mark.parametrize("create_missing", [True, False], ids=["create-missing", "existing"])
async def test_publish_to_an_unreachable_pubsub_raises_unavailable_in_time(
    monkeypatch: pytest.MonkeyPatch, create_missing: bool
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    bus = await PubSubBus.open(
        unique("tai-test"), create_missing=create_missing, publish_timeout_seconds=PUBLISH_TIMEOUT
    )
    try:
        with pytest.raises(Unavailable):
            async with asyncio.timeout(HANG_SECONDS):
                await bus.publish_many(
                    [OutgoingMessage("tai-policies", b"x", ordering_key="policy-1")]
                )
    finally:
        await bus.close()


async def test_subscriptions_and_topics_are_created_as_the_specs_ask(
    open_bus: OpenBus,
    project: str,
    subscriptions_admin: SubscriberAsyncClient,
    topics_admin: PublisherAsyncClient,
) -> None:
    bus = await open_bus()
    topic = unique("topic")
    durable = SubscriptionSpec(
        topic,
        unique("service"),
        ack_deadline_seconds=0.5,
        min_backoff_seconds=0.2,
        max_backoff_seconds=3.0,
        max_delivery_attempts=3,
    )
    ephemeral = SubscriptionSpec(
        topic, unique("replica"), start_at_latest=True, ephemeral=True, ack_deadline_seconds=42
    )
    durable_consumer = await bus.subscribe(durable, Recorder())
    ephemeral_consumer = await bus.subscribe(ephemeral, Recorder())

    created = await subscriptions_admin.get_subscription(
        subscription=f"projects/{project}/subscriptions/{durable.name}"
    )
    assert created.topic == f"projects/{project}/topics/{topic}"
    assert created.enable_message_ordering
    assert created.ack_deadline_seconds == 10  # Pub/Sub's minimum
    assert seconds(created.retry_policy.minimum_backoff) == pytest.approx(0.2)
    assert seconds(created.retry_policy.maximum_backoff) == pytest.approx(3.0)
    assert created.dead_letter_policy.dead_letter_topic == (
        f"projects/{project}/topics/{durable.dead_letter}"
    )
    # The adapter dead-letters after 3 attempts itself; Pub/Sub's policy is the backstop.
    assert created.dead_letter_policy.max_delivery_attempts == 100
    assert not created.expiration_policy.ttl  # never expires
    per_replica = await subscriptions_admin.get_subscription(
        subscription=f"projects/{project}/subscriptions/{ephemeral.name}"
    )
    assert per_replica.ack_deadline_seconds == 42
    assert seconds(per_replica.expiration_policy.ttl) == 24 * 3600  # Pub/Sub's minimum
    for name in (topic, durable.dead_letter):
        created_topic = await topics_admin.get_topic(topic=f"projects/{project}/topics/{name}")
        assert seconds(created_topic.message_retention_duration) == 7 * 24 * 3600

    await ephemeral_consumer.close()
    await durable_consumer.close()

    with pytest.raises(gexc.NotFound):
        await subscriptions_admin.get_subscription(
            subscription=f"projects/{project}/subscriptions/{ephemeral.name}"
        )
    # The service's own subscription outlives its consumers.
    await subscriptions_admin.get_subscription(
        subscription=f"projects/{project}/subscriptions/{durable.name}"
    )


async def test_messages_held_back_behind_a_failing_one_keep_their_attempts(
    open_bus: OpenBus,
) -> None:
    """A nacked message holds back the later messages of its key; those deliveries (which
    Pub/Sub counts) are not attempts of the held-back messages, so they are never
    dead-lettered for it."""
    bus = await open_bus()
    topic = unique("topic")
    spec = SubscriptionSpec(topic, unique("sub"), max_delivery_attempts=3, max_concurrency=4)
    dead_letters = Recorder()
    await bus.subscribe(SubscriptionSpec(spec.dead_letter, unique("dlq")), dead_letters)
    recorder = Recorder(fail=lambda m: m.data == b"k:0")
    await bus.subscribe(spec, recorder)

    outgoing = [OutgoingMessage(topic, f"k:{i}".encode(), ordering_key="k") for i in range(5)]
    ids = await bus.publish_many(outgoing)

    await wait_until(lambda: len(dead_letters.acked) == 1 and len(recorder.acked) == 4)
    assert dead_letters.acked[0].attributes["dead_letter_source_message_id"] == ids[0]
    assert recorder.acked_data() == [f"k:{i}".encode() for i in range(1, 5)]
    assert [m.delivery_attempt for m in recorder.acked] == [1, 1, 1, 1]
    assert [m.delivery_attempt for m in recorder.delivered if m.data == b"k:0"] == [1, 2, 3]
    # Handlers run on the service's event loop, not on the client library's threads.
    assert recorder.threads == {threading.get_ident()}


async def test_deliveries_no_handler_saw_are_not_attempts(
    open_bus: OpenBus,
    project: str,
    subscriptions_admin: SubscriberAsyncClient,
    topics_admin: PublisherAsyncClient,
) -> None:
    """Pub/Sub counts every delivery, also those to a consumer that died before handling them
    (here: pulled and dropped by another client). They are not attempts: the message reaches
    the handler instead of the dead-letter topic."""
    bus = await open_bus()
    topic = unique("topic")
    spec = SubscriptionSpec(topic, unique("sub"), max_delivery_attempts=1)
    dead_letters = Recorder()
    await bus.subscribe(SubscriptionSpec(spec.dead_letter, unique("dlq")), dead_letters)
    # Made here rather than by a consumer that then closes: the emulator may keep a closed
    # consumer's stream and hand it the subscription's messages.
    path = f"projects/{project}/subscriptions/{spec.name}"
    await topics_admin.create_topic(name=f"projects/{project}/topics/{topic}")
    await subscriptions_admin.create_subscription(
        request={
            "name": path,
            "topic": f"projects/{project}/topics/{topic}",
            "enable_message_ordering": True,
            # With a dead-letter policy, Pub/Sub counts delivery attempts.
            "dead_letter_policy": {
                "dead_letter_topic": f"projects/{project}/topics/{spec.dead_letter}",
                "max_delivery_attempts": 100,
            },
        }
    )
    message_id = await bus.publish(OutgoingMessage(topic, b"x"))

    for _ in range(2):  # a consumer receives it and dies: the ack deadline lapses
        async with asyncio.timeout(WAIT_SECONDS):
            received: list[Any] = []
            while not received:  # a pull may come back empty
                reply = await subscriptions_admin.pull(
                    subscription=path, max_messages=1, timeout=10
                )
                received = list(reply.received_messages)
        assert [r.message.message_id for r in received] == [message_id]
        await subscriptions_admin.modify_ack_deadline(
            subscription=path, ack_ids=[received[0].ack_id], ack_deadline_seconds=0
        )

    recorder = Recorder()
    await bus.subscribe(spec, recorder)
    await wait_until(lambda: len(recorder.acked) == 1)
    assert recorder.acked[0].message_id == message_id
    assert recorder.acked[0].delivery_attempt == 1
    assert dead_letters.delivered == []


async def test_without_create_missing_resources_must_exist(open_bus: OpenBus, project: str) -> None:
    bus = await open_bus(create_missing=False)
    topic = unique("topic")
    remedy = (
        f"run 'make provision TAI_BUS=pubsub://{project}' "
        "(or set TAI_BUS_CREATE_MISSING=true for development)"
    )

    with pytest.raises(NotFound) as published:
        await bus.publish(OutgoingMessage(topic, b"x"))
    with pytest.raises(NotFound) as subscribed:
        await bus.subscribe(SubscriptionSpec(topic, unique("sub")), Recorder())
    # Per-replica subscriptions are the adapter's to create, but on existing topics.
    with pytest.raises(NotFound) as replica:
        await bus.subscribe(
            SubscriptionSpec(topic, unique("replica"), ephemeral=True, start_at_latest=True),
            Recorder(),
        )

    # Each is a startup error: one line that names the resource and the remedy.
    for raised in (published, replica):
        assert isinstance(raised.value, MissingBusResource)
        assert str(raised.value) == (
            f"Pub/Sub topic 'projects/{project}/topics/{topic}' does not exist; {remedy}"
        )
    assert isinstance(subscribed.value, StartupError)
    assert str(subscribed.value).startswith(
        f"Pub/Sub subscription 'projects/{project}/subscriptions/sub-"
    )
    assert str(subscribed.value).endswith(f"' does not exist; {remedy}")


async def test_a_missing_dead_letter_topic_is_named(
    open_bus: OpenBus, project: str, topics_admin: PublisherAsyncClient
) -> None:
    bus = await open_bus(create_missing=False, bus_url=f"pubsub://{project}?note=kept")
    spec = SubscriptionSpec(unique("topic"), unique("replica"), ephemeral=True)
    await topics_admin.create_topic(name=f"projects/{project}/topics/{spec.topic}")

    with pytest.raises(MissingBusResource) as raised:
        await bus.subscribe(spec, Recorder())

    assert raised.value.resource_id == f"projects/{project}/topics/{spec.dead_letter}"
    assert f"make provision TAI_BUS=pubsub://{project}?note=kept'" in str(raised.value)


async def test_required_topics_are_checked_when_the_bus_opens(
    open_bus: OpenBus, project: str, topics_admin: PublisherAsyncClient
) -> None:
    present, absent = unique("present"), unique("absent")
    await topics_admin.create_topic(name=f"projects/{project}/topics/{present}")

    with pytest.raises(MissingBusResource) as raised:
        await open_bus(create_missing=False, required_topics=[present, absent])
    bus = await open_bus(create_missing=False, required_topics=[present])
    made = await open_bus(create_missing=True, required_topics=[present, absent])

    assert raised.value.resource_id == f"projects/{project}/topics/{absent}"
    await topics_admin.get_topic(topic=f"projects/{project}/topics/{absent}")
    assert await bus.publish(OutgoingMessage(absent, b"x"))
    assert await made.publish(OutgoingMessage(present, b"x"))


async def test_attribute_names_the_client_library_reserves_are_rejected(
    open_bus: OpenBus,
) -> None:
    bus = await open_bus()

    with pytest.raises(InvalidArgument):
        await bus.publish(OutgoingMessage(unique("topic"), b"x", attributes={"timeout": "5"}))


async def test_with_lease_extension_a_slow_handler_is_not_redelivered(open_bus: OpenBus) -> None:
    bus = await open_bus(max_lease_seconds=120)
    topic = unique("topic")
    attempts: list[int] = []
    done: list[int] = []

    async def slow(message: Message) -> None:
        attempts.append(message.delivery_attempt)
        # Past twice the ack deadline: without lease extension this is always redelivered.
        await asyncio.sleep(21)
        done.append(message.delivery_attempt)

    await bus.subscribe(SubscriptionSpec(topic, unique("sub"), ack_deadline_seconds=10), slow)
    await bus.publish(OutgoingMessage(topic, b"slow"))

    await wait_until(lambda: done == [1], 30)
    assert attempts == [1]
