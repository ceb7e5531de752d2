"""The production Cache: Redis (redis.asyncio), one server or a Redis Cluster, shared by every
replica of every service.

Version checks run as Lua scripts so that check-and-set is atomic. Each script touches one key
only, so on a cluster it runs on the node holding that key's slot; keys carry no hash tag,
which spreads them over every node.

Redis being down (or one node of a cluster) never fails a caller: operations answer a miss (or
do nothing), the outage is counted and logged once, and the adapter tries Redis again after a
short pause, during which it skips Redis altogether. Invalidations missed during an outage
could leave stale entries behind on any node, so on recovery the adapter drops every key under
its prefix on every node; until it has, it keeps answering misses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tai_common.core import metrics
from tai_common.ports import CacheEntry
from tai_common.redis.client import UNAVAILABLE, RedisClient, open_redis

log = logging.getLogger(__name__)

# KEYS[1]: key. ARGV: version, value, ttl in ms, tombstone flag ("1" or "0").
# Refuses when the key holds a higher version, and a tombstone when it holds the same one (that
# entry is already current); a tombstone stores an empty value.
_PUT = """
local current = redis.call('HGET', KEYS[1], 'v')
if current and (tonumber(current) > tonumber(ARGV[1])
    or (ARGV[4] == '1' and tonumber(current) == tonumber(ARGV[1]))) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 't', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# After a failure, skip Redis for this long instead of paying a timeout on every call.
RETRY_AFTER_SECONDS = 1.0


class RedisCache:
    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "tai:",
        retry_after_seconds: float = RETRY_AFTER_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._put = client.register_script(_PUT)
        self._retry_after = retry_after_seconds
        self._down_since: float | None = None
        self._skip_until = 0.0
        self._recovering = False

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tai:", setting: str = "TAI_CACHE") -> RedisCache:
        """`redis://host:port/db` or `redis+cluster://host:port[,host:port…]` (see
        `tai_common.redis.client`); a URL that cannot work raises `RedisUrlError` naming
        `setting`. Short timeouts: a slow cache is worse than no cache."""
        client = open_redis(
            url,
            setting,
            socket_connect_timeout=0.25,
            socket_timeout=0.25,
            health_check_interval=10,
        )
        return cls(client, prefix=prefix)

    async def get(self, key: str) -> CacheEntry | None:
        fields = await self._call(self._client.hgetall(self._prefix + key))
        if not fields or fields.get(b"t") == b"1" or b"v" not in fields:
            return None
        return CacheEntry(fields[b"d"], int(fields[b"v"]))

    async def put(self, key: str, value: bytes, version: int, ttl_seconds: float) -> bool:
        stored = await self._call(
            self._put(
                keys=[self._prefix + key],
                args=[version, value, max(1, int(ttl_seconds * 1000)), "0"],
            )
        )
        return bool(stored)

    async def invalidate(self, key: str, version: int, ttl_seconds: float) -> None:
        await self._call(
            self._put(
                keys=[self._prefix + key],
                args=[version, b"", max(1, int(ttl_seconds * 1000)), "1"],
            )
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        if time.monotonic() < self._skip_until or (
            self._down_since is not None and not await self._recover()
        ):
            awaitable.close()
            return None
        try:
            return await awaitable
        except UNAVAILABLE as error:
            self._skip_until = time.monotonic() + self._retry_after
            if self._down_since is None:
                self._down_since = time.monotonic()
                metrics.CACHE_OUTAGES.inc()
                log.warning("redis cache unavailable (%s); reading from the store", error)
            return None

    async def _recover(self) -> bool:
        """After an outage, before Redis is used again: drop what might be stale. Whether it
        is usable again: not while another call is clearing it, nor if clearing failed (on a
        cluster, a node may still be down while others answer), which pauses again."""
        if self._recovering:
            return False
        self._recovering = True
        outage = time.monotonic() - (self._down_since or time.monotonic())
        try:
            # On a cluster, scan_iter walks every primary node; UNLINK of a batch is split by
            # slot (one command per slot), as a multi-key command must be there.
            batch: list[bytes] = []
            async for key in self._client.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    await self._client.unlink(*batch)
                    batch.clear()
            if batch:
                await self._client.unlink(*batch)
        except UNAVAILABLE:
            self._skip_until = time.monotonic() + self._retry_after
            return False
        finally:
            self._recovering = False
        self._down_since = None
        log.warning("redis cache available again after %.1f s; entries dropped", outage)
        return True
