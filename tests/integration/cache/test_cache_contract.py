"""One contract for every Cache adapter: the in-process LRU and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from support.redis_server import RedisServer, redis_cli, running_redis
from tai_common.cache.memory_cache import MemoryCache
from tai_common.cache.port import Cache, CacheEntry
from tai_common.cache.redis_cache import RedisCache


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Cache]:
    if request.param == "memory":
        adapter: Cache = MemoryCache()
    else:
        adapter = RedisCache.from_url(redis_server.url, prefix=f"test-{request.node.name}:")
    yield adapter
    await adapter.close()


async def test_put_then_get(cache: Cache) -> None:
    assert await cache.get("k") is None
    assert await cache.put("k", b"v1", version=1, ttl_seconds=60)
    assert await cache.get("k") == CacheEntry(b"v1", 1)


async def test_an_older_version_never_replaces_a_newer_one(cache: Cache) -> None:
    await cache.put("k", b"v3", version=3, ttl_seconds=60)
    assert not await cache.put("k", b"v2", version=2, ttl_seconds=60)
    assert await cache.get("k") == CacheEntry(b"v3", 3)
    assert await cache.put("k", b"v4", version=4, ttl_seconds=60)
    assert await cache.get("k") == CacheEntry(b"v4", 4)


async def test_a_slow_reader_cannot_put_back_a_stale_value(cache: Cache) -> None:
    await cache.put("k", b"v1", version=1, ttl_seconds=60)
    # A writer committed version 2 and invalidated; a reader that loaded version 1 before
    # the write now tries to cache it.
    await cache.invalidate("k", version=2, ttl_seconds=60)
    assert await cache.get("k") is None
    assert not await cache.put("k", b"v1", version=1, ttl_seconds=60)
    assert await cache.get("k") is None
    assert await cache.put("k", b"v2", version=2, ttl_seconds=60)
    assert await cache.get("k") == CacheEntry(b"v2", 2)


async def test_an_entry_already_at_the_invalidated_version_stays(cache: Cache) -> None:
    # A reader cached version 2 before the event of the change to version 2 arrived.
    await cache.put("k", b"v2", version=2, ttl_seconds=60)
    await cache.invalidate("k", version=2, ttl_seconds=60)
    assert await cache.get("k") == CacheEntry(b"v2", 2)
    await cache.invalidate("k", version=3, ttl_seconds=60)
    assert await cache.get("k") is None


async def test_entries_expire(cache: Cache) -> None:
    await cache.put("k", b"v", version=1, ttl_seconds=0.2)
    await asyncio.sleep(0.4)
    assert await cache.get("k") is None


async def test_redis_outage_degrades_to_misses_and_recovers() -> None:
    server = RedisServer().start()
    cache = RedisCache.from_url(server.url)
    restarted = RedisServer(server.port)
    try:
        await cache.put("k", b"v", version=1, ttl_seconds=60)
        server.stop()
        assert await cache.get("k") is None  # a miss, not an error
        assert not await cache.put("k", b"v2", version=2, ttl_seconds=60)
        await cache.invalidate("k", version=3, ttl_seconds=60)

        restarted.start()
        assert await eventually_cached(cache, "k", b"v4", 4) == CacheEntry(b"v4", 4)
    finally:
        await cache.close()
        restarted.stop()


async def test_entries_that_missed_an_invalidation_are_dropped_on_recovery(
    redis_server: RedisServer,
) -> None:
    """Redis stalls (not restarted: its data survives) while an invalidation is sent; the entry
    that invalidation was meant for must not be served once Redis answers again."""
    cache = RedisCache.from_url(redis_server.url, prefix="stall:")
    await cache.put("k", b"old", version=1, ttl_seconds=60)
    stall = await asyncio.create_subprocess_exec(
        redis_cli(),
        "-p",
        str(redis_server.port),
        "DEBUG",
        "SLEEP",
        "3",
        stdout=asyncio.subprocess.DEVNULL,
    )
    await until_redis_stalls(redis_server)
    assert await cache.get("k") is None  # times out: Redis is stalled; the adapter pauses
    await cache.invalidate("k", version=2, ttl_seconds=60)  # so this never reaches Redis
    await stall.wait()
    await asyncio.sleep(1.1)  # past the adapter's pause after a failure
    served = None
    for _ in range(20):
        served = await cache.get("k")
        if served is None:
            break
        await asyncio.sleep(0.1)
    assert served is None
    await cache.close()


async def until_redis_stalls(server: RedisServer) -> None:
    """Return once Redis stops answering: a PING gets no reply within 0.1 s."""
    probe = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    try:
        for _ in range(100):
            try:
                # Not redis-py's socket timeout: the client retries on those.
                async with asyncio.timeout(0.1):
                    await probe.ping()
            except TimeoutError:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("Redis never stalled")
    finally:
        await probe.aclose()


async def eventually_cached(
    cache: Cache, key: str, value: bytes, version: int
) -> CacheEntry | None:
    for _ in range(50):
        await cache.put(key, value, version=version, ttl_seconds=60)
        entry = await cache.get(key)
        if entry is not None:
            return entry
        await asyncio.sleep(0.1)
    return None
