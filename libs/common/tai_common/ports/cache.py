"""The Cache port: a read-through cache whose entries carry the version of what they hold.

Version stamps close the classic race of read-through caches: a slow reader loads version 4
from the store, a writer commits version 5 and invalidates the key, then the slow reader writes
version 4 back. Here an invalidation leaves a tombstone carrying version 5, and a put is refused
unless its version is at least the version already there (entry or tombstone).

A cache is an optimisation only: every adapter answers a miss instead of raising when its
backend is unavailable, so callers fall back to the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CacheEntry:
    value: bytes
    version: int


class Cache(Protocol):
    async def get(self, key: str) -> CacheEntry | None:
        """The entry, or None on a miss, a tombstone or an unavailable backend."""

    async def put(self, key: str, value: bytes, version: int, ttl_seconds: float) -> bool:
        """Stores `value` unless the key holds a newer version (or a newer tombstone);
        returns whether it was stored."""

    async def invalidate(self, key: str, version: int, ttl_seconds: float) -> None:
        """The entity changed to `version`: drops an older entry and leaves a tombstone, so
        puts older than `version` are refused for `ttl_seconds`. An entry already at `version`
        or newer is current and stays (the event of a change often arrives after a reader
        cached its result)."""

    async def close(self) -> None: ...
