"""Durable consumers that are idempotent by event id.

The bus delivers at least once; a consumer whose effect is a store write records the event id
in the same transaction as the effect, so a redelivered event changes nothing. Records expire
after a retention (the TTL convention of the store port) longer than any redelivery window.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tai.v1 import events_pb2

from tai_common.core import Clock
from tai_common.messaging import events
from tai_common.ports import DocumentStore, Handler, Message, Transaction

PROCESSED_EVENTS = "processed_events"
RETENTION_NS = 8 * 24 * 3600 * 10**9  # longer than the bus keeps a message (7 days)

Apply = Callable[[Transaction, events_pb2.Event], Awaitable[None]]


def idempotent_handler(
    store: DocumentStore, clock: Clock, subscription: str, apply: Apply
) -> Handler:
    """A bus handler that runs `apply(tx, event)` at most once per event id for
    `subscription`, in one transaction with the record that it did."""

    async def handle(message: Message) -> None:
        event = events.from_message(message)
        key = f"{subscription}:{event.event_id}"

        async def run(tx: Transaction) -> None:
            if await tx.get(PROCESSED_EVENTS, key) is not None:
                return
            await apply(tx, event)
            tx.create(
                PROCESSED_EVENTS,
                key,
                {
                    "subscription": subscription,
                    "event_id": event.event_id,
                    "expires_at_ns": clock.now_ns() + RETENTION_NS,
                },
            )

        await store.run_transaction(run)

    return handle
