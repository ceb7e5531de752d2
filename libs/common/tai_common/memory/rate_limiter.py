"""Token buckets in this process (each replica its own budget)."""

from __future__ import annotations

import time

from cachetools import TTLCache

from tai_common.ports import Bucket, Decision


class MemoryRateLimiter:
    def __init__(self, max_keys: int = 100_000) -> None:
        # (tokens, last refill); idle buckets are full again anyway, so they may be forgotten.
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(max_keys, ttl=3600)

    async def take(self, key: str, bucket: Bucket) -> Decision:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (bucket.burst, now))
        tokens = min(bucket.burst, tokens + (now - last) * bucket.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        return Decision(allowed, int(tokens), (bucket.burst - tokens) / bucket.rate)

    async def close(self) -> None:
        self._buckets.clear()
