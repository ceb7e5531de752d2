"""Rate limits: a token bucket per caller and method, shared by two replicas through a real
Redis; every response carries the x-ratelimit-* metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import inprocess
from support.redis_server import RedisServer, running_redis
from support.secured import auth_settings
from support.tokens import TokenIssuer
from tai.v1 import governor_pb2, governor_pb2_grpc
from tai_client import ChannelOptions, open_channel


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def ratelimit_headers(metadata: object) -> dict[str, str]:
    return {k: v for k, v in (metadata or ()) if k.startswith("x-ratelimit-")}  # type: ignore[attr-defined]


async def test_the_budget_is_shared_by_replicas(
    sqlite_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    issuer = TokenIssuer()
    settings = auth_settings(
        issuer.write_jwks(tmp_path / "jwks.json"),
        rate_limit_per_second=0.05,  # no refill during the test, even on a slow machine
        rate_limit_burst=4,
        rate_limit_store=redis_server.url,
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
