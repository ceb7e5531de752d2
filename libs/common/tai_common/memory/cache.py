"""The embedded Cache: an in-process LRU with per-entry TTL (cachetools), version-stamped."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cachetools import TLRUCache

from tai_common.ports import CacheEntry


@dataclass(frozen=True)
class _Slot:
    value: bytes | None  # None: a tombstone
    version: int
    expires_at: float


def _time_to_use(_key: str, slot: _Slot, _now: float) -> float:
    return slot.expires_at


class MemoryCache:
    """One process's cache; each replica keeps its own, and invalidates it from the events it
    consumes."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._slots: TLRUCache[str, _Slot] = TLRUCache(
            maxsize=max_entries, ttu=_time_to_use, timer=time.monotonic
        )

    async def get(self, key: str) -> CacheEntry | None:
        slot = self._slots.get(key)
        if slot is None or slot.value is None:
            return None
        return CacheEntry(slot.value, slot.version)

    async def put(self, key: str, value: bytes, version: int, ttl_seconds: float) -> bool:
        current = self._slots.get(key)
        if current is not None and current.version > version:
            return False
        self._slots[key] = _Slot(value, version, time.monotonic() + ttl_seconds)
        return True

    async def invalidate(self, key: str, version: int, ttl_seconds: float) -> None:
        current = self._slots.get(key)
        if current is not None and current.version >= version:
            return
        self._slots[key] = _Slot(None, version, time.monotonic() + ttl_seconds)

    async def close(self) -> None:
        self._slots.clear()
