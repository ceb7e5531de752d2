"""An EventBus decorator that traces publishing and handling: the trace context travels in the
message attributes (`trace_traceparent`, put there by `tai_common.messaging.events.to_message`
from the event's own context), so a handler's span continues the trace of the call that caused
the event."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace

from tai_common.core import continued, tracer
from tai_common.ports import (
    EventBus,
    Handler,
    Message,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
)

TRACE_ATTRIBUTE_PREFIX = "trace_"


class TracedBus:
    def __init__(self, inner: EventBus) -> None:
        self.inner = inner

    async def publish(self, message: OutgoingMessage) -> str:
        return (await self.publish_many([message]))[0]

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        topics = sorted({m.topic for m in messages})
        with tracer().start_as_current_span(
            f"publish {','.join(topics)}",
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.batch.message_count": len(messages)},
        ):
            return await self.inner.publish_many(messages)

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        async def traced(message: Message) -> None:
            carrier = {
                key.removeprefix(TRACE_ATTRIBUTE_PREFIX): value
                for key, value in message.attributes.items()
                if key.startswith(TRACE_ATTRIBUTE_PREFIX)
            }
            with continued(
                f"process {spec.topic}",
                carrier,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.destination.name": spec.topic,
                    "messaging.consumer.group.name": spec.name,
                    "messaging.message.id": message.message_id,
                    "tai.event_type": message.attributes.get("event_type", ""),
                },
            ):
                await handler(message)

        return await self.inner.subscribe(spec, traced)

    async def close(self) -> None:
        await self.inner.close()
