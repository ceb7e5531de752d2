"""The bus unreachable while writes continue: writes succeed, the outbox grows (visible in a
metric), and once the bus is back every event reaches a subscription's handler exactly once."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.processes import free_port
from support.pubsub_emulator import PubSubEmulator
from support.scenarios import MakeProcess
from support.tcp_proxy import TcpProxy
from tai_client import GovernorClient, open_channel
from tai_common.gcp import PubSubBus
from tai_common.messaging import events, topics
from tai_common.ports import Message, SubscriptionSpec

# Process starts and the waits for the outage, the backlog and its drain add up past the
# default timeout on a slow machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WRITES = 8


def backlog(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(r"^tai_outbox_backlog (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
async def bus_proxy(pubsub_emulator: PubSubEmulator) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy("127.0.0.1", pubsub_emulator.port).start()
    yield proxy
    await proxy.close()


async def test_writes_continue_and_events_arrive_once_when_the_bus_returns(
    service_processes: MakeProcess,
    production_env: dict[str, str],
    pubsub_emulator: PubSubEmulator,
    bus_proxy: TcpProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = urlparse(production_env["TAI_BUS"]).netloc
    metrics_port = free_port()
    governor = await service_processes(
        "tai_governor",
        **{**production_env, "PUBSUB_EMULATOR_HOST": bus_proxy.address},
        TAI_METRICS_PORT=str(metrics_port),
    ).start(timeout=60)

    # A durable consumer, straight to the emulator, noting the policy of every event it gets
    # (the bus delivers at least once).
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    consumer_bus = await PubSubBus.open(project, create_missing=True)
    deliveries: list[str] = []
    policies: set[str] = set()

    async def handler(message: Message) -> None:
        deliveries.append(message.attributes.get("event_id", ""))
        policies.add(events.from_message(message).aggregate_id)

    subscription = await consumer_bus.subscribe(
        SubscriptionSpec(topic=topics.POLICIES, name="outage-test"), handler
    )
    try:
        async with open_channel(governor.target) as channel:
            client = GovernorClient(channel)
            first = await client.propose(policy_type="finance", name="before-the-outage")
            await wait_for(lambda: len(deliveries) >= 1, 30)

            await bus_proxy.cut()
            written = [
                (await client.propose(policy_type="finance", name=f"during-{i}")).resource_id
                for i in range(WRITES)
            ]  # every write succeeds while the bus is unreachable
            await wait_for(lambda: backlog(metrics_port) >= WRITES, 30)

            await bus_proxy.restore()
            await wait_for(lambda: backlog(metrics_port) == 0, 60)
            expected = {first.resource_id, *written}
            await wait_for(lambda: len(set(deliveries)) >= len(expected), 60)
    finally:
        await subscription.close()
        await consumer_bus.close()

    assert policies == expected  # every event written during the outage arrived


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Polls `condition` (in a thread: it may do blocking I/O) until true or `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.2)
