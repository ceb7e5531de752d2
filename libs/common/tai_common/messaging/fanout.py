"""In-process fan-out: one bus subscription per replica feeds any number of local listeners
(the streams of that replica's clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

from tai.v1 import events_pb2

from tai_common.messaging import events
from tai_common.ports import EventBus, Message, Subscription, SubscriptionSpec

T = TypeVar("T")


class ListenerLagged(Exception):
    """The listener fell too far behind and lost items; its stream should end so the client
    resumes from its last position."""


class Listener(Generic[T]):
    """A bounded queue of the items broadcast since the listener was opened."""

    def __init__(self, broadcaster: Broadcaster[T], size: int) -> None:
        self._broadcaster = broadcaster
        self._queue: asyncio.Queue[T] = asyncio.Queue(size)
        self.lagged = False

    def offer(self, item: T) -> None:
        if self.lagged:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lagged = True

    async def get(self) -> T:
        """The next item; raises `ListenerLagged` once items were dropped."""
        if self.lagged and self._queue.empty():
            raise ListenerLagged()
        return await self._queue.get()

    def close(self) -> None:
        self._broadcaster.remove(self)

    def __enter__(self) -> Listener[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Broadcaster(Generic[T]):
    """Offers each published item to every open listener, without ever blocking the publisher:
    a listener whose queue is full is marked lagged instead."""

    def __init__(self, listener_queue_size: int = 10_000) -> None:
        self._listeners: set[Listener[T]] = set()
        self._size = listener_queue_size

    def listen(self) -> Listener[T]:
        listener = Listener(self, self._size)
        self._listeners.add(listener)
        return listener

    def remove(self, listener: Listener[T]) -> None:
        self._listeners.discard(listener)

    def publish(self, item: T) -> None:
        for listener in list(self._listeners):
            listener.offer(item)


def replica_subscription(
    topic: str,
    *,
    service: str,
    replica_id: str,
    event_types: tuple[str, ...] = (),
    batch_delay_seconds: float = 0.0,
) -> SubscriptionSpec:
    """This replica's own subscription to every event on `topic` from now on, or to those of
    `event_types`; removed when the replica goes away, and created by it (never provisioned),
    on an existing topic."""
    return SubscriptionSpec(
        topic=topic,
        name=f"{service}-{replica_id}-{topic}".replace(".", "-"),
        start_at_latest=True,
        ephemeral=True,
        max_delivery_attempts=3,
        ack_deadline_seconds=10.0,
        event_types=event_types,
        batch_delay_seconds=batch_delay_seconds,
    )


async def subscribe_events(
    bus: EventBus,
    spec: SubscriptionSpec,
    on_event: Callable[[events_pb2.Event], Awaitable[None]],
) -> Subscription:
    """Subscribes `on_event` to the subscription's messages, decoded as `tai.v1.Event`s."""

    async def handle(message: Message) -> None:
        await on_event(events.from_message(message))

    return await bus.subscribe(spec, handle)
