"""How an event leaves a store transaction (`Transaction.publish`): the bus message it travels
as, and the outbox document that carries it to a relay when the store does not hold the bus's
log. The stores write these documents and `tai_common.messaging.OutboxRelay` reads them, so
the format lives here, below both.

An outbox document (collection `OUTBOX`, id = the event's id):
- `topic`: the topic to publish on;
- `event`: the serialized `tai.v1.Event`, as base64 text;
- `created_ns`: the event's `occurred_at_ns` (the relay publishes oldest first);
- `claimed_until_ns`, `claimed_by`: 0 and "" until a relay claims the entry for a while, so
  that two relays don't publish the same entry, and a crashed relay's claims lapse.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

from tai.v1 import events_pb2

from tai_common.core.namespace import DEFAULT_NAMESPACE
from tai_common.ports.bus import EVENT_TYPE_ATTRIBUTE
from tai_common.ports.message import OutgoingMessage
from tai_common.ports.store import Data, Document, IndexSpec

# Message attributes, so consumers (and operators reading a topic) can route without decoding.
ATTR_EVENT_ID: Final = "event_id"
ATTR_EVENT_TYPE: Final = EVENT_TYPE_ATTRIBUTE
ATTR_AGGREGATE_ID: Final = "aggregate_id"
ATTR_PRODUCER: Final = "producer"
# The namespace the event happened in; consumers handle it there.
ATTR_NAMESPACE: Final = "namespace"

OUTBOX: Final = "outbox"
# The relay's claim query: unclaimed (or lapsed) entries, oldest first.
OUTBOX_INDEXES: Final = (IndexSpec(OUTBOX, ("claimed_until_ns", "created_ns")),)


def event_message(topic: str, event: events_pb2.Event) -> OutgoingMessage:
    """The bus message for `event`, ordered by its aggregate."""
    return OutgoingMessage(
        topic=topic,
        data=event.SerializeToString(),
        ordering_key=event.aggregate_id,
        attributes={
            ATTR_EVENT_ID: event.event_id,
            ATTR_EVENT_TYPE: event.event_type,
            ATTR_AGGREGATE_ID: event.aggregate_id,
            ATTR_PRODUCER: event.producer,
            ATTR_NAMESPACE: event.namespace or DEFAULT_NAMESPACE,
            **{f"trace_{k}": v for k, v in event.trace_context.items()},
        },
    )


def outbox_document(topic: str, event: events_pb2.Event) -> Data:
    """The unclaimed outbox document for `event` on `topic` (its id is `event.event_id`)."""
    return {
        "topic": topic,
        "event": base64.b64encode(event.SerializeToString()).decode(),
        "created_ns": event.occurred_at_ns,
        "claimed_until_ns": 0,
        "claimed_by": "",
    }


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox document as the relay reads it."""

    id: str
    topic: str
    event: events_pb2.Event
    claimed_until_ns: int


def read_outbox_entry(document: Document) -> OutboxEntry:
    """The entry an outbox document holds."""
    event = events_pb2.Event()
    event.ParseFromString(base64.b64decode(document.data["event"]))
    return OutboxEntry(
        id=document.id,
        topic=str(document.data["topic"]),
        event=event,
        claimed_until_ns=int(document.data["claimed_until_ns"]),
    )


def claimed_document(document: Document, until_ns: int, owner: str) -> Data:
    """`document` claimed by relay `owner` until `until_ns`."""
    return {**document.data, "claimed_until_ns": until_ns, "claimed_by": owner}
