"""The ports: what the services need from a store, a bus, a cache, a rate limiter, a window
limiter and a secret source, as Protocols and the value types they exchange, with how a
transaction's event travels (`publishing`: its bus message and its outbox document). They import
only `tai_common.core` (and the `tai.v1.Event` envelope); the adapters live in one folder per
backend (`sqlite`, `gcp`, `kafka`, `redis`, `vault`, `memory`, `env`), and `tai_common.factory`
chooses them from the settings."""

from tai_common.ports.bus import (
    DEAD_LETTER_DELIVERY_ATTEMPTS,
    DEAD_LETTER_SOURCE_MESSAGE_ID,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    EVENT_TYPE_ATTRIBUTE,
    EventBus,
    Handler,
    Message,
    Subscription,
    SubscriptionSpec,
)
from tai_common.ports.cache import Cache, CacheEntry
from tai_common.ports.message import OutgoingMessage
from tai_common.ports.provisioning import (
    MissingBusResource,
    Outcome,
    ProvisionableBus,
    Provisioned,
    durable,
    needed_topics,
)
from tai_common.ports.publishing import (
    ATTR_AGGREGATE_ID,
    ATTR_EVENT_ID,
    ATTR_EVENT_TYPE,
    ATTR_PRODUCER,
    OUTBOX,
    OUTBOX_INDEXES,
    OutboxEntry,
    claimed_document,
    event_message,
    outbox_document,
    read_outbox_entry,
)
from tai_common.ports.ratelimit import Bucket, Decision, RateLimiter
from tai_common.ports.secrets import Secret, SecretSource, check_name
from tai_common.ports.store import (
    DOC_ID,
    Cursor,
    Data,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    Op,
    Order,
    Page,
    Query,
    Transaction,
    check_collection,
    check_field,
    cursor_of,
    get_field,
)
from tai_common.ports.window_limit import Admission, AdmissionRequest, WindowLimiter

__all__ = [
    "ATTR_AGGREGATE_ID",
    "ATTR_EVENT_ID",
    "ATTR_EVENT_TYPE",
    "ATTR_PRODUCER",
    "DEAD_LETTER_DELIVERY_ATTEMPTS",
    "DEAD_LETTER_SOURCE_MESSAGE_ID",
    "DEAD_LETTER_SOURCE_SUBSCRIPTION",
    "DOC_ID",
    "EVENT_TYPE_ATTRIBUTE",
    "OUTBOX",
    "OUTBOX_INDEXES",
    "Admission",
    "AdmissionRequest",
    "Bucket",
    "Cache",
    "CacheEntry",
    "Cursor",
    "Data",
    "Decision",
    "Document",
    "DocumentStore",
    "EventBus",
    "Filter",
    "Handler",
    "IndexSpec",
    "Message",
    "MissingBusResource",
    "Op",
    "Order",
    "OutboxEntry",
    "Outcome",
    "OutgoingMessage",
    "Page",
    "ProvisionableBus",
    "Provisioned",
    "Query",
    "RateLimiter",
    "Secret",
    "SecretSource",
    "Subscription",
    "SubscriptionSpec",
    "Transaction",
    "WindowLimiter",
    "check_collection",
    "check_field",
    "check_name",
    "claimed_document",
    "cursor_of",
    "durable",
    "event_message",
    "get_field",
    "needed_topics",
    "outbox_document",
    "read_outbox_entry",
]
