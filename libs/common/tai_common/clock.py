"""Injectable sources of time and ids, so tests can pin them."""

from __future__ import annotations

import time
import uuid
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in nanoseconds since the epoch, and a monotonic clock in seconds."""

    def now_ns(self) -> int: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class IdFactory(Protocol):
    """Makes unique ids with a readable prefix (e.g. `pol-…`)."""

    def new_id(self, prefix: str) -> str: ...


class UuidFactory:
    """Random ids: `<prefix>-<32 hex digits>`."""

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"
