"""Rate limits: a token bucket per caller and method, shared by two replicas through a real
Redis or a real Redis Cluster; every response carries the x-ratelimit-* metadata; the limits
let calls through while the store is down, and apply again once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from support import inprocess
from support.redis_server import (
    RedisCluster,
    RedisServer,
    running_redis,
    running_redis_cluster,
)
from support.secured import auth_settings
from support.tokens import TokenIssuer
from tai.v1 import governor_pb2, governor_pb2_grpc
from tai_client import ChannelOptions, open_channel
from tai_common.core import ServiceSettings
from tai_common.factory import open_rate_limiter
from tai_common.ports import Bucket
from tai_common.redis import RedisRateLimiter, RedisUrlError


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """TAI_RATE_LIMIT_STORE: one Redis server, or a Redis Cluster."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


def ratelimit_headers(metadata: object) -> dict[str, str]:
    return {k: v for k, v in (metadata or ()) if k.startswith("x-ratelimit-")}  # type: ignore[attr-defined]


async def test_the_budget_is_shared_by_replicas(
    sqlite_url: str, tmp_path: Path, store_url: str
) -> None:
    issuer = TokenIssuer()
    settings = auth_settings(
        issuer.write_jwks(tmp_path / "jwks.json"),
        rate_limit_per_second=0.05,  # no refill during the test, even on a slow machine
        rate_limit_burst=4,
        rate_limit_store=store_url,
    )
    token = issuer.token("alice", ["viewer"])
    other = issuer.token("bob", ["viewer"])
    options = ChannelOptions(bearer_token=token, max_attempts=1)
    async with (
        inprocess.governor(sqlite_url, replica="g1", **settings) as first,
        inprocess.governor(sqlite_url, replica="g2", **settings) as second,
        open_channel(first.target, options) as a,
        open_channel(second.target, options) as b,
    ):
        stubs = [governor_pb2_grpc.GovernorStub(a), governor_pb2_grpc.GovernorStub(b)]
        remaining = []
        for i in range(4):  # alternate replicas: one budget of 4
            call = stubs[i % 2].GetPolicies(governor_pb2.GetPoliciesRequest())
            await call
            headers = ratelimit_headers(await call.trailing_metadata())
            assert headers["x-ratelimit-limit"] == "4"
            assert int(headers["x-ratelimit-reset"]) > 0
            remaining.append(int(headers["x-ratelimit-remaining"]))
        assert remaining == [3, 2, 1, 0]

        refused = stubs[1].GetPolicies(governor_pb2.GetPoliciesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in (caught.value.details() or "")
        assert ratelimit_headers(caught.value.trailing_metadata())["x-ratelimit-remaining"] == "0"

        # Another caller has a budget of its own.
        async with open_channel(
            second.target, ChannelOptions(bearer_token=other, max_attempts=1)
        ) as c:
            await governor_pb2_grpc.GovernorStub(c).GetPolicies(governor_pb2.GetPoliciesRequest())


def limited_settings(issuer: TokenIssuer, tmp_path: Path, store: str, burst: int) -> dict[str, Any]:
    return auth_settings(
        issuer.write_jwks(tmp_path / "jwks.json"),
        rate_limit_per_second=0.05,  # no refill during the test, even on a slow machine
        rate_limit_burst=burst,
        rate_limit_store=store,
    )


async def allowed(stub: governor_pb2_grpc.GovernorStub) -> bool:
    """One call: whether the rate limit let it through."""
    try:
        await stub.GetPolicies(governor_pb2.GetPoliciesRequest())
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    return True


async def test_budgets_on_every_node_of_a_cluster(
    sqlite_url: str, tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    """Twelve callers through two replicas: each caller's bucket lives on the node holding its
    key's slot, spread over the cluster (a client of one node alone would be answered MOVED),
    and each caller gets exactly its own budget."""
    issuer = TokenIssuer()
    settings = limited_settings(issuer, tmp_path, redis_cluster.url, burst=2)
    async with (
        inprocess.governor(sqlite_url, replica="g1", **settings) as first,
        inprocess.governor(sqlite_url, replica="g2", **settings) as second,
    ):
        for caller in range(12):
            token = issuer.token(f"spread-{caller}", ["viewer"])
            options = ChannelOptions(bearer_token=token, max_attempts=1)
            async with (
                open_channel(first.target, options) as a,
                open_channel(second.target, options) as b,
            ):
                stubs = [governor_pb2_grpc.GovernorStub(a), governor_pb2_grpc.GovernorStub(b)]
                assert [await allowed(stubs[i % 2]) for i in range(3)] == [True, True, False]
    per_node = redis_cluster.keys_per_node("tai:rl:*spread-*")
    assert sum(1 for count in per_node if count > 0) > 1, per_node
    assert sum(per_node) == 12


async def test_the_limits_let_calls_through_while_the_cluster_is_down(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Every node of the cluster stops: calls pass unlimited (a rate limit is a protection, not
    a reason to refuse traffic) and the outage is counted; the nodes back (empty), the budget
    applies again."""
    issuer = TokenIssuer()
    options = ChannelOptions(bearer_token=issuer.token("alice", ["viewer"]), max_attempts=1)
    with running_redis_cluster() as cluster:
        settings = limited_settings(issuer, tmp_path, cluster.url, burst=2)
        async with (
            inprocess.governor(sqlite_url, **settings) as governor,
            open_channel(governor.target, options) as channel,
        ):
            stub = governor_pb2_grpc.GovernorStub(channel)
            assert [await allowed(stub) for _ in range(3)] == [True, True, False]

            outages = store_outages()
            for node in range(3):
                cluster.stop_node(node)
            assert [await allowed(stub) for _ in range(5)] == [True] * 5
            await asyncio.sleep(1.1)  # past the limiter's pause: the store is asked again
            assert [await allowed(stub) for _ in range(3)] == [True] * 3
            assert store_outages() - outages == 1

            for node in range(3):
                cluster.start_node(node)
            cluster.wait_ok()
            await asyncio.sleep(1.1)
            assert [await allowed(stub) for _ in range(3)] == [True, True, False]


async def test_one_cluster_node_down_lets_calls_through_and_keeps_the_other_budgets(
    redis_cluster: RedisCluster,
) -> None:
    """The node holding one bucket stops: that caller passes unlimited; once it is back, the
    budget applies again, and the budgets kept on the other nodes were never lost."""
    # A cluster of its own would cost a start; this one gets its node back before the end.
    limiter = RedisRateLimiter.from_url(redis_cluster.url)
    bucket = Bucket(rate=0.05, burst=1)
    [kept] = redis_cluster.keys_on(0, 1, prefix="tai:rl:")
    [lost] = redis_cluster.keys_on(1, 1, prefix="tai:rl:")
    try:
        for key in (kept, lost):
            assert (await limiter.take(key, bucket)).allowed
            assert not (await limiter.take(key, bucket)).allowed

        redis_cluster.stop_node(1)
        assert (await limiter.take(lost, bucket)).allowed
        assert (await limiter.take(lost, bucket)).allowed

        redis_cluster.start_node(1)
        redis_cluster.wait_ok()
        await asyncio.sleep(1.1)  # past the limiter's pause
        assert (await limiter.take(lost, bucket)).allowed  # a new bucket: node 1 came back empty
        assert not (await limiter.take(lost, bucket)).allowed
        assert not (await limiter.take(kept, bucket)).allowed
    finally:
        await limiter.close()
        if not redis_cluster.nodes[1].running():
            redis_cluster.start_node(1)


def store_outages() -> float:
    return REGISTRY.get_sample_value("tai_rate_limit_store_outages_total") or 0.0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"rate_limit_store": "redis+cluster://node-a:6379,node-b:x"}, "TAI_RATE_LIMIT_STORE"),
        ({"rate_limit_store": "redis+cluster://node-a:6379/2"}, "TAI_RATE_LIMIT_STORE"),
        ({"rate_limit_store": "memcached://node-a"}, "TAI_RATE_LIMIT_STORE"),
        ({"cache": "redis+cluster://:s3cret@node-a:nope"}, "TAI_CACHE"),
    ],
)
def test_a_bad_store_url_is_refused_naming_its_setting(
    overrides: dict[str, Any], named: str
) -> None:
    settings = ServiceSettings(rate_limit_per_second=10, rate_limit_burst=10, **overrides)
    with pytest.raises(RedisUrlError) as caught:
        open_rate_limiter(settings)
    message = str(caught.value)
    assert message.startswith(f"{named}: ")
    assert "\n" not in message
    assert "s3cret" not in message
