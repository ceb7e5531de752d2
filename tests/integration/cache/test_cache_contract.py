"""One contract for every Cache adapter: the in-process LRU, Redis (a real redis-server) and
Redis Cluster (three real redis-servers in cluster mode)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from support.redis_server import (
    RedisCluster,
    RedisServer,
    redis_cli,
    running_redis,
    running_redis_cluster,
)
from tai_common.core import ServiceSettings, StartupError
from tai_common.factory import open_cache
from tai_common.memory import MemoryCache
from tai_common.ports import Cache, CacheEntry
from tai_common.redis import RedisCache


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    adapter: Cache
    if request.param == "memory":
        adapter = MemoryCache()
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        adapter = RedisCache.from_url(server.url, prefix=f"test-{request.node.name}:")
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        adapter = RedisCache.from_url(cluster.url, prefix=f"test-{request.node.name}:")
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


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
async def test_an_invalidation_by_one_replica_is_seen_by_another(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """Two replicas share one Redis: what one caches the other reads, and once one invalidates
    (as it does on the event of a change) the other neither reads the old entry nor puts it
    back. On a cluster, with a key on each node."""
    if backend == "redis":
        url = request.getfixturevalue("redis_server").url
        keys = ["a", "b", "c"]
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url = cluster.url
        keys = [cluster.keys_on(node, 1, prefix="shared:")[0] for node in range(3)]
    first = RedisCache.from_url(url, prefix="shared:")
    second = RedisCache.from_url(url, prefix="shared:")
    try:
        for key in keys:
            assert await first.put(key, b"v1", version=1, ttl_seconds=60)
            assert await second.get(key) == CacheEntry(b"v1", 1)
            await second.invalidate(key, version=2, ttl_seconds=60)
            assert await first.get(key) is None
            assert not await first.put(key, b"v1", version=1, ttl_seconds=60)
            assert await first.put(key, b"v2", version=2, ttl_seconds=60)
            assert await second.get(key) == CacheEntry(b"v2", 2)
    finally:
        await first.close()
        await second.close()


async def test_keys_spread_over_every_node_of_a_cluster(redis_cluster: RedisCluster) -> None:
    """Keys land on all three nodes (a client of one node alone would be answered MOVED for
    most of them), and every one is stored, read and invalidated."""
    cache = RedisCache.from_url(redis_cluster.url, prefix="spread:")
    keys = [f"k{i}" for i in range(60)]
    try:
        for i, key in enumerate(keys):
            assert await cache.put(key, f"v{i}".encode(), version=1, ttl_seconds=60)
        per_node = redis_cluster.keys_per_node("spread:*")
        assert sum(per_node) == len(keys)
        assert all(count > 0 for count in per_node), per_node
        for i, key in enumerate(keys):
            assert await cache.get(key) == CacheEntry(f"v{i}".encode(), 1)
        for key in keys:
            await cache.invalidate(key, version=2, ttl_seconds=60)
        for key in keys:
            assert await cache.get(key) is None
            assert not await cache.put(key, b"stale", version=1, ttl_seconds=60)
    finally:
        await cache.close()


async def test_rediss_cluster_speaks_tls(redis_cluster: RedisCluster) -> None:
    """`rediss+cluster://` connects with TLS: the test cluster speaks plain text only, so
    nothing is ever stored (and the caller sees misses, not errors)."""
    tls_url = redis_cluster.url.replace("redis+cluster://", "rediss+cluster://", 1)
    cache = RedisCache.from_url(tls_url + "?ssl_cert_reqs=none", prefix="tls:")
    try:
        assert not await cache.put("k", b"v", version=1, ttl_seconds=60)
        assert await cache.get("k") is None
        assert redis_cluster.keys_per_node("tls:*") == [0, 0, 0]
    finally:
        await cache.close()


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


async def test_one_cluster_node_down_degrades_to_misses_and_recovers() -> None:
    """One node of three stops (Redis Cluster then fails as a whole: no replica takes its
    slots). Callers see misses, never errors nor an entry that missed an invalidation meanwhile;
    once the node is back, the cache works again, without that entry."""
    with running_redis_cluster() as cluster:
        cache = RedisCache.from_url(cluster.url, prefix="one:")
        [live] = cluster.keys_on(0, 1, prefix="one:")
        [lost] = cluster.keys_on(1, 1, prefix="one:")
        try:
            assert await cache.put(live, b"old", version=1, ttl_seconds=60)
            assert await cache.put(lost, b"old", version=1, ttl_seconds=60)
            cluster.stop_node(1)
            assert await cache.get(lost) is None  # node 1 refuses: a miss; the adapter pauses
            assert await cache.get(live) is None  # paused: a miss without asking node 0
            await cache.invalidate(live, version=2, ttl_seconds=60)  # never reaches node 0
            assert cluster.nodes[0].command("HGET", f"one:{live}", "d").strip() == "old"
            await asyncio.sleep(1.1)  # past the pause: node 0 answers, node 1 still does not
            for _ in range(4):
                assert await cache.get(live) is None  # not the stale entry node 0 still has
                assert await cache.get(lost) is None
                await asyncio.sleep(0.3)

            cluster.start_node(1)
            cluster.wait_ok()
            assert await eventually_cached(cache, lost, b"v3", 3) == CacheEntry(b"v3", 3)
            assert await cache.get(live) is None  # dropped on recovery
            assert cluster.nodes[0].command("EXISTS", f"one:{live}").strip() == "0"
            assert await cache.put(live, b"v2", version=2, ttl_seconds=60)
            assert await cache.get(live) == CacheEntry(b"v2", 2)
        finally:
            await cache.close()


async def test_a_whole_cluster_down_degrades_to_misses_and_recovers() -> None:
    """Every node stops (the client cannot even learn the slots): misses, no errors; every
    node back: the cache works again on every node."""
    with running_redis_cluster() as cluster:
        cache = RedisCache.from_url(cluster.url, prefix="all:")
        keys = [cluster.keys_on(node, 1, prefix="all:")[0] for node in range(3)]
        try:
            for key in keys:
                assert await cache.put(key, b"v1", version=1, ttl_seconds=60)
            for node in range(3):
                cluster.stop_node(node)
            for key in keys:
                assert await cache.get(key) is None
                assert not await cache.put(key, b"v2", version=2, ttl_seconds=60)
            await asyncio.sleep(1.1)  # past the pause: Redis is asked again, and still down
            for key in keys:
                assert await cache.get(key) is None
                await cache.invalidate(key, version=3, ttl_seconds=60)

            for node in range(3):
                cluster.start_node(node)
            cluster.wait_ok()
            for key in keys:
                assert await eventually_cached(cache, key, b"v4", 4) == CacheEntry(b"v4", 4)
            assert cluster.keys_per_node("all:*") == [1, 1, 1]
        finally:
            await cache.close()


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


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://node-a:6379,node-b:notaport",
        "rediss+cluster://user:s3cret@node-a:6379,node-b:6379/1",
        "redis://:s3cret@node-a:notaport/0",
    ],
)
def test_a_bad_cache_url_is_refused_naming_TAI_CACHE(url: str) -> None:
    """One line naming the setting (the entry point prints it and exits), never the password."""
    with pytest.raises(StartupError) as caught:
        open_cache(ServiceSettings(cache=url))
    message = str(caught.value)
    assert message.startswith("TAI_CACHE: ")
    assert "\n" not in message
    assert "s3cret" not in message
