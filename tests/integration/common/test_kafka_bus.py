"""What only the Kafka adapter has: outages, commits that follow handlers, rebalances mid-stream,
ack deadlines enforced by cancelling, ephemeral groups, topics that must exist. The EventBus
contract itself runs in test_event_bus_contract.py.

Tests share the session's Tansu broker with names of their own; a test that stops a broker starts
a private one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocol
from support.processes import free_port
from tai_common.core import NotFound, Unavailable
from tai_common.kafka import KafkaBus
from tai_common.kafka.bus import _subscribed_topics
from tai_common.ports import Message, OutgoingMessage, SubscriptionSpec

if TYPE_CHECKING:
    # Loaded by pytest as a plugin (below); importing it first would skip its assert rewriting.
    from support.kafka_broker import KafkaBroker

pytest_plugins = ["support.kafka_broker"]

OpenBus = Callable[..., Awaitable[KafkaBus]]

WAIT_SECONDS = 15.0
# A publish must give up within this (the bus's publish timeout in these tests)...
PUBLISH_TIMEOUT = 2.0
# ...give or take the scheduling of a busy machine.
PUBLISH_SLACK = 2.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


class Recorder:
    """Records the messages its handler finished, each after `work_seconds`."""

    def __init__(self, work_seconds: float = 0.0) -> None:
        self.delivered: list[Message] = []
        self._work_seconds = work_seconds

    async def __call__(self, message: Message) -> None:
        await asyncio.sleep(self._work_seconds)
        self.delivered.append(message)


@pytest.fixture
async def open_bus(kafka_broker: KafkaBroker) -> AsyncIterator[OpenBus]:
    """Opens buses on the session's broker (test settings; `options` override them)."""
    buses: list[KafkaBus] = []

    async def make(**options: Any) -> KafkaBus:
        bus = await kafka_broker.open_bus(**options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def admin(kafka_broker: KafkaBroker) -> AsyncIterator[Any]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await client.start()
    yield client
    await client.close()


async def committed_offset(admin: Any, group: str, tp: TopicPartition) -> int:
    """The group's committed offset of a partition (-1 when none). Asked for named partitions:
    Tansu breaks the connection when asked for all of a group's offsets."""
    offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
    found = offsets.get(tp)
    return -1 if found is None else int(found.offset)


async def wait_for_commit(admin: Any, group: str, tp: TopicPartition, offset: int) -> None:
    """Waits until the group's committed offset of `tp` is `offset` (commits run in the
    background, after the handlers)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while await committed_offset(admin, group, tp) != offset:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_open_raises_unavailable_when_no_broker_answers() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await KafkaBus.open(f"127.0.0.1:{free_port()}", request_timeout_seconds=PUBLISH_TIMEOUT)
    assert time.monotonic() - started < PUBLISH_TIMEOUT + PUBLISH_SLACK


async def test_publish_raises_unavailable_within_its_timeout_while_the_broker_is_down(
    private_kafka_broker: Callable[[], KafkaBroker],
) -> None:
    broker = private_kafka_broker()
    bus = await broker.open_bus(publish_timeout_seconds=PUBLISH_TIMEOUT)
    topic = unique("topic")
    try:
        await bus.publish(OutgoingMessage(topic, b"before", ordering_key="policy-1"))

        broker.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish(OutgoingMessage(topic, b"during", ordering_key="policy-1"))
        assert time.monotonic() - started < PUBLISH_TIMEOUT + PUBLISH_SLACK

        # Back on the same port, empty (Tansu keeps nothing): the bus reconnects and, since
        # its topics were forgotten with the failure, creates the topic again.
        broker.start()

        async def publish_again() -> str:
            while True:
                try:
                    return await bus.publish(OutgoingMessage(topic, b"after", ordering_key="p"))
                except Unavailable:
                    await asyncio.sleep(0.5)

        async with asyncio.timeout(WAIT_SECONDS):
            await publish_again()
    finally:
        await bus.close()


async def test_an_offset_is_committed_only_after_its_handler_succeeded(
    open_bus: OpenBus, admin: Any, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A consumer process is killed while its handler runs: the message it was handling goes
    to the group's next consumer, the one it had handled does not."""
    bus = await open_bus()
    topic, group = unique("topic"), unique("sub")
    # One key: one partition, handled in order.
    first_id, stuck_id = await bus.publish_many(
        [
            OutgoingMessage(topic, b"handled", ordering_key="policy-1"),
            OutgoingMessage(topic, b"stuck", ordering_key="policy-1"),
        ]
    )
    partition, first_offset = (int(part) for part in first_id.split("-"))
    tp = TopicPartition(topic, partition)
    marker = tmp_path / "handling-stuck"
    # Popen only forks; the wait for the consumer below is asynchronous.
    child = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", _STUCK_CONSUMER, kafka_broker.bootstrap, topic, group, str(marker)],
        env={**os.environ, "TAI_TEST_BUS_OPTIONS": json.dumps(kafka_broker.bus_options)},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "consumer.log").open("wb"),
        start_new_session=True,
    )
    try:
        await wait_until(marker.exists, 30)
        # The handled message is committed; the one whose handler runs is not.
        await wait_for_commit(admin, group, tp, first_offset + 1)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)

    recorder = Recorder()
    await bus.subscribe(SubscriptionSpec(topic, group), recorder)

    await wait_until(lambda: len(recorder.delivered) == 1)
    (message,) = recorder.delivered
    assert (message.message_id, message.data, message.delivery_attempt) == (stuck_id, b"stuck", 1)
    await wait_for_commit(admin, group, tp, first_offset + 2)


async def test_partitions_moving_to_a_new_consumer_mid_stream_are_handed_over_cleanly(
    open_bus: OpenBus,
) -> None:
    """A rebalance while handlers run: the first consumer finishes them and commits before
    giving its partitions up, so nothing is lost and (no handler failing) nothing repeats."""
    topic, group = unique("topic"), unique("sub")
    spec = SubscriptionSpec(topic, group, max_concurrency=2)
    # Slow enough handlers (about 6 s for the lot on one consumer) that the group rebalances
    # (a second or two) well before the first consumer could finish them all alone.
    first, second = Recorder(work_seconds=0.08), Recorder(work_seconds=0.08)
    await (await open_bus()).subscribe(spec, first)
    ids = set(
        await (await open_bus()).publish_many(
            [OutgoingMessage(topic, f"m{i}".encode(), ordering_key=f"k{i % 6}") for i in range(150)]
        )
    )
    await wait_until(lambda: len(first.delivered) >= 10)

    await (await open_bus()).subscribe(spec, second)

    await wait_until(
        lambda: {m.message_id for m in first.delivered + second.delivered} == ids, timeout=30
    )
    # The second consumer got a share (the group did rebalance mid-stream)...
    assert second.delivered
    assert len(first.delivered) < len(ids)
    # ...and no message was handled twice.
    handled = Counter(m.message_id for m in first.delivered + second.delivered)
    assert max(handled.values()) == 1


# A consumer process: acks "handled", and on "stuck" touches the marker file and hangs.
_STUCK_CONSUMER = textwrap.dedent(
    """
    import asyncio, json, os, pathlib, sys
    from tai_common.kafka import KafkaBus
    from tai_common.ports import SubscriptionSpec

    async def main():
        bootstrap, topic, group, marker = sys.argv[1:]
        options = json.loads(os.environ["TAI_TEST_BUS_OPTIONS"])
        bus = await KafkaBus.open(bootstrap, **options)

        async def handle(message):
            if message.data == b"stuck":
                pathlib.Path(marker).touch()
                await asyncio.Event().wait()

        await bus.subscribe(SubscriptionSpec(topic, group, ack_deadline_seconds=600), handle)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_a_handler_past_its_ack_deadline_is_cancelled_before_the_redelivery(
    open_bus: OpenBus,
) -> None:
    bus = await open_bus()
    topic = unique("topic")
    events: list[str] = []

    async def slow_first_time(message: Message) -> None:
        events.append(f"start {message.delivery_attempt}")
        try:
            if message.delivery_attempt == 1:
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled 1")
            raise
        events.append(f"done {message.delivery_attempt}")

    spec = SubscriptionSpec(topic, unique("sub"), ack_deadline_seconds=0.3)
    await bus.subscribe(spec, slow_first_time)
    await bus.publish(OutgoingMessage(topic, b"slow"))

    await wait_until(lambda: "done 2" in events)
    # Kafka has no lease: the late handler is stopped, never run next to its redelivery.
    assert events == ["start 1", "cancelled 1", "start 2", "done 2"]


async def test_an_ephemeral_subscription_leaves_no_offsets_in_its_group(
    open_bus: OpenBus, admin: Any
) -> None:
    bus = await open_bus()
    topic, name = unique("topic"), unique("replica")
    recorder = Recorder()
    spec = SubscriptionSpec(topic, name, ephemeral=True, start_at_latest=True)
    subscription = await bus.subscribe(spec, recorder)
    ids = await bus.publish_many([OutgoingMessage(topic, b"x", ordering_key="k")] * 3)
    await wait_until(lambda: [m.message_id for m in recorder.delivered] == ids)

    await subscription.close()

    partition = int(ids[0].split("-")[0])
    # Nothing committed: once its consumer left, Kafka drops the group.
    assert await committed_offset(admin, name, TopicPartition(topic, partition)) == -1


async def test_without_create_missing_topics_must_exist(open_bus: OpenBus) -> None:
    bus = await open_bus(create_missing=False)
    topic = unique("missing")

    with pytest.raises(NotFound):
        await bus.publish(OutgoingMessage(topic, b"x"))
    with pytest.raises(NotFound):
        await bus.subscribe(SubscriptionSpec(topic, unique("sub")), Recorder())

    # Existing topics (made here by another bus) are used as they are.
    await (await open_bus()).publish(OutgoingMessage(topic, b"x"))
    await (await open_bus()).publish(OutgoingMessage(f"{topic}-dead-letter", b"x"))
    await bus.publish(OutgoingMessage(topic, b"y"))
    subscription = await bus.subscribe(SubscriptionSpec(topic, unique("sub")), Recorder())
    await subscription.close()


def test_group_members_subscribed_to_other_topics_are_recognised() -> None:
    """Apache Kafka reports each member's subscription in DescribeGroups (Tansu reports none,
    so this is checked here on the encoding alone)."""
    metadata = ConsumerProtocol.METADATA(0, ["tai-policies", "tai-signals"], b"").encode()

    assert _subscribed_topics(metadata) == {"tai-policies", "tai-signals"}
    assert _subscribed_topics(b"") == set()
