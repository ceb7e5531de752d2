"""The WindowLimiter in Redis (one server or a Redis Cluster), shared by every replica: one sorted
set per key, members scored by when they were admitted, changed atomically by one Lua script.
The script touches one key, so on a cluster it runs on the node holding that key's slot; keys
carry no hash tag, which spreads them over every node.

An admission takes effect at once, outside the caller's store transaction: if that transaction
then fails, the member keeps its slot until it leaves the window (fewer events, never more), and
the transaction run again admits the same member without counting it twice.

Times are kept in microseconds: Redis scores and Lua numbers are doubles, which hold today's
epoch microseconds exactly but not its nanoseconds. An admission time is rounded up to the next
microsecond, so a member stays in the window up to a microsecond longer than its exact time
would keep it (again: fewer events, never more).

Unlike the rate limiter, Redis being unreachable does not let events through: `admit` raises
`Unavailable`, so the caller's transaction fails and its action waits until Redis answers (a
blast-radius limit exists to stop runaway actions).
"""

from __future__ import annotations

from collections.abc import Sequence

from tai_common.core import Unavailable
from tai_common.ports import Admission, AdmissionRequest, Transaction
from tai_common.redis.client import UNAVAILABLE, RedisClient, open_redis

# KEYS[1]: the window. ARGV: member, admission time (µs), cutoff (µs: members scored at or below
# it have left the window), limit, window (µs). Returns {allowed, counted, oldest score (µs)}.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local counted = redis.call('ZCARD', KEYS[1])
local allowed = 1
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if counted >= tonumber(ARGV[4]) then
    allowed = 0
  else
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
    counted = counted + 1
    -- The key lives until its newest member leaves the window.
    local newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
    local ttl_us = newest + tonumber(ARGV[5]) - tonumber(ARGV[2])
    redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(ttl_us / 1000)))
  end
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or '0'
return {allowed, counted, oldest}
"""

# An admission waits for Redis at most this long (it may run inside a store transaction).
TIMEOUT_SECONDS = 0.5


class RedisWindowLimiter:
    """Sliding windows in Redis, one sorted set per key (see the module docstring). Ignores the
    caller's transaction."""

    def __init__(self, client: RedisClient, prefix: str = "tai:wl:") -> None:
        self._client = client
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT)

    @classmethod
    def from_url(
        cls, url: str, setting: str = "TAI_RATE_LIMIT_STORE", *, prefix: str = "tai:wl:"
    ) -> RedisWindowLimiter:
        """`redis://host:port/db` or `redis+cluster://host:port[,host:port…]` (see
        `tai_common.redis.client`); a URL that cannot work raises `RedisUrlError` naming
        `setting`."""
        client = open_redis(
            url, setting, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
        )
        return cls(client, prefix)

    async def admit(
        self,
        tx: Transaction,
        key: str,
        member: str,
        *,
        limit: int,
        window_ns: int,
        now_ns: int,
    ) -> Admission:
        """Admits `member` under `key` when fewer than `limit` other members were admitted in
        (now_ns - window_ns, now_ns]; a member already counted is admitted again without counting
        twice. Takes effect in Redis at once; `tx` is not used. Raises `Unavailable` when Redis
        cannot be reached."""
        _check_window(limit, window_ns)
        at_us = -(-now_ns // 1000)  # rounded up
        # A member scored s (µs) is in the window while s * 1000 > now_ns - window_ns.
        cutoff_us = (now_ns - window_ns) // 1000
        window_us = -(-window_ns // 1000)
        try:
            allowed, counted, oldest = await self._admit(
                keys=[self._prefix + key], args=[member, at_us, cutoff_us, limit, window_us]
            )
        except UNAVAILABLE as error:
            raise Unavailable(f"the window limits' Redis is unavailable: {error}") from error
        if allowed:
            return Admission(True, int(counted))
        # The oldest member leaves the window (its slot frees) once now_ns reaches this.
        return Admission(False, int(counted), int(float(oldest)) * 1000 + window_ns)

    async def admit_all(
        self, tx: Transaction, requests: Sequence[AdmissionRequest], now_ns: int
    ) -> list[Admission]:
        """`admit` for each request, in order, each admitted or refused on its own: one script
        call per request, as a cluster may hold the keys on different nodes."""
        for request in requests:  # all checked before any is admitted
            _check_window(request.limit, request.window_ns)
        return [
            await self.admit(
                tx,
                request.key,
                request.member,
                limit=request.limit,
                window_ns=request.window_ns,
                now_ns=now_ns,
            )
            for request in requests
        ]

    async def close(self) -> None:
        """Closes the connections to Redis."""
        await self._client.aclose()


def _check_window(limit: int, window_ns: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if window_ns < 1:
        raise ValueError(f"window_ns must be positive, not {window_ns}")
