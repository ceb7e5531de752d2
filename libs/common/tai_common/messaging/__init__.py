"""What the services build on the store and bus ports: the event envelope and its topics, the
transactional outbox and its relay, in-process fan-out of bus events, idempotent consumers and
requests, the tamper-evident audit trail, and sliding-window limits kept in the store. Modules
whose constants share names (`INDEXES`, `RETENTION_NS`) are used by module:
`from tai_common.messaging import audit, outbox`."""

from tai_common.messaging.audit import (
    AuditLog,
    AuditTrail,
    Verification,
    current_method,
    set_current_method,
)
from tai_common.messaging.events import (
    EventFactory,
    UndecodableEvent,
    from_message,
    to_message,
    unpack,
)
from tai_common.messaging.fanout import (
    Broadcaster,
    Listener,
    ListenerLagged,
    replica_subscription,
    subscribe_events,
)
from tai_common.messaging.idempotency import request_fingerprint
from tai_common.messaging.outbox import OUTBOX, OUTBOX_INDEXES, OutboxRelay, RelayConfig
from tai_common.messaging.window_limiter import StoreWindowLimiter

__all__ = [
    "OUTBOX",
    "OUTBOX_INDEXES",
    "AuditLog",
    "AuditTrail",
    "Broadcaster",
    "EventFactory",
    "Listener",
    "ListenerLagged",
    "OutboxRelay",
    "RelayConfig",
    "StoreWindowLimiter",
    "UndecodableEvent",
    "Verification",
    "current_method",
    "from_message",
    "replica_subscription",
    "request_fingerprint",
    "set_current_method",
    "subscribe_events",
    "to_message",
    "unpack",
]
