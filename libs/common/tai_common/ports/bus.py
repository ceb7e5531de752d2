"""The EventBus port: topics, subscriptions shared by the replicas of a consumer, at-least-once
delivery with ack/nack, redelivery with backoff, ordering per key and dead-lettering.

The shape follows Pub/Sub (so PubSub and Kafka adapters can implement it): a message is bytes
plus string attributes and an optional ordering key; a subscription belongs to one topic and
every message reaches one of the subscription's consumers; a handler that returns acks, one that
raises nacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from tai_common.ports.message import OutgoingMessage

# Attributes an adapter adds to a message it moves to the dead-letter topic (the message's own
# attributes are kept): the subscription that gave up on it, its id on the source topic and the
# deliveries it failed.
DEAD_LETTER_SOURCE_SUBSCRIPTION: Final = "dead_letter_source_subscription"
DEAD_LETTER_SOURCE_MESSAGE_ID: Final = "dead_letter_source_message_id"
DEAD_LETTER_DELIVERY_ATTEMPTS: Final = "delivery_attempts"


@dataclass(frozen=True)
class Message:
    """A delivered message."""

    message_id: str
    topic: str
    data: bytes
    ordering_key: str
    attributes: Mapping[str, str]
    publish_time_ns: int
    # 1 on first delivery, then 2, 3, … after nacks or expired ack deadlines.
    delivery_attempt: int


Handler = Callable[[Message], Awaitable[None]]


# The attribute `SubscriptionSpec.event_types` filters on (set by `tai_common.messaging.events`).
EVENT_TYPE_ATTRIBUTE: Final = "event_type"


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a consumer subscribes to.

    Replicas of one service subscribe with the same `name` and share its messages (each message
    goes to one of them). A per-replica subscription (a unique `name`, `ephemeral=True`,
    `start_at_latest=True`) gives every replica every message, from the time it subscribed.
    """

    topic: str
    name: str
    # Deliveries before a message goes to the dead-letter topic instead of the handler.
    max_delivery_attempts: int = 5
    # A delivered message not acked within this is delivered again.
    ack_deadline_seconds: float = 30.0
    # Backoff before redelivering a nacked message: min * 2**(attempt-1), capped at max.
    min_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 10.0
    # Where messages go after `max_delivery_attempts` (default `<topic>-dead-letter`).
    dead_letter_topic: str | None = None
    # New subscriptions start at the end of the topic instead of its retained beginning.
    start_at_latest: bool = False
    # Removed when its consumer goes away (per-replica fan-out subscriptions).
    ephemeral: bool = False
    # Messages handled at once by one consumer (never two of the same ordering key).
    max_concurrency: int = 8
    # Only messages whose `event_type` attribute is one of these reach the handler (empty:
    # every message); the others are settled without it. On Pub/Sub this is the
    # subscription's filter, set when the subscription is created.
    event_types: tuple[str, ...] = ()
    # How long a consumer may let new messages gather before taking them, so a subscription
    # whose handlers are in no hurry (the audit log) takes them in fewer, larger batches. The
    # SQLite bus honours it: there every claim and every acknowledgement is a write transaction,
    # and a message at a time cost a consumer ~0.8 ms of CPU each at a steady 150/s. Pub/Sub's
    # streaming pull and Kafka's fetches batch on their own and ignore it.
    batch_delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.max_delivery_attempts < 1:
            raise ValueError("max_delivery_attempts must be at least 1")
        if self.ack_deadline_seconds <= 0:
            raise ValueError("ack_deadline_seconds must be positive")
        if not 0 <= self.batch_delay_seconds < self.ack_deadline_seconds:
            raise ValueError("batch_delay_seconds must be from 0 to below ack_deadline_seconds")
        if any(not t or '"' in t or "\\" in t for t in self.event_types):
            raise ValueError("event_types must be non-empty, without quotes or backslashes")

    def wants(self, attributes: Mapping[str, str]) -> bool:
        """Whether a message with `attributes` is for this subscription's handler."""
        return not self.event_types or attributes.get(EVENT_TYPE_ATTRIBUTE) in self.event_types

    @property
    def dead_letter(self) -> str:
        return self.dead_letter_topic or f"{self.topic}-dead-letter"


class Subscription(Protocol):
    """A running consumer; `close` stops it after in-flight handlers finish."""

    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, message: OutgoingMessage) -> str:
        """Publishes one message and returns its id once the bus has it durably. Raises
        `tai_common.core.Unavailable` when the bus cannot be reached."""

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publishes several messages (in order per ordering key)."""

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        """Starts delivering the subscription's messages to `handler` in the background."""

    async def close(self) -> None: ...
