"""Prometheus metrics shared by the services (prometheus-client, default registry). Labels never
carry ids, so cardinality stays bounded."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_REQUESTS = Counter(
    "tai_cache_requests_total", "Cache lookups by result (hit or miss).", ["result"]
)
CACHE_OUTAGES = Counter(
    "tai_cache_outages_total",
    "Times the cache backend became unreachable (reads then go to the store).",
)
OUTBOX_BACKLOG = Gauge(
    "tai_outbox_backlog",
    "Events written to the outbox and not yet published on the bus (as last counted).",
)
BUS_PUBLISH_SECONDS = Histogram(
    "tai_bus_publish_seconds",
    "Time to publish one batch of outbox events on the bus.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUS_PUBLISH_FAILURES = Counter(
    "tai_bus_publish_failures_total", "Outbox batches the bus refused or could not take."
)
RATE_LIMITED = Counter(
    "tai_rate_limited_total", "Calls refused by the rate limit.", ["grpc_method"]
)
RATE_LIMIT_STORE_OUTAGES = Counter(
    "tai_rate_limit_store_outages_total",
    "Times the shared rate-limit store became unreachable (calls then pass unlimited).",
)
READY = Gauge("tai_ready", "1 while this replica reports SERVING, 0 otherwise.")
CIRCUIT_BREAKER_STATE = Gauge(
    "tai_circuit_breaker_state",
    "State of the circuit breaker per downstream service: 0 closed, 1 half-open, 2 open.",
    ["target"],
)
