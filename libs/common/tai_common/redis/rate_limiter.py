"""Token buckets in Redis (one server or a Redis Cluster): one budget per caller and method
shared by every replica, taken atomically by a Lua script using Redis's own clock (so replicas'
clocks don't matter). The script touches one key, the bucket, so on a cluster it runs on the
node holding that key's slot; buckets carry no hash tag, which spreads them over every node.

If Redis is unreachable (or the cluster node holding a bucket) the limiter lets calls through,
and skips Redis for a short pause before trying again (counted and logged once per outage): a
rate limit is a protection, not a reason to refuse all traffic.
"""

from __future__ import annotations

import logging
import time

from tai_common.core import metrics
from tai_common.ports import Bucket, Decision
from tai_common.redis.client import UNAVAILABLE, RedisClient, open_redis

log = logging.getLogger(__name__)

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst. Returns {allowed, tokens*1000}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + (now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.floor(tokens * 1000)}
"""

RETRY_AFTER_SECONDS = 1.0


class RedisRateLimiter:
    def __init__(self, client: RedisClient, prefix: str = "tai:rl:") -> None:
        self._client = client
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._skip_until = 0.0
        self._down = False

    @classmethod
    def from_url(cls, url: str, setting: str = "TAI_RATE_LIMIT_STORE") -> RedisRateLimiter:
        """`redis://host:port/db` or `redis+cluster://host:port[,host:port…]` (see
        `tai_common.redis.client`); a URL that cannot work raises `RedisUrlError` naming
        `setting`."""
        return cls(open_redis(url, setting, socket_connect_timeout=0.25, socket_timeout=0.25))

    async def take(self, key: str, bucket: Bucket) -> Decision:
        if time.monotonic() >= self._skip_until:
            try:
                allowed, milli_tokens = await self._take(
                    keys=[self._prefix + key], args=[bucket.rate, bucket.burst]
                )
            except UNAVAILABLE as error:
                self._skip_until = time.monotonic() + RETRY_AFTER_SECONDS
                if not self._down:
                    self._down = True
                    metrics.RATE_LIMIT_STORE_OUTAGES.inc()
                    log.warning("rate-limit store unavailable (%s); not limiting", error)
            else:
                if self._down:
                    self._down = False
                    log.warning("rate-limit store available again")
                tokens = int(milli_tokens) / 1000
                return Decision(bool(allowed), int(tokens), (bucket.burst - tokens) / bucket.rate)
        return Decision(True, int(bucket.burst), 0.0)

    async def close(self) -> None:
        await self._client.aclose()
