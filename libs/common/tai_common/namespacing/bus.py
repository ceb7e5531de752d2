"""`NamespacedBus`: every handler runs inside the namespace its message belongs to (the
`namespace` attribute, which `Transaction.publish` stamps from the namespace of the write), so
a consumer's reads and writes stay in that namespace, as a call's do."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace, namespace_name_problem
from tai_common.ports import (
    ATTR_NAMESPACE,
    EventBus,
    Handler,
    Message,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
)

log = logging.getLogger(__name__)


def message_namespace(message: Message) -> str | None:
    """The namespace a message belongs to ("default" for messages from before namespaces),
    or None when its attribute is not a namespace name."""
    namespace = message.attributes.get(ATTR_NAMESPACE) or DEFAULT_NAMESPACE
    return None if namespace_name_problem(namespace) else namespace


class NamespacedBus:
    """An `EventBus` whose handlers run in their message's namespace."""

    def __init__(self, inner: EventBus) -> None:
        self.inner = inner

    async def publish(self, message: OutgoingMessage) -> str:
        return await self.inner.publish(message)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        return await self.inner.publish_many(messages)

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        async def in_its_namespace(message: Message) -> None:
            namespace = message_namespace(message)
            if namespace is None:
                # Not from a TAI producer: settled without the handler, as a message of an
                # unwanted type is (redelivering it would not make it valid).
                log.warning(
                    "dropped message %s on %s: its namespace attribute %r is not a name",
                    message.message_id,
                    message.topic,
                    message.attributes.get(ATTR_NAMESPACE),
                )
                return
            with in_namespace(namespace):
                await handler(message)

        return await self.inner.subscribe(spec, in_its_namespace)

    async def close(self) -> None:
        await self.inner.close()
