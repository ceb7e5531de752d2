"""The event envelope (`tai.v1.Event`) and how it travels as a bus message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from tai.v1 import events_pb2

from tai_common.core import Clock, IdFactory, current_context_carrier
from tai_common.ports import EVENT_TYPE_ATTRIBUTE, Message, OutgoingMessage

M = TypeVar("M", bound=ProtoMessage)

# Message attributes, so consumers (and operators reading a topic) can route without decoding.
ATTR_EVENT_ID = "event_id"
ATTR_EVENT_TYPE = EVENT_TYPE_ATTRIBUTE
ATTR_AGGREGATE_ID = "aggregate_id"
ATTR_PRODUCER = "producer"


@dataclass(frozen=True)
class EventFactory:
    """Builds envelopes stamped with this producer's name, ids and time."""

    producer: str
    clock: Clock
    ids: IdFactory

    def build(
        self,
        *,
        event_type: str,
        aggregate_type: str,
        aggregate_id: str,
        aggregate_version: int,
        payload: ProtoMessage,
        trace_context: Mapping[str, str] | None = None,
    ) -> events_pb2.Event:
        packed = any_pb2.Any()
        packed.Pack(payload)
        return events_pb2.Event(
            event_id=self.ids.new_id("evt"),
            event_type=event_type,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            aggregate_version=aggregate_version,
            occurred_at_ns=self.clock.now_ns(),
            # The trace of the call that caused the event travels with it, so consumers'
            # spans continue it.
            trace_context=dict(
                trace_context if trace_context is not None else current_context_carrier()
            ),
            payload=packed,
            producer=self.producer,
        )


def to_message(topic: str, event: events_pb2.Event) -> OutgoingMessage:
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
            **{f"trace_{k}": v for k, v in event.trace_context.items()},
        },
    )


class UndecodableEvent(ValueError):
    """A message on a TAI topic that is not a `tai.v1.Event` (or not the payload expected)."""


def from_message(message: Message) -> events_pb2.Event:
    event = events_pb2.Event()
    try:
        event.ParseFromString(message.data)
    except DecodeError as error:
        raise UndecodableEvent(f"message {message.message_id} is not a tai.v1.Event") from error
    return event


def unpack(event: events_pb2.Event, payload_type: type[M]) -> M:
    """The event's payload as `payload_type`."""
    payload = payload_type()
    if not event.payload.Unpack(payload):
        raise UndecodableEvent(
            f"event {event.event_id} carries {event.payload.TypeName()}, "
            f"not {payload_type.DESCRIPTOR.full_name}"
        )
    return payload
