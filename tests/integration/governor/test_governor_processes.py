"""Governor server processes sharing one SQLite store and bus, as replicas would: a stream on
one replica sees changes taken by another, a restart loses nothing, SIGTERM drains."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.processes import ServiceProcess
from tai.v1 import governor_pb2
from tai_client import GovernorClient, Unavailable, open_channel

pytestmark = pytest.mark.slow

MakeProcess = Callable[..., ServiceProcess]


async def _propose(client: GovernorClient, name: str) -> str:
    receipt = await client.propose(
        policy_type="operational",
        name=name,
        condition="signal.priority >= 8",
        action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
    )
    return receipt.resource_id


async def test_stream_on_one_replica_sees_writes_to_another(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    a = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url, TAI_REPLICA_ID="gov-a"
    ).start()
    b = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url, TAI_REPLICA_ID="gov-b"
    ).start()
    async with open_channel(a.target) as channel_a, open_channel(b.target) as channel_b:
        writer, reader = GovernorClient(channel_a), GovernorClient(channel_b)
        existing = await _propose(writer, "existing")
        stream = reader.watch()
        # The snapshot arriving proves B's stream is live before A takes the next writes.
        first = await asyncio.wait_for(stream.read(), timeout=15)
        assert first is not grpc.aio.EOF
        assert first.id == existing
        policy_id = await _propose(writer, "written-on-a")
        await writer.enforce(policy_id)

        received = []
        while len(received) < 2:
            message = await asyncio.wait_for(stream.read(), timeout=15)
            assert message is not grpc.aio.EOF
            received.append((message.id, message.version, message.state))
        stream.cancel()
    assert received == [
        (policy_id, 1, governor_pb2.POLICY_STATE_PROPOSED),
        (policy_id, 2, governor_pb2.POLICY_STATE_ENFORCED),
    ]


async def test_restart_after_sigkill_loses_nothing(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    first = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url
    ).start()
    async with open_channel(first.target) as channel:
        client = GovernorClient(channel)
        ids = [await _propose(client, f"p{i}") for i in range(5)]
        await client.enforce(ids[0])
        await client.revoke(ids[1])
    first.kill()

    second = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url
    ).start()
    async with open_channel(second.target) as channel:
        client = GovernorClient(channel)
        states = {p.id: p.state async for p in client.list_all()}
        assert set(states) == set(ids)
        assert states[ids[0]] == governor_pb2.POLICY_STATE_ENFORCED
        assert states[ids[1]] == governor_pb2.POLICY_STATE_REVOKED
        # Every change is in the change log, so a client can replay it all.
        stream = client.watch(from_revision=0)
        snapshot = [await asyncio.wait_for(stream.read(), 10) for _ in ids]
        stream.cancel()
        assert {m.id for m in snapshot} == set(ids)


async def test_sigterm_ends_streams_and_exits_cleanly(
    service_processes: MakeProcess, sqlite_url: str
) -> None:
    process = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url
    ).start()
    async with open_channel(process.target) as channel:
        client = GovernorClient(channel)
        await _propose(client, "before-shutdown")
        stream = client.watch()
        assert (await asyncio.wait_for(stream.read(), 10)).policy_name == "before-shutdown"

        exit_code = await asyncio.to_thread(process.terminate)

        with pytest.raises(Unavailable):
            await asyncio.wait_for(stream.read(), 10)
    assert exit_code == 0


async def test_a_stream_gets_every_change_in_order_when_the_bus_brings_none(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    """Replica B shares A's store but not its bus, so no event of A's writes reaches it (as if
    they were lost): B's streams still get every change, in revision order, from the store, and
    a client resuming after a revision misses nothing."""
    a = await service_processes(
        "tai_governor", TAI_STORE=sqlite_url, TAI_BUS=sqlite_url, TAI_REPLICA_ID="gov-a"
    ).start()
    b = await service_processes(
        "tai_governor",
        TAI_STORE=sqlite_url,
        TAI_BUS=f"sqlite:///{tmp_path / 'other-bus.db'}",
        TAI_REPLICA_ID="gov-b",
    ).start()
    async with open_channel(a.target) as channel_a, open_channel(b.target) as channel_b:
        writer, reader = GovernorClient(channel_a), GovernorClient(channel_b)
        first = await writer.propose(policy_type="operational", name="before-the-stream")
        start = int(first.result_data["revision"])
        stream = reader.watch(from_revision=start)
        revisions = []
        for k in range(6):
            receipt = await writer.propose(policy_type="operational", name=f"p{k}")
            revisions.append(int(receipt.result_data["revision"]))

        async def read(call: Any, count: int) -> list[int]:
            seen = []
            while len(seen) < count:
                message = await asyncio.wait_for(call.read(), timeout=15)
                assert message is not grpc.aio.EOF
                seen.append(message.revision)
            call.cancel()
            return seen

        assert await read(stream, 6) == revisions
        resumed = reader.watch(from_revision=revisions[2])
        assert await read(resumed, 3) == revisions[3:]
