"""The EventBus on Google Cloud Pub/Sub, or on its emulator when `PUBSUB_EMULATOR_HOST` is set
(the client library then talks to it without credentials).

How the port maps onto Pub/Sub:

- A topic is a Pub/Sub topic of the same name in the bus's project; a `SubscriptionSpec.name` is
  a Pub/Sub subscription, so the replicas of a service that subscribe with one name share its
  messages. Without `create_missing`, topics and shared subscriptions must exist (made by
  `provision`, which `scripts/provision_bus.py` runs; a missing one raises
  `MissingBusResource`); per-replica subscriptions are always created, on existing topics.
- Publishing goes through the client library's batching publisher with message ordering on, so
  the messages of one ordering key (one aggregate) keep their order. Attributes are passed
  through unchanged (event type, aggregate id and trace context come from
  `tai_common.messaging.events.to_message`). Each publish is bounded by
  `publish_timeout_seconds` and retried within it; past it, `Unavailable` (the outbox relay
  retries later).
- Every subscription is created with message ordering, the spec's ack deadline and retry backoff,
  and a dead-letter policy on the spec's dead-letter topic. A consumer is a streaming pull with
  flow control (`max_concurrency` outstanding messages); its callbacks run on the client's
  threads and hand each message to the handler on the service's event loop. A handler that
  returns acks, one that raises nacks.
- Dead-lettering happens here, not in Pub/Sub: Pub/Sub only accepts 5–100 delivery attempts, and
  the emulator stops delivering such a message without publishing it anywhere. So a delivery
  past `max_delivery_attempts` is published to the dead-letter topic with the same attributes
  the SQLite bus adds, then acked. Attempts are the deliveries that reached this consumer's
  handler (`_DeliveryCounts`), not Pub/Sub's count. The subscription's own dead-letter policy
  is set to Pub/Sub's maximum (100) as a backstop.
- When a message of an ordering key is nacked, the client library goes on with the key's next
  messages, and the emulator (unlike Pub/Sub) redelivers only the nacked one. So the consumer
  nacks the key's later messages itself, without running the handler, until the failed one comes
  back; those deliveries are not counted as attempts of the messages they held back.
- Ephemeral subscriptions expire after `ephemeral_ttl_seconds` without a consumer (Pub/Sub's
  minimum is a day) and are deleted when their consumer closes.
- A new subscription that does not `start_at_latest` is seeked to the start of its topic's
  retention (topics are created retaining `topic_retention_seconds` of messages), so it sees the
  messages published before it existed.
- Leases follow the port by default: the client library's lease manager renews a message's
  lease by the ack deadline and stops once it has held the message that long, so a handler
  slower than the deadline sees its message again (after one to two deadlines).
  `max_lease_seconds` lets the library keep renewing while the handler runs, as Pub/Sub clients
  usually do.
- Each bus has its own gRPC connections, retried at least every 5 s after a loss (see
  `_BUS_CHANNEL_OPTIONS`), so publishing resumes within seconds once Pub/Sub is back.

The emulator (cloud-pubsub-emulator 0.8.20) differs from Pub/Sub, and the adapter copes:

- It has no Seek (UNIMPLEMENTED), but a new subscription on a topic with message retention gets
  the topic's retained messages anyway, so start-at-the-beginning works without the seek. For
  `start_at_latest` that replay is wrong: on the emulator the consumer acks, unhandled, the
  messages published before the subscription was created (the creation time is kept in a label,
  so every replica knows it).
- It ignores retry policies (a nacked message comes back at once) and dead-letter topics (see
  above); it does count delivery attempts once a dead-letter policy is set.
- A cancelled streaming pull stays registered in it and swallows the subscription's messages
  from then on; consumers on the emulator end their stream with a half-close instead
  (`_half_close`).
- It gives all of a subscription's messages to its first stream (no balancing between the
  consumers of a subscription) and does not enforce the stream's flow control (the client
  library holds the excess); it accepts ack deadlines under Pub/Sub's minimum of 10 s.

Permissions on Pub/Sub: publishers need `roles/pubsub.publisher` on the topics, consumers
`roles/pubsub.subscriber` on their subscriptions and `roles/pubsub.viewer` (the consumer reads
the subscription and its topic); `create_missing` and ephemeral subscriptions need
`roles/pubsub.editor`. Dead-letter policies also need the project's Pub/Sub service agent
(`service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com`) to hold
`roles/pubsub.publisher` on each dead-letter topic and `roles/pubsub.subscriber` on each
subscription; grant those when provisioning.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import enum
import logging
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.api_core.retry import AsyncRetry, if_transient_error
from google.cloud.pubsub_v1 import (
    PublisherClient,
    SubscriberClient,
)
from google.cloud.pubsub_v1.publisher.exceptions import (
    PublishToPausedOrderingKeyException,
)
from google.cloud.pubsub_v1.subscriber.scheduler import (
    ThreadScheduler,
)
from google.cloud.pubsub_v1.types import (
    FlowControl,
    PublisherOptions,
)
from google.protobuf import duration_pb2, timestamp_pb2
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1 import types as pubsub_types
from google.pubsub_v1.services.publisher.transports import (
    PublisherGrpcAsyncIOTransport,
    PublisherGrpcTransport,
)
from google.pubsub_v1.services.subscriber.transports import (
    SubscriberGrpcAsyncIOTransport,
    SubscriberGrpcTransport,
)

from tai_common.core import (
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
from tai_common.core.units import NS_PER_SECOND
from tai_common.ports import (
    DEAD_LETTER_DELIVERY_ATTEMPTS,
    DEAD_LETTER_SOURCE_MESSAGE_ID,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    EVENT_TYPE_ATTRIBUTE,
    Handler,
    Message,
    MissingBusResource,
    Outcome,
    OutgoingMessage,
    Provisioned,
    Subscription,
    SubscriptionSpec,
    durable,
    needed_topics,
)

__all__ = ["PubSubBus"]

logger = logging.getLogger(__name__)

AdminTransport = TypeVar(
    "AdminTransport", PublisherGrpcAsyncIOTransport, SubscriberGrpcAsyncIOTransport
)

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Pub/Sub's limits (the emulator is laxer).
_MIN_ACK_DEADLINE_SECONDS: Final = 10
_MAX_ACK_DEADLINE_SECONDS: Final = 600
_MAX_BACKOFF_SECONDS: Final = 600.0
_MIN_EXPIRATION_TTL_SECONDS: Final = 24 * 3600.0
_MIN_TOPIC_RETENTION_SECONDS: Final = 600.0
_MAX_TOPIC_RETENTION_SECONDS: Final = 31 * 24 * 3600.0
# How long a consumer's close waits for a cancelled stream to stop before leaving it.
_STOP_GRACE_SECONDS = 2.0
# The dead-letter policy's attempts: the most Pub/Sub allows, as a backstop behind the
# adapter's own dead-lettering.
_SERVER_MAX_DELIVERY_ATTEMPTS: Final = 100

# `PublisherClient.publish` takes attributes as keyword arguments next to these parameters.
_RESERVED_ATTRIBUTES: Final = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})
# Added to dead-lettered messages, as the SQLite bus does.
_ATTR_DL_SUBSCRIPTION: Final = DEAD_LETTER_SOURCE_SUBSCRIPTION
_ATTR_DL_MESSAGE_ID: Final = DEAD_LETTER_SOURCE_MESSAGE_ID
_ATTR_DL_ATTEMPTS: Final = DEAD_LETTER_DELIVERY_ATTEMPTS
# When the subscription was created (ns since the epoch); see the emulator notes above.
_LABEL_CREATED_NS: Final = "tai-created-ns"

# Errors after which a publish is worth retrying.
_TRANSIENT_PUBLISH_ERRORS: Final = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.Unknown,
    gexc.Cancelled,
    gexc.ResourceExhausted,
    # Raised for a key whose earlier publish failed, until resume_publish: this call resumes.
    PublishToPausedOrderingKeyException,
)
_FIRST_PUBLISH_RETRY_SECONDS: Final = 0.1
_MAX_PUBLISH_RETRY_SECONDS: Final = 1.0
# Beyond the RPC timeout, before a publish future that never resolves is given up.
_PUBLISH_GRACE_SECONDS: Final = 2.0
# Delivery bookkeeping kept per consumer (messages seen recently, by id).
_TRACKED_MESSAGES: Final = 10_000
_MAX_RESTART_DELAY_SECONDS: Final = 30.0

# The channel options the client library uses by default.
_LIBRARY_CHANNEL_OPTIONS: Final = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30000),
)
# Added to every channel of a bus. gRPC shares connections (subchannels) between the channels
# of a process by default, and a shared one still backing off after an outage makes even a new
# bus fail for seconds after Pub/Sub is back; a bus keeps its own. And a lost connection is
# retried at least every 5 s (gRPC's default backoff grows to 2 minutes).
_BUS_CHANNEL_OPTIONS: Final = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_reconnect_backoff_ms", 5000),
)


@contextmanager
def _translate_errors(what: str, kind: str, name: str) -> Iterator[None]:
    """Maps the errors of the Pub/Sub client to TAI errors.

    Args:
        what: The operation, for messages.
        kind: What `name` names (topic, subscription, message), for NotFound and friends.
        name: The resource the operation is about.
    """
    try:
        yield
    except gexc.NotFound as error:
        raise NotFound(kind, name) from error
    except gexc.AlreadyExists as error:
        raise AlreadyExists(kind, name) from error
    except gexc.InvalidArgument as error:
        raise InvalidArgument(kind, f"{what}: {error.message}") from error
    except (gexc.FailedPrecondition, gexc.MethodNotImplemented) as error:
        raise FailedPrecondition(f"{what}: {error.message}") from error
    except gexc.PermissionDenied as error:
        raise PermissionDenied(f"{what}: {error.message}") from error
    except gexc.Unauthenticated as error:
        raise Unauthenticated(f"{what}: {error.message}") from error
    except gexc.ResourceExhausted as error:
        raise ResourceExhausted(f"{what}: {error.message}") from error
    # The rest (unavailable, deadline exceeded, internal, retries given up) are transient, and
    # so are our own time limits.
    except (gexc.GoogleAPIError, PublishToPausedOrderingKeyException, TimeoutError) as error:
        raise Unavailable(f"{what}: {error or type(error).__name__}") from error


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * NS_PER_SECOND))
    return duration


def _seconds(value: object) -> float:
    """A Duration field as read from a proto-plus message (a timedelta) or a raw Duration."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, duration_pb2.Duration):
        return value.ToNanoseconds() / NS_PER_SECOND
    return 0.0


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromNanoseconds(ns)
    return timestamp


def _publish_time_ns(published: dt.datetime) -> int:
    # The client library hands out publish times as datetimes (microsecond precision).
    return (published - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def subscription_filter(spec: SubscriptionSpec) -> str:
    """Pub/Sub's filter for `spec.event_types` ("" for none): the server then neither
    delivers nor bills the messages it leaves out."""
    return " OR ".join(
        f'attributes.{EVENT_TYPE_ATTRIBUTE} = "{event_type}"' for event_type in spec.event_types
    )


def _subscription_differences(
    existing: pubsub_types.Subscription, wanted: pubsub_types.Subscription
) -> tuple[str, ...]:
    """How an existing subscription differs from the one the bus would create, one
    "setting: existing, wanted" line per setting (labels aside)."""
    differences: list[str] = []

    def compare(setting: str, have: object, want: object, note: str = "") -> None:
        if have != want:
            differences.append(f"{setting}: {have!r}, wanted {want!r}{note}")

    compare("topic", existing.topic, wanted.topic, " (delete the subscription, provision again)")
    compare(
        "filter",
        existing.filter,
        wanted.filter,
        " (Pub/Sub cannot change a filter: the consumer leaves out the other events itself; "
        "delete the subscription and provision again to have Pub/Sub do it)",
    )
    compare(
        "message ordering",
        existing.enable_message_ordering,
        wanted.enable_message_ordering,
        " (Pub/Sub cannot turn it on: delete the subscription and provision again)",
    )
    compare("ack deadline", existing.ack_deadline_seconds, wanted.ack_deadline_seconds)
    compare(
        "retry backoff",
        (
            _seconds(existing.retry_policy.minimum_backoff),
            _seconds(existing.retry_policy.maximum_backoff),
        ),
        (
            _seconds(wanted.retry_policy.minimum_backoff),
            _seconds(wanted.retry_policy.maximum_backoff),
        ),
    )
    compare(
        "dead-letter policy",
        (
            existing.dead_letter_policy.dead_letter_topic,
            existing.dead_letter_policy.max_delivery_attempts,
        ),
        (
            wanted.dead_letter_policy.dead_letter_topic,
            wanted.dead_letter_policy.max_delivery_attempts,
        ),
    )
    compare(
        "expiration TTL",
        _seconds(existing.expiration_policy.ttl),
        _seconds(wanted.expiration_policy.ttl),
    )
    return tuple(differences)


class _Outcome(enum.Enum):
    ACK = "ack"
    NACK = "nack"


class _DeliveryCounts:
    """Delivery attempts as the port defines them (deliveries handed to the handler), per
    message id, counted by this consumer.

    Pub/Sub's own count is not used: it also counts deliveries that never reached a handler —
    those the ordering guard nacked, those made to a consumer that died (or, on the emulator, to
    a stream it keeps after a network cut) and those whose ack was lost in an outage — so after a
    crash or a cut it dead-lettered messages no handler had ever seen. A message bouncing between
    consumers is counted by each; Pub/Sub's dead-letter policy (100 attempts) is the backstop.
    Only recently seen messages are remembered.
    """

    def __init__(self, capacity: int = _TRACKED_MESSAGES) -> None:
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._capacity = capacity

    def attempt(self, message_id: str) -> int:
        """Counts a delivery and returns its attempt number (1 for the first)."""
        count = self._seen.pop(message_id, 0) + 1
        self._seen[message_id] = count
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return count

    def forget(self, message_id: str) -> None:
        self._seen.pop(message_id, None)


@dataclass(frozen=True)
class _Block:
    """An ordering key held back until `message_id` (nacked) is delivered again."""

    message_id: str
    # Loop time after which the key is let go anyway (the message went to another consumer).
    until: float


class PubSubBus:
    """An `EventBus` on Pub/Sub.

    Create it with `await PubSubBus.open(project)`; close it with `await bus.close()`.
    """

    def __init__(
        self,
        project: str,
        *,
        publisher: Any,
        subscriber: Any,
        topics_admin: PublisherAsyncClient,
        subscriptions_admin: SubscriberAsyncClient,
        admin_clients: AsyncExitStack,
        clock: Clock,
        create_missing: bool,
        publish_timeout_seconds: float,
        request_timeout_seconds: float,
        topic_retention_seconds: float | None,
        ephemeral_ttl_seconds: float,
        max_lease_seconds: float | None,
        emulator: bool,
        bus_url: str,
    ) -> None:
        """Wraps open clients; use `PubSubBus.open`."""
        self._project = project
        self._bus_url = bus_url
        # google.cloud.pubsub_v1 clients (untyped): the batching, ordering publisher and the
        # streaming-pull subscriber.
        self._publisher = publisher
        self._subscriber = subscriber
        # Typed asyncio clients for the administrative calls, which then never block the loop.
        self._topics_admin = topics_admin
        self._subscriptions_admin = subscriptions_admin
        # Closes the asyncio clients' channels.
        self._admin_clients = admin_clients
        self._clock = clock
        self._create_missing = create_missing
        self._publish_timeout = publish_timeout_seconds
        self._request_timeout = request_timeout_seconds
        self._topic_retention = topic_retention_seconds
        self._ephemeral_ttl = ephemeral_ttl_seconds
        self._max_lease = max_lease_seconds
        self._emulator = emulator
        # Topics known to exist (checked or created by this bus), so publishing does not ask.
        self._known_topics: set[str] = set()
        self._consumers: set[_Consumer] = set()
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        project: str,
        *,
        create_missing: bool = False,
        clock: Clock | None = None,
        publish_timeout_seconds: float = 10.0,
        request_timeout_seconds: float = 30.0,
        topic_retention_seconds: float | None = 7 * 24 * 3600.0,
        ephemeral_ttl_seconds: float = _MIN_EXPIRATION_TTL_SECONDS,
        max_lease_seconds: float | None = None,
        emulator: bool | None = None,
        required_topics: Collection[str] = (),
        bus_url: str | None = None,
    ) -> PubSubBus:
        """Connects to Pub/Sub (or the emulator named by `PUBSUB_EMULATOR_HOST`).

        Args:
            project: The Google Cloud project holding the topics and subscriptions.
            create_missing: Create missing topics (with `topic_retention_seconds` of retention,
                dead-letter topics included) and subscriptions, for emulators and first
                installs. Without it they must exist; ephemeral subscriptions are always
                created, on existing topics.
            clock: Source of wall-clock time (subscription creation times, seek targets).
            publish_timeout_seconds: How long a publish may take, retries included, before it
                raises `Unavailable`.
            request_timeout_seconds: The limit for administrative calls (get, create, seek,
                delete).
            topic_retention_seconds: Message retention of the topics this bus creates (Pub/Sub
                accepts 10 minutes to 31 days), which lets a new subscription start at the
                retained beginning; None creates topics without retention.
            ephemeral_ttl_seconds: An ephemeral subscription left without a consumer (its
                process died) is deleted by Pub/Sub after this; at least a day.
            max_lease_seconds: None (the default) keeps the port's ack deadline: a message not
                acked within its subscription's ack deadline is delivered again (the client
                library may stretch one lease to under twice the deadline). A number lets the
                client library extend the lease of a message whose handler is still running,
                up to that many seconds, as Pub/Sub clients usually do.
            emulator: Whether the backend is the emulator (see the module notes); None
                decides by `PUBSUB_EMULATOR_HOST`, as the client library does.
            required_topics: Topics that must exist (created with `create_missing`), checked
                before this returns: those a service publishes to.
            bus_url: The bus's URL as configured (`TAI_BUS`), for the remedy that errors about
                missing resources name; default `pubsub://PROJECT`.

        Returns:
            The open bus.

        Raises:
            MissingBusResource: A required topic does not exist (and `create_missing` is off).
            Unavailable: Pub/Sub cannot be reached to check the required topics.
            ValueError: A setting is out of range.
        """
        if not project:
            raise ValueError("project must not be empty")
        for name, value in (
            ("publish_timeout_seconds", publish_timeout_seconds),
            ("request_timeout_seconds", request_timeout_seconds),
            ("ephemeral_ttl_seconds", ephemeral_ttl_seconds),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if max_lease_seconds is not None and max_lease_seconds <= 0:
            raise ValueError("max_lease_seconds must be positive")
        if topic_retention_seconds is not None:
            retention = _clamp(
                topic_retention_seconds, _MIN_TOPIC_RETENTION_SECONDS, _MAX_TOPIC_RETENTION_SECONDS
            )
            if retention != topic_retention_seconds:
                logger.warning(
                    "topic retention %ss is outside Pub/Sub's range; using %ss",
                    topic_retention_seconds,
                    retention,
                )
            topic_retention_seconds = retention
        if ephemeral_ttl_seconds < _MIN_EXPIRATION_TTL_SECONDS:
            logger.warning(
                "ephemeral subscription TTL %ss is below Pub/Sub's minimum; using %ss",
                ephemeral_ttl_seconds,
                _MIN_EXPIRATION_TTL_SECONDS,
            )
            ephemeral_ttl_seconds = _MIN_EXPIRATION_TTL_SECONDS
        emulator_host = os.environ.get("PUBSUB_EMULATOR_HOST") or None
        if emulator is None:
            emulator = emulator_host is not None
        # The thread-based clients may look up credentials (a metadata server) when built.
        publisher, subscriber = await asyncio.to_thread(_make_streaming_clients, emulator_host)
        admin_clients = AsyncExitStack()
        topics_admin = await admin_clients.enter_async_context(
            PublisherAsyncClient(
                transport=_admin_transport(PublisherGrpcAsyncIOTransport, emulator_host)
            )
        )
        subscriptions_admin = await admin_clients.enter_async_context(
            SubscriberAsyncClient(
                transport=_admin_transport(SubscriberGrpcAsyncIOTransport, emulator_host)
            )
        )
        bus = cls(
            project,
            publisher=publisher,
            subscriber=subscriber,
            topics_admin=topics_admin,
            subscriptions_admin=subscriptions_admin,
            admin_clients=admin_clients,
            clock=clock or SystemClock(),
            create_missing=create_missing,
            publish_timeout_seconds=publish_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            topic_retention_seconds=topic_retention_seconds,
            ephemeral_ttl_seconds=ephemeral_ttl_seconds,
            max_lease_seconds=max_lease_seconds,
            emulator=emulator,
            bus_url=bus_url or f"pubsub://{project}",
        )
        try:
            await bus._require_topics(required_topics)
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
            Its Pub/Sub message id, once Pub/Sub has it.

        Raises:
            Unavailable: Pub/Sub could not be reached within the publish timeout.
            MissingBusResource: The topic does not exist (and `create_missing` is off).
            InvalidArgument: The message cannot be published (empty topic, reserved or invalid
                attribute names, too large).
        """
        (message_id,) = await self.publish_many([message])
        return message_id

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publishes messages, in order per ordering key, and waits until Pub/Sub has them all.

        Messages that fail for a transient reason are published again (after their ordering
        keys are resumed) until the publish timeout; a message may then be published twice,
        which consumers tolerate (delivery is at least once anyway).

        Args:
            messages: The messages, possibly for several topics.

        Returns:
            Their Pub/Sub message ids, in the order of `messages`.

        Raises:
            Unavailable: Pub/Sub could not be reached within the publish timeout.
            MissingBusResource: A topic does not exist (and `create_missing` is off).
            InvalidArgument: A message cannot be published.
        """
        for message in messages:
            if not message.topic:
                raise InvalidArgument("topic", "must not be empty")
            reserved = _RESERVED_ATTRIBUTES.intersection(message.attributes)
            if reserved:
                raise InvalidArgument(
                    "attributes", f"{sorted(reserved)} are reserved by the Pub/Sub client"
                )
        if not messages:
            return []
        if self._closed:
            raise Unavailable("the event bus is closed")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        ids: list[str] = [""] * len(messages)
        pending = list(range(len(messages)))
        delay = _FIRST_PUBLISH_RETRY_SECONDS
        while True:
            await self._ensure_topics(
                {messages[i].topic for i in pending}, max(deadline - loop.time(), 0.1)
            )
            results = await self._publish_once(
                [messages[i] for i in pending], max(deadline - loop.time(), 0.1)
            )
            failed: list[int] = []
            transient: BaseException | None = None
            fatal: tuple[int, BaseException] | None = None
            for index, result in zip(pending, results, strict=True):
                if not isinstance(result, BaseException):
                    ids[index] = result
                    continue
                failed.append(index)
                if self._is_retryable(result, messages[index].topic):
                    transient = result
                elif fatal is None:
                    fatal = index, result
            if not failed:
                return ids
            self._resume({(messages[i].topic, messages[i].ordering_key) for i in failed})
            if fatal is not None:
                index, error = fatal
                if isinstance(error, gexc.NotFound):
                    # Without create_missing (else it was retried above).
                    raise self._missing("topic", self._topic_path(messages[index].topic))
                with _translate_errors("cannot publish", "topic", messages[index].topic):
                    raise error
            if loop.time() + delay >= deadline:
                raise Unavailable(
                    f"cannot publish to Pub/Sub within {self._publish_timeout}s: {transient}"
                ) from transient
            logger.debug("publish failed (%s); retrying %d messages", transient, len(failed))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_PUBLISH_RETRY_SECONDS)
            pending = failed

    async def _publish_once(
        self, messages: list[OutgoingMessage], timeout: float
    ) -> list[str | BaseException]:
        """Hands the messages to the client library in order and awaits every publish future."""
        futures = [
            asyncio.wrap_future(
                self._publisher.publish(
                    self._topic_path(m.topic),
                    m.data,
                    ordering_key=m.ordering_key,
                    # No client-side retry: with ordering on, the library retries forever, and a
                    # publish must give up within its timeout. publish_many retries instead.
                    retry=None,
                    timeout=timeout,
                    **m.attributes,
                )
            )
            for m in messages
        ]
        try:
            async with asyncio.timeout(timeout + _PUBLISH_GRACE_SECONDS):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError as error:
            raise Unavailable(f"Pub/Sub did not confirm a publish within {timeout}s") from error
        return [r if isinstance(r, BaseException) else str(r) for r in results]

    def _is_retryable(self, error: BaseException, topic: str) -> bool:
        """Whether publishing again may help after `error`."""
        if isinstance(error, _TRANSIENT_PUBLISH_ERRORS):
            return True
        if isinstance(error, gexc.NotFound) and self._create_missing:
            # The topic went away (an emulator restarted): create it again and retry.
            self._known_topics.discard(topic)
            return True
        return False

    def _resume(self, keys: set[tuple[str, str]]) -> None:
        """Resumes ordering keys after failed publishes: the library refuses every later
        message of a key whose publish failed until then."""
        for topic, key in keys:
            if not key:
                continue
            try:
                self._publisher.resume_publish(self._topic_path(topic), key)
            except RuntimeError as error:
                # Several publishers of one process (tai-server's three relays) share this
                # client: another one's failure already resumed the key. Anything else (a
                # stopped publisher) is a real error.
                if "not paused" not in str(error):
                    raise

    # -- subscribing -----------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        """Starts a consumer of the subscription, creating the subscription when allowed.

        Args:
            spec: The subscription; consumers with the same `spec.name` share its messages.
            handler: Called once per delivery on this event loop; returning acks, raising nacks.

        Returns:
            The running consumer; `close()` it to stop.

        Raises:
            FailedPrecondition: The subscription exists for another topic.
            MissingBusResource: The subscription, its topic or its dead-letter topic does not
                exist (and `create_missing` is off; per-replica subscriptions are created
                anyway, on existing topics).
            InvalidArgument: The dead-letter topic is the subscription's own topic, or a name is
                not valid on Pub/Sub.
            Unavailable: Pub/Sub cannot be reached.
        """
        if spec.dead_letter == spec.topic:
            raise InvalidArgument("dead_letter_topic", "must differ from the topic")
        if self._closing:
            raise Unavailable("the event bus is closed")
        if spec.max_delivery_attempts >= _SERVER_MAX_DELIVERY_ATTEMPTS:
            logger.warning(
                "subscription %r: Pub/Sub dead-letters after %d delivery attempts, before the "
                "%d asked for",
                spec.name,
                _SERVER_MAX_DELIVERY_ATTEMPTS,
                spec.max_delivery_attempts,
            )
        skip_before_ns = await self._prepare_subscription(spec)
        consumer = _Consumer(self, spec, handler, skip_before_ns)
        self._consumers.add(consumer)
        consumer.start()
        return consumer

    async def _prepare_subscription(self, spec: SubscriptionSpec) -> int | None:
        """Makes sure the subscription exists for `spec.topic`.

        Returns:
            On the emulator, for `start_at_latest`: the subscription's creation time (ns);
            messages published before it are to be skipped. Otherwise None.
        """
        path = self._subscription_path(spec.name)
        existing = await self._get_subscription(spec.name)
        if existing is None:
            if not (self._create_missing or spec.ephemeral):
                raise self._missing("subscription", path)
            existing = await self._create_subscription(spec)
        if existing.topic != self._topic_path(spec.topic):
            raise FailedPrecondition(
                f"subscription {spec.name!r} exists for topic {existing.topic!r}, "
                f"not {self._topic_path(spec.topic)!r}"
            )
        if not existing.enable_message_ordering:
            logger.warning(
                "subscription %r was created without message ordering; ordering keys are not "
                "kept (Pub/Sub cannot turn ordering on for an existing subscription)",
                path,
            )
        wanted_filter = subscription_filter(spec)
        if existing.filter != wanted_filter:
            logger.warning(
                "subscription %r has the filter %r, not %r; the consumer leaves out the events "
                "it does not want (Pub/Sub cannot change an existing subscription's filter)",
                path,
                existing.filter,
                wanted_filter,
            )
        if self._emulator and spec.start_at_latest:
            created = existing.labels.get(_LABEL_CREATED_NS, "")
            if created.isdigit():
                return int(created)
        return None

    async def _create_subscription(self, spec: SubscriptionSpec) -> pubsub_types.Subscription:
        """Creates the subscription (or returns it when another consumer just did).

        Raises:
            MissingBusResource: Its topic or dead-letter topic does not exist (and
                `create_missing` is off).
        """
        if self._create_missing:
            # Checked, not taken from memory: a missing subscription may mean that the backend
            # lost everything (an emulator restarted), topics included.
            await self._ensure_topics(
                {spec.topic, spec.dead_letter}, self._request_timeout, check=True
            )
        subscription = self._subscription_request(spec)
        if subscription.ack_deadline_seconds != spec.ack_deadline_seconds:
            logger.info(
                "subscription %r: ack deadline %ss becomes %ss on Pub/Sub (10 to 600, whole)",
                spec.name,
                spec.ack_deadline_seconds,
                subscription.ack_deadline_seconds,
            )
        try:
            with _translate_errors(
                f"cannot create subscription {spec.name!r}", "topic", spec.topic
            ):
                async with asyncio.timeout(self._request_timeout):
                    created = await self._subscriptions_admin.create_subscription(
                        request=subscription, **self._call_options()
                    )
        except AlreadyExists:
            found = await self._get_subscription(spec.name)
            if found is None:
                raise Unavailable(f"subscription {spec.name!r} keeps changing") from None
            return found
        except NotFound:
            # The topic or the dead-letter topic: Pub/Sub's message does not say which.
            for topic in (spec.topic, spec.dead_letter):
                if not self._create_missing and await self._get_topic(topic) is None:
                    raise self._missing("topic", self._topic_path(topic)) from None
            raise
        if not spec.start_at_latest:
            await self._rewind(spec)
        return created

    def _subscription_request(self, spec: SubscriptionSpec) -> pubsub_types.Subscription:
        """The Pub/Sub subscription this bus creates for `spec` (within Pub/Sub's limits)."""
        ack_deadline = int(
            _clamp(
                math.ceil(spec.ack_deadline_seconds),
                _MIN_ACK_DEADLINE_SECONDS,
                _MAX_ACK_DEADLINE_SECONDS,
            )
        )
        min_backoff = _clamp(spec.min_backoff_seconds, 0.0, _MAX_BACKOFF_SECONDS)
        max_backoff = _clamp(spec.max_backoff_seconds, min_backoff, _MAX_BACKOFF_SECONDS)
        return pubsub_types.Subscription(
            name=self._subscription_path(spec.name),
            topic=self._topic_path(spec.topic),
            ack_deadline_seconds=ack_deadline,
            enable_message_ordering=True,
            retry_policy=pubsub_types.RetryPolicy(
                minimum_backoff=_duration(min_backoff), maximum_backoff=_duration(max_backoff)
            ),
            dead_letter_policy=pubsub_types.DeadLetterPolicy(
                dead_letter_topic=self._topic_path(spec.dead_letter),
                max_delivery_attempts=_SERVER_MAX_DELIVERY_ATTEMPTS,
            ),
            # A policy without a TTL never expires (no policy means 31 days of inactivity).
            expiration_policy=pubsub_types.ExpirationPolicy(
                ttl=_duration(self._ephemeral_ttl) if spec.ephemeral else None
            ),
            labels={_LABEL_CREATED_NS: str(self._clock.now_ns())},
            filter=subscription_filter(spec),
        )

    async def _rewind(self, spec: SubscriptionSpec) -> None:
        """Seeks a new subscription back to its topic's retained beginning."""
        with _translate_errors("cannot read topic", "topic", spec.topic):
            async with asyncio.timeout(self._request_timeout):
                topic = await self._topics_admin.get_topic(
                    topic=self._topic_path(spec.topic), **self._call_options()
                )
        retention = _seconds(topic.message_retention_duration)
        if retention <= 0:
            logger.info(
                "topic %r retains no messages: subscription %r starts at its end",
                spec.topic,
                spec.name,
            )
            return
        target = self._clock.now_ns() - int(retention * NS_PER_SECOND)
        request = pubsub_types.SeekRequest(
            subscription=self._subscription_path(spec.name), time=_timestamp(target)
        )
        with _translate_errors("cannot seek", "subscription", spec.name):
            try:
                async with asyncio.timeout(self._request_timeout):
                    await self._subscriptions_admin.seek(request=request, **self._call_options())
            except gexc.MethodNotImplemented:
                # The emulator: no Seek, but it replays the topic's retained messages itself.
                logger.debug("Seek is not implemented here; relying on the topic's replay")

    async def _get_subscription(self, name: str) -> pubsub_types.Subscription | None:
        try:
            with _translate_errors("cannot read subscription", "subscription", name):
                async with asyncio.timeout(self._request_timeout):
                    return await self._subscriptions_admin.get_subscription(
                        subscription=self._subscription_path(name), **self._call_options()
                    )
        except NotFound:
            return None

    async def _delete_subscription(self, name: str) -> None:
        try:
            with _translate_errors("cannot delete subscription", "subscription", name):
                async with asyncio.timeout(self._request_timeout):
                    await self._subscriptions_admin.delete_subscription(
                        subscription=self._subscription_path(name), **self._call_options()
                    )
        except NotFound:
            pass

    async def _ensure_topics(
        self, topics: set[str], timeout: float, *, check: bool = False
    ) -> None:
        """With `create_missing`, creates the topics this bus has not seen yet (or all of them,
        when `check`)."""
        if not self._create_missing:
            return
        for topic in sorted(topics if check else topics - self._known_topics):
            await self._create_topic(topic, timeout)
            self._known_topics.add(topic)

    async def _create_topic(self, topic: str, timeout: float) -> bool:
        """Creates the topic as this bus does; returns False when it existed."""
        request = pubsub_types.Topic(name=self._topic_path(topic))
        if self._topic_retention is not None:
            request.message_retention_duration = _duration(self._topic_retention)
        try:
            with _translate_errors("cannot create topic", "topic", topic):
                async with asyncio.timeout(timeout):
                    await self._topics_admin.create_topic(
                        request=request, **self._call_options(timeout)
                    )
        except AlreadyExists:
            return False
        logger.info("created Pub/Sub topic %r", request.name)
        return True

    async def _get_topic(self, topic: str) -> pubsub_types.Topic | None:
        try:
            with _translate_errors("cannot read topic", "topic", topic):
                async with asyncio.timeout(self._request_timeout):
                    return await self._topics_admin.get_topic(
                        topic=self._topic_path(topic), **self._call_options()
                    )
        except NotFound:
            return None

    async def _require_topics(self, topics: Collection[str]) -> None:
        """Creates the topics with `create_missing`; else raises `MissingBusResource` for the
        first that does not exist."""
        if self._create_missing:
            await self._ensure_topics(set(topics), self._request_timeout, check=True)
            return
        for topic in sorted(set(topics)):
            if await self._get_topic(topic) is None:
                raise self._missing("topic", self._topic_path(topic))
            self._known_topics.add(topic)

    def _missing(self, kind: str, path: str) -> MissingBusResource:
        return MissingBusResource("Pub/Sub", kind, path, self._bus_url)

    # -- provisioning ----------------------------------------------------------------------

    async def provision(
        self, topics: Collection[str], subscriptions: Collection[SubscriptionSpec]
    ) -> list[Provisioned]:
        """Creates the missing topics (`topics`, and the topic and dead-letter topic of each
        subscription) and durable subscriptions exactly as `create_missing` would, whatever
        this bus's `create_missing`; reports the existing ones, and how those differ from
        what it would create. Per-replica (ephemeral) subscriptions are left to their
        replicas. Changes nothing that exists.

        Raises:
            ValueError: Two different subscriptions share a name.
            Unavailable: Pub/Sub cannot be reached.
        """
        specs = durable(subscriptions)
        results: list[Provisioned] = []
        for topic in needed_topics(topics, subscriptions):
            path = self._topic_path(topic)
            existing_topic = await self._get_topic(topic)
            if existing_topic is None and await self._create_topic(topic, self._request_timeout):
                results.append(Provisioned("topic", path, Outcome.CREATED))
                continue
            results.append(self._compare_topic(path, existing_topic))
        for spec in specs:
            path = self._subscription_path(spec.name)
            existing = await self._get_subscription(spec.name)
            if existing is None:
                await self._create_subscription(spec)
                results.append(Provisioned("subscription", path, Outcome.CREATED))
                continue
            differences = _subscription_differences(existing, self._subscription_request(spec))
            results.append(
                Provisioned(
                    "subscription",
                    path,
                    Outcome.DIFFERS if differences else Outcome.EXISTS,
                    differences,
                )
            )
        return results

    def _compare_topic(self, path: str, existing: pubsub_types.Topic | None) -> Provisioned:
        """An existing topic (None: one created meanwhile by someone else) against what this
        bus creates."""
        if existing is None or self._topic_retention is None:
            return Provisioned("topic", path, Outcome.EXISTS)
        retention = _seconds(existing.message_retention_duration)
        if math.isclose(retention, self._topic_retention):
            return Provisioned("topic", path, Outcome.EXISTS)
        return Provisioned(
            "topic",
            path,
            Outcome.DIFFERS,
            (
                f"message retention: {retention:g}s, wanted {self._topic_retention:g}s (new "
                "subscriptions start at the oldest retained message)",
            ),
        )

    def _call_options(self, timeout: float | None = None) -> dict[str, Any]:
        """Retry and timeout for an administrative call, bounded by `timeout`."""
        limit = self._request_timeout if timeout is None else timeout
        return {
            "retry": AsyncRetry(
                predicate=if_transient_error,
                initial=0.1,
                maximum=2.0,
                multiplier=2.0,
                timeout=limit,
            ),
            "timeout": limit,
        }

    def _topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def _subscription_path(self, name: str) -> str:
        return f"projects/{self._project}/subscriptions/{name}"

    def _flow_control(self, spec: SubscriptionSpec) -> Any:
        """Flow control for a consumer: `max_concurrency` outstanding messages, and leases
        per `max_lease_seconds`."""
        if self._max_lease is not None:
            return FlowControl(
                max_messages=spec.max_concurrency, max_lease_duration=self._max_lease
            )
        deadline = _clamp(
            math.ceil(spec.ack_deadline_seconds),
            _MIN_ACK_DEADLINE_SECONDS,
            _MAX_ACK_DEADLINE_SECONDS,
        )
        # Every lease (the stream's and each extension) is the ack deadline, and the library
        # stops extending once a message has been held that long.
        return FlowControl(
            max_messages=spec.max_concurrency,
            max_lease_duration=deadline,
            min_duration_per_lease_extension=deadline,
            max_duration_per_lease_extension=deadline,
        )

    # -- closing ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Closes every consumer (letting in-flight handlers finish, and publish), deletes the
        ephemeral subscriptions, then the clients. Calling it again waits for the same close."""
        self._closing = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        await asyncio.gather(*(c.close() for c in list(self._consumers)))
        self._closed = True
        await asyncio.to_thread(self._stop_streaming_clients)
        await self._admin_clients.aclose()

    def _stop_streaming_clients(self) -> None:
        # stop() sends what is still batched; nothing waits for it any more.
        self._publisher.stop()
        self._publisher.transport.close()
        self._subscriber.close()


def _with_bus_options(create: Callable[..., Any]) -> Callable[..., Any]:
    """A channel factory for a transport: the library's channel, with the bus's options."""

    def make(host: str, **kwargs: Any) -> Any:
        kwargs["options"] = [*kwargs.get("options", ()), *_BUS_CHANNEL_OPTIONS]
        return create(host, **kwargs)

    return make


def _make_streaming_clients(emulator_host: str | None) -> tuple[Any, Any]:
    """The client library's publisher (ordering on) and subscriber, on channels of their own."""
    publisher_transport: PublisherGrpcTransport
    subscriber_transport: SubscriberGrpcTransport
    if emulator_host is not None:
        # A channel instance: no credentials are looked up (the library does the same).
        options = [*_LIBRARY_CHANNEL_OPTIONS, *_BUS_CHANNEL_OPTIONS]
        publisher_transport = PublisherGrpcTransport(
            channel=grpc.insecure_channel(emulator_host, options=options)
        )
        subscriber_transport = SubscriberGrpcTransport(
            channel=grpc.insecure_channel(emulator_host, options=options)
        )
    else:
        publisher_transport = PublisherGrpcTransport(
            channel=_with_bus_options(PublisherGrpcTransport.create_channel)
        )
        subscriber_transport = SubscriberGrpcTransport(
            channel=_with_bus_options(SubscriberGrpcTransport.create_channel)
        )
    publisher = PublisherClient(
        publisher_options=PublisherOptions(enable_message_ordering=True),
        transport=publisher_transport,
    )
    return publisher, SubscriberClient(transport=subscriber_transport)


def _admin_transport(kind: type[AdminTransport], emulator_host: str | None) -> AdminTransport:
    """An asyncio transport for the administrative clients, with the bus's channel options."""
    if emulator_host is not None:
        options = [*_LIBRARY_CHANNEL_OPTIONS, *_BUS_CHANNEL_OPTIONS]
        return kind(channel=grpc.aio.insecure_channel(emulator_host, options=options))
    return kind(channel=_with_bus_options(kind.create_channel))


def _half_close(future: Any) -> bool:
    """Ends the request side of a streaming pull, so that the server ends the stream.

    For the emulator only: cancelling a stream, as `StreamingPullFuture.cancel` does, makes
    cloud-pubsub-emulator 0.8.20 fail in its RST_STREAM handler (a NoSuchMethodError inside
    grpc-java), after which it keeps the dead stream as a consumer of the subscription and sends it
    every later message, so no other consumer gets any. A half-close is handled cleanly, and the
    library then shuts the consumer down as `cancel` would. This reaches into the library's
    internals (the manager's bidi RPC); should they change, it returns False and the caller
    cancels.

    Returns:
        Whether the stream was half-closed.
    """
    manager = getattr(future, "_StreamingPullFuture__manager", None)
    rpc = getattr(manager, "_rpc", None)
    if rpc is None or not getattr(rpc, "is_active", False):
        return False
    # None ends the request generator: gRPC half-closes the call.
    rpc.send(None)
    return True


class _Consumer:
    """One streaming pull of a subscription, feeding the handler on the event loop."""

    def __init__(
        self,
        bus: PubSubBus,
        spec: SubscriptionSpec,
        handler: Handler,
        skip_before_ns: int | None,
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._skip_before_ns = skip_before_ns
        self._path = bus._subscription_path(spec.name)
        self._loop = asyncio.get_running_loop()
        self._counts = _DeliveryCounts()
        self._blocked: dict[str, _Block] = {}
        # How long a key waits for its nacked message to come back before it is let go.
        self._block_seconds = spec.max_backoff_seconds + max(
            spec.ack_deadline_seconds, _MIN_ACK_DEADLINE_SECONDS
        )
        # Handlers running on the loop, cancelled when they outlive close()'s grace period.
        self._tasks: set[asyncio.Task[Any]] = set()
        # The client library's StreamingPullFuture of the current stream.
        self._future: Any = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Opens the streaming pull; its callbacks run on a pool of `max_concurrency` threads."""
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._spec.max_concurrency,
            thread_name_prefix=f"pubsub-{self._spec.name}",
        )
        future = self._bus._subscriber.subscribe(
            self._path,
            self._on_message,
            flow_control=self._bus._flow_control(self._spec),
            scheduler=ThreadScheduler(executor),
            # So that stopping the stream waits for running callbacks (and their acks).
            await_callbacks_on_shutdown=True,
        )
        self._future = future
        future.add_done_callback(self._on_stream_end)

    async def close(self) -> None:
        """Stops the stream after in-flight handlers finish (at most one ack deadline, then they
        are cancelled and their messages nacked), and deletes an ephemeral subscription.
        Messages received but not handled yet are nacked, so other consumers get them."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        # Shielded so a cancelled caller cannot leave the stream half stopped.
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            await asyncio.gather(self._restart_task, return_exceptions=True)
        future = self._future
        if future is not None:
            # Non-blocking either way: a library thread stops the stream, waits for the running
            # callbacks, nacks what was not dispatched and flushes acks, then resolves the
            # future. On the emulator the server ends the stream (see _half_close).
            if not (self._bus._emulator and _half_close(future)):
                future.cancel()
            # Resolved by the library's thread once the stream has stopped. No thread of ours
            # waits on it: one blocked for ever would block the process's exit too (asyncio.run
            # joins the default executor's threads).
            stopped = asyncio.wrap_future(future)
            done, _ = await asyncio.wait(
                {stopped}, timeout=max(self._spec.ack_deadline_seconds, 1.0)
            )
            if not done:
                logger.warning(
                    "cancelling %d handlers of subscription %r still running at close",
                    len(self._tasks),
                    self._spec.name,
                )
                for task in list(self._tasks):
                    task.cancel()
                future.cancel()
                done, _ = await asyncio.wait({stopped}, timeout=_STOP_GRACE_SECONDS)
            if not done:
                # Seen on the emulator after faults (a killed replica, a network cut): a stream
                # that neither the half-close nor the cancel ends.
                logger.warning(
                    "the streaming pull of subscription %r did not stop; leaving it",
                    self._spec.name,
                )
            elif not stopped.cancelled():
                stopped.exception()  # retrieved, so asyncio does not report it as lost
        if self._spec.ephemeral:
            try:
                await self._bus._delete_subscription(self._spec.name)
            except TaiError as error:
                # Pub/Sub deletes it anyway once its expiration policy's TTL has passed.
                logger.warning("cannot delete subscription %r: %s", self._spec.name, error)
        self._bus._consumers.discard(self)

    # -- on the client library's threads ---------------------------------------------------

    def _on_message(self, message: Any) -> None:
        """The library's callback: runs the delivery on the loop and acks or nacks."""
        try:
            outcome = asyncio.run_coroutine_threadsafe(self._deliver(message), self._loop).result()
        except (RuntimeError, concurrent.futures.CancelledError):
            # The loop is closed, or close() cancelled a handler that overran: give it back.
            outcome = _Outcome.NACK
        if outcome is _Outcome.ACK:
            message.ack()
        else:
            message.nack()

    def _on_stream_end(self, future: Any) -> None:
        with suppress(RuntimeError):  # The loop is closed: nobody is left to restart.
            self._loop.call_soon_threadsafe(self._stream_ended, future)

    # -- on the event loop -----------------------------------------------------------------

    def _stream_ended(self, future: Any) -> None:
        if self._closing or future is not self._future:
            return
        # The library retries transient stream errors itself; this one is not (the subscription
        # was deleted, permissions changed…): start over once it is back.
        logger.error(
            "streaming pull of subscription %r stopped: %s; restarting",
            self._spec.name,
            future.exception(),
        )
        self._restart_task = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        delay = 1.0
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._bus._prepare_subscription(self._spec)
            except TaiError as error:
                logger.warning("cannot restart consumer of %r: %s", self._spec.name, error)
                delay = min(delay * 2, _MAX_RESTART_DELAY_SECONDS)
                continue
            self.start()
            return

    async def _deliver(self, received: Any) -> _Outcome:
        """Decides what happens to one delivery; returns whether to ack or nack it."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await self._settle(received)
        finally:
            self._tasks.discard(task)

    async def _settle(self, received: Any) -> _Outcome:
        message_id = str(received.message_id)
        key = str(received.ordering_key)
        publish_time_ns = _publish_time_ns(received.publish_time)
        if self._skip_before_ns is not None and publish_time_ns < self._skip_before_ns:
            # The emulator replaying a message from before a start_at_latest subscription.
            return _Outcome.ACK
        if not self._spec.wants(received.attributes):
            # Left out by `event_types`: a subscription created without its filter (e.g. by an
            # earlier version) still delivers it.
            return _Outcome.ACK
        if key and self._held_back(key, message_id):
            return _Outcome.NACK
        attempt = self._counts.attempt(message_id)
        if attempt > self._spec.max_delivery_attempts:
            return await self._dead_letter(received, message_id, attempt - 1)
        message = Message(
            message_id=message_id,
            topic=self._spec.topic,
            data=bytes(received.data),
            ordering_key=key,
            attributes=dict(received.attributes),
            publish_time_ns=publish_time_ns,
            delivery_attempt=attempt,
        )
        try:
            await self._handler(message)
        except Exception:
            # The port's contract: a handler that raises nacks the message.
            logger.warning(
                "handler of subscription %r failed on message %s (attempt %d)",
                self._spec.name,
                message_id,
                attempt,
                exc_info=True,
            )
            if key:
                self._blocked[key] = _Block(message_id, self._loop.time() + self._block_seconds)
            return _Outcome.NACK
        self._counts.forget(message_id)
        return _Outcome.ACK

    def _held_back(self, key: str, message_id: str) -> bool:
        """Whether this message of `key` must wait for an earlier, nacked one."""
        block = self._blocked.get(key)
        if block is None:
            return False
        if block.message_id == message_id or self._loop.time() > block.until:
            del self._blocked[key]
            return False
        return True

    async def _dead_letter(self, received: Any, message_id: str, attempts: int) -> _Outcome:
        attributes = dict(received.attributes) | {
            _ATTR_DL_SUBSCRIPTION: self._spec.name,
            _ATTR_DL_MESSAGE_ID: message_id,
            _ATTR_DL_ATTEMPTS: str(attempts),
        }
        try:
            await self._bus.publish(
                OutgoingMessage(
                    self._spec.dead_letter,
                    bytes(received.data),
                    ordering_key=str(received.ordering_key),
                    attributes=attributes,
                )
            )
        except TaiError as error:
            # Nacked: it comes back and is dead-lettered then (or by Pub/Sub's backstop).
            logger.warning(
                "cannot dead-letter message %s of subscription %r: %s",
                message_id,
                self._spec.name,
                error,
            )
            return _Outcome.NACK
        logger.warning(
            "message %s of subscription %r failed %d deliveries; sent to %r",
            message_id,
            self._spec.name,
            attempts,
            self._spec.dead_letter,
        )
        self._counts.forget(message_id)
        return _Outcome.ACK
