"""A client channel over several replicas (`ChannelOptions.load_balancing`): calls spread over
them, and go on when one stops."""

from __future__ import annotations

import contextlib
from pathlib import Path

from support import inprocess
from tai_client import ChannelOptions, GovernorClient, open_channel


async def replica_of(client: GovernorClient) -> str:
    status = await client.health()
    return next(d.partition("=")[2] for d in status.details if d.startswith("replica="))


async def test_round_robin_spreads_calls_and_survives_a_replica_stopping(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tai.db'}"
    async with inprocess.governor(url, replica="gov-a") as a:
        second = contextlib.AsyncExitStack()
        b = await second.enter_async_context(inprocess.governor(url, replica="gov-b"))
        options = ChannelOptions(load_balancing="round_robin")
        async with open_channel(f"ipv4:{a.target},{b.target}", options) as channel:
            client = GovernorClient(channel)
            # Round robin picks among the replicas connected so far: the second may take a
            # moment to join.
            seen = {await replica_of(client) for _ in range(20)}
            for _ in range(200):
                if seen == {"gov-a", "gov-b"}:
                    break
                seen.add(await replica_of(client))
            assert seen == {"gov-a", "gov-b"}
            await second.aclose()  # gov-b stops
            # The calls go on, on the replica that is left.
            assert {await replica_of(client) for _ in range(10)} == {"gov-a"}
