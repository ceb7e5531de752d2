"""The event envelope (`tai.v1.Event`): how it is built, and read back from a bus message (the
message it travels as is `tai_common.ports.publishing`'s, re-exported here as `to_message`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from tai.v1 import events_pb2

from tai_common.core import Clock, IdFactory, current_context_carrier
from tai_common.core.namespace import DEFAULT_NAMESPACE, namespace_or_none
from tai_common.ports import (
    ATTR_AGGREGATE_ID,
    ATTR_EVENT_ID,
    ATTR_EVENT_TYPE,
    ATTR_PRODUCER,
    Message,
)
from tai_common.ports import event_message as to_message

__all__ = [
    "ATTR_AGGREGATE_ID",
    "ATTR_EVENT_ID",
    "ATTR_EVENT_TYPE",
    "ATTR_PRODUCER",
    "EventFactory",
    "UndecodableEvent",
    "from_message",
    "to_message",
    "unpack",
]

M = TypeVar("M", bound=ProtoMessage)


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
            # Outside any namespace (the installation's own events): the default one.
            namespace=namespace_or_none() or DEFAULT_NAMESPACE,
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
