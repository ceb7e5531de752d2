"""The Governor reading through a real Redis: Redis killed while reads continue → callers see no
error; Redis back → the cache fills again."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from support import inprocess
from support.redis_server import RedisServer
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
