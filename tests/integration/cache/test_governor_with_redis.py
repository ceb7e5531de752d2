"""The Governor reading through a real Redis or a real Redis Cluster: cached reads over gRPC;
Redis (or one cluster node) killed while reads continue → callers see no error; back → the cache
fills again."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from prometheus_client import REGISTRY
from support import inprocess
from support.redis_server import RedisCluster, RedisServer, running_redis_cluster
from support.running import RunningGovernor
from tai.v1 import governor_pb2


async def test_reads_survive_a_redis_outage(sqlite_url: str) -> None:
    server = RedisServer().start()
    restarted = RedisServer(server.port)
    probe = redis.Redis.from_url(server.url)
    try:
        async with inprocess.governor(sqlite_url, cache=server.url) as governor:
            client = governor.client
            ids = [
                (await client.propose(policy_type="finance", name=f"budget-{i}")).resource_id
                for i in range(5)
            ]
            await client.enforce(ids[0])

            async def read_everything() -> None:
                for policy_id in ids:
                    assert (await client.get(policy_id)).id == policy_id
                page = await client.list_page(states=[governor_pb2.POLICY_STATE_ENFORCED])
                assert [p.id for p in page.policies] == [ids[0]]

            await read_everything()
            assert await probe.dbsize() > 0  # the reads went through the cache

            server.stop()
            for _ in range(5):
                await read_everything()  # no error while Redis is down

            restarted.start()
            await probe.aclose()
            probe = redis.Redis.from_url(server.url)
            await asyncio.sleep(1.2)  # the adapter tries Redis again after its pause
            await read_everything()
            filled = 0
            for _ in range(30):
                await read_everything()
                filled = await probe.dbsize()
                if filled:
                    break
                await asyncio.sleep(0.1)
            assert filled > 0
            # A change after recovery is visible at once to reads through the cache.
            await client.revoke(ids[0])
            assert (await client.get(ids[0])).state == governor_pb2.POLICY_STATE_REVOKED
    finally:
        await probe.aclose()
        restarted.stop()
        server.stop()


def cache_hits() -> float:
    return REGISTRY.get_sample_value("tai_cache_requests_total", {"result": "hit"}) or 0.0


async def propose_and_read(governor: RunningGovernor, count: int) -> list[str]:
    """Proposes `count` policies and enforces the first; returns their ids."""
    client = governor.client
    ids = [
        (await client.propose(policy_type="finance", name=f"budget-{i}")).resource_id
        for i in range(count)
    ]
    await client.enforce(ids[0])
    return ids


async def read_everything(governor: RunningGovernor, ids: list[str]) -> None:
    """Every policy by id, and the enforced ones: `len(ids) + 1` reads through the cache."""
    for policy_id in ids:
        assert (await governor.client.get(policy_id)).id == policy_id
    page = await governor.client.list_page(states=[governor_pb2.POLICY_STATE_ENFORCED])
    assert [p.id for p in page.policies] == [ids[0]]


async def test_cached_reads_through_a_redis_cluster(sqlite_url: str) -> None:
    """TAI_CACHE=redis+cluster://…: the Governor's reads are cached on every node of the cluster
    (a client of one node alone would be answered MOVED for the others' keys) and served from
    there; a change is visible at once."""
    with running_redis_cluster() as cluster:
        async with inprocess.governor(sqlite_url, cache=cluster.url) as governor:
            ids = await propose_and_read(governor, 30)
            await read_everything(governor, ids)  # fills the cache
            per_node = cluster.keys_per_node("tai:*")
            assert sum(1 for count in per_node if count > 0) > 1, per_node
            assert sum(per_node) >= len(ids) + 1

            before = cache_hits()
            await read_everything(governor, ids)
            assert cache_hits() - before == len(ids) + 1  # every read a hit

            await governor.client.revoke(ids[1])
            revoked = await governor.client.get(ids[1])
            assert revoked.state == governor_pb2.POLICY_STATE_REVOKED


async def test_reads_survive_a_redis_cluster_node_outage(sqlite_url: str) -> None:
    """One node of the cluster killed while reads continue: no error; back: the cache fills
    again on every node, and a change after recovery is visible at once."""
    with running_redis_cluster() as cluster:
        async with inprocess.governor(sqlite_url, cache=cluster.url) as governor:
            ids = await propose_and_read(governor, 30)
            await read_everything(governor, ids)
            assert all(count > 0 for count in cluster.keys_per_node("tai:*"))

            cluster.stop_node(2)
            for _ in range(5):
                await read_everything(governor, ids)  # no error while a node is down
                await asyncio.sleep(0.3)

            cluster.start_node(2)
            cluster.wait_ok()
            await asyncio.sleep(1.2)  # the adapter tries Redis again after its pause
            await refilled(cluster, governor, ids)
            await governor.client.revoke(ids[0])
            assert (await governor.client.get(ids[0])).state == governor_pb2.POLICY_STATE_REVOKED


async def refilled(cluster: RedisCluster, governor: RunningGovernor, ids: list[str]) -> None:
    """Reads until every node holds cache entries again."""
    per_node = [0, 0, 0]
    for _ in range(30):
        await read_everything(governor, ids)
        per_node = cluster.keys_per_node("tai:*")
        if all(per_node):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the cache did not fill again on every node: {per_node}")
