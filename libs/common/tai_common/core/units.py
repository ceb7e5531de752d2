"""Time spans. The store, the bus and the protos carry instants and spans as integer
nanoseconds; settings give spans in seconds or milliseconds. These are the one set of
conversions between them."""

from __future__ import annotations

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_SECOND = 1_000_000_000


def seconds_to_ns(seconds: float) -> int:
    """`seconds` (a setting, a deadline) as whole nanoseconds."""
    return int(seconds * NS_PER_SECOND)


def ms_to_ns(milliseconds: float) -> int:
    """`milliseconds` as whole nanoseconds."""
    return int(milliseconds * NS_PER_MS)


def ns_to_seconds(nanoseconds: int) -> float:
    """`nanoseconds` in seconds (for sleeps, timeouts and histograms)."""
    return nanoseconds / NS_PER_SECOND


def ns_to_ms(nanoseconds: int) -> float:
    """`nanoseconds` in milliseconds."""
    return nanoseconds / NS_PER_MS
