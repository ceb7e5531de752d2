"""Read-through over a Cache: look up, else load from the store and remember."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tai_common.core import metrics
from tai_common.core.namespace import current_namespace, namespaced_key
from tai_common.ports import Cache

Loader = Callable[[], Awaitable[tuple[bytes, int] | None]]


class ReadThrough:
    """Caches values under `namespace:`-prefixed keys with one TTL (`namespace` is the kind of
    value; the keys also carry the TAI namespace the call works in)."""

    def __init__(self, cache: Cache, namespace: str, ttl_seconds: float) -> None:
        self._cache = cache
        self._namespace = namespace
        self._ttl = ttl_seconds

    async def get(self, key: str, load: Loader) -> bytes | None:
        """The cached value of `key`, or what `load` returns (value and version), remembered.
        None when `load` finds nothing (not cached: absence is not versioned)."""
        full_key = self._full_key(key)
        entry = await self._cache.get(full_key)
        if entry is not None:
            metrics.CACHE_REQUESTS.labels(result="hit").inc()
            return entry.value
        metrics.CACHE_REQUESTS.labels(result="miss").inc()
        loaded = await load()
        if loaded is None:
            return None
        value, version = loaded
        await self._cache.put(full_key, value, version, self._ttl)
        return value

    async def invalidate(self, key: str, version: int) -> None:
        """The entity behind `key` changed to `version`."""
        await self._cache.invalidate(self._full_key(key), version, self._ttl)

    def _full_key(self, key: str) -> str:
        """The key carries the namespace it was read in."""
        return namespaced_key(current_namespace(), f"{self._namespace}:{key}")
