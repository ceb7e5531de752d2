"""The client SDK's typed errors, from real calls to real in-process servers: each group of
error (fix the request, retry, wait), its details (field violations, the rate-limit wait), a
stream that fails, and `taictl` printing them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from click.testing import CliRunner, Result
from support import inprocess
from support.running import RunningGovernor, RunningScheduler
from tai.v1 import governor_pb2
from tai_client import (
    AlreadyExists,
    ChannelOptions,
    CoordinatorClient,
    FailedPrecondition,
    GovernorClient,
    InvalidRequest,
    NotFound,
    RateLimited,
    RequestError,
    RetryableError,
    SchedulerClient,
    Stream,
    Unavailable,
    open_channel,
    policy_commands,  # noqa: F401  (registers the `policy` group)
    task_commands,  # noqa: F401  (registers the `task` group)
)
from tai_client.cli import cli
from tai_rpc import is_target_failure

ACTION = governor_pb2.ActionTemplate(action_type="scale", target_service="api")
CONDITION = 'signal.type == "alert"'
HOUR_NS = 3600 * 1_000_000_000


@dataclass
class Servers:
    governor: RunningGovernor
    scheduler: RunningScheduler


@pytest.fixture
async def servers(sqlite_url: str) -> AsyncIterator[Servers]:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target) as coordinator,
        inprocess.scheduler(sqlite_url, governor.target, coordinator.target) as scheduler,
    ):
        yield Servers(governor, scheduler)


async def taictl(target: str, *args: str) -> Result:
    """Runs taictl in a worker thread (it runs its own event loop, as the real CLI does)."""
    return await asyncio.to_thread(
        CliRunner().invoke, cli, ["--target", target, *args], catch_exceptions=False
    )


def test_every_client_method_maps_errors() -> None:
    # A method added without the mapping would let grpc's error escape.
    for client in (GovernorClient, CoordinatorClient, SchedulerClient):
        for name, method in vars(client).items():
            if name.startswith("_"):
                continue
            if inspect.iscoroutinefunction(method):
                assert hasattr(method, "__wrapped__"), f"{client.__name__}.{name}"
            elif not inspect.isasyncgenfunction(method):  # list_all: pages of list_page
                assert inspect.signature(method).return_annotation.startswith("Stream["), name


async def test_an_invalid_policy_names_each_field(servers: Servers) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await servers.governor.client.propose(
            policy_type="astrology", name="stars", condition=CONDITION, action=ACTION
        )
    error = caught.value
    assert isinstance(error, RequestError)
    assert not isinstance(error, grpc.RpcError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.field_violations
    assert violation.field == "policy_type"
    assert violation.description
    assert error.message == f"policy_type: {violation.description}"
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert error.__cause__.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_ids_are_not_found(servers: Servers) -> None:
    with pytest.raises(NotFound) as caught:
        await servers.governor.client.get("pol-missing")
    assert "pol-missing" in caught.value.message
    assert caught.value.field_violations == ()
    with pytest.raises(NotFound):
        await servers.scheduler.client.cancel("task-missing")


async def test_a_reused_id_already_exists(servers: Servers) -> None:
    submit = {
        "task_id": "task-once",
        "task_type": "revoke_policy",
        "parameters": {"policy_id": "pol-x"},
        # Not due during the test: only its id matters.
        "scheduled_time_ns": time.time_ns() + HOUR_NS,
    }
    await servers.scheduler.client.submit(**submit)  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists) as caught:
        await servers.scheduler.client.submit(**submit)  # type: ignore[arg-type]
    assert "task-once" in caught.value.message


async def test_enforcing_a_revoked_policy_fails_its_precondition(servers: Servers) -> None:
    client = servers.governor.client
    receipt = await client.propose(
        policy_type="operational", name="scale", condition=CONDITION, action=ACTION
    )
    await client.revoke(receipt.resource_id)
    with pytest.raises(FailedPrecondition) as caught:
        await client.enforce(receipt.resource_id)
    assert isinstance(caught.value, RequestError)
    assert "REVOKED" in caught.value.message


@contextlib.asynccontextmanager
async def rate_limited_governor(sqlite_url: str) -> AsyncIterator[RunningGovernor]:
    """A Governor that lets each caller one call, then one more every 20 s."""
    async with inprocess.governor(
        sqlite_url, rate_limit_per_second=0.05, rate_limit_burst=1
    ) as governor:
        yield governor


async def test_a_rate_limited_caller_is_told_how_long_to_wait(sqlite_url: str) -> None:
    async with rate_limited_governor(sqlite_url) as governor:
        await governor.client.list_page()
        with pytest.raises(RateLimited) as caught:
            await governor.client.list_page()
    error = caught.value
    assert not isinstance(error, RequestError | RetryableError)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in error.message
    assert error.rate_limit is not None
    assert (error.rate_limit.limit, error.rate_limit.remaining) == (1, 0)
    # The bucket refills one call in 20 s; the reset time is rounded up to a whole second.
    assert error.retry_after_seconds is not None
    assert 15 <= error.retry_after_seconds <= 21


async def test_a_stopped_server_is_unavailable_and_retryable(sqlite_url: str) -> None:
    async with inprocess.governor(sqlite_url) as governor:
        target = governor.target
    async with open_channel(target, ChannelOptions(max_attempts=1)) as channel:
        with pytest.raises(Unavailable) as caught:
            await GovernorClient(channel).list_page(timeout=5)
    assert isinstance(caught.value, RetryableError)
    # The Scheduler's circuit breakers count it as the target failing.
    assert is_target_failure(caught.value)


async def test_a_stream_that_is_refused_raises_on_its_first_read(servers: Servers) -> None:
    stream = servers.scheduler.client.watch("task-missing")
    assert isinstance(stream, Stream)
    with pytest.raises(NotFound):
        await stream.read()
    with pytest.raises(NotFound):
        async for _ in servers.scheduler.client.watch("task-missing"):
            pass
    with pytest.raises(InvalidRequest) as caught:
        await servers.scheduler.client.watch("bad id!").read()
    assert [v.field for v in caught.value.field_violations] == ["task_id"]


async def test_a_stream_whose_server_stops_raises_unavailable(sqlite_url: str) -> None:
    stopping = contextlib.AsyncExitStack()
    governor = await stopping.enter_async_context(inprocess.governor(sqlite_url))
    async with open_channel(governor.target) as channel:
        client = GovernorClient(channel)
        await client.propose(
            policy_type="operational", name="scale", condition=CONDITION, action=ACTION
        )
        stream = client.watch()
        first = await asyncio.wait_for(stream.read(), 10)
        assert isinstance(first, governor_pb2.Policy)
        await stopping.aclose()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(stream.read(), 10)


async def test_taictl_prints_each_field_violation(servers: Servers) -> None:
    target = servers.governor.target
    propose = ["policy", "propose", "--type", "astrology", "--name", "stars"]
    result = await taictl(target, *propose)
    assert result.exit_code == 1
    first, *details = result.stderr.splitlines()
    assert first.startswith("error: INVALID_ARGUMENT: policy_type: ")
    description = first.removeprefix("error: INVALID_ARGUMENT: policy_type: ")
    assert details == [f"  policy_type: {description}"]
    assert result.stdout == ""

    result = await taictl(target, "--json", *propose)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    error = json.loads(line)["error"]
    assert error["type"] == "InvalidRequest"
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field_violations"] == [{"field": "policy_type", "description": description}]

    # Brackets in a field name are printed as they are (not taken for markup).
    result = await taictl(
        servers.scheduler.target,
        "task",
        "submit",
        "revoke_policy",
        "--param",
        "policy_id=has spaces",
    )
    assert result.exit_code == 1
    assert "\n  parameters[policy_id]: " in result.stderr


async def test_taictl_says_how_long_to_wait_when_rate_limited(sqlite_url: str) -> None:
    async with rate_limited_governor(sqlite_url) as governor:
        assert (await taictl(governor.target, "policy", "list")).exit_code == 0
        result = await taictl(governor.target, "policy", "list")
        json_result = await taictl(governor.target, "--json", "policy", "list")
    assert result.exit_code == 1
    first, wait = result.stderr.splitlines()
    assert first.startswith("error: RESOURCE_EXHAUSTED: rate limit")
    seconds = int(wait.removeprefix("  retry in ").removesuffix("s"))
    assert 15 <= seconds <= 21
    error = json.loads(json_result.stderr)["error"]
    assert error["type"] == "RateLimited"
    assert 15 <= error["retry_after_seconds"] <= 21
