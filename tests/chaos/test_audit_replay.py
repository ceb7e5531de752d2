"""How chaos reads what was published on the audit topic when the bus is the Pub/Sub emulator
(chaos/checks.py, `replay_audit_topic`): a subscription of its own gets every record the topic
retains, including those another subscription (the Governor's audit log) already took, each
record id once per resource however often it was published."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from google.protobuf import any_pb2
from tai.v1 import common_pb2, events_pb2
from tai_common.gcp import PubSubBus
from tai_common.messaging import topics
from tai_common.ports import Message, SubscriptionSpec, event_message

# The repository's chaos package (this folder, tests/chaos, is not a package).
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chaos.checks import replay_audit_topic  # noqa: E402

if TYPE_CHECKING:
    # Loaded by pytest as a plugin (below); importing it first would skip its assert rewriting.
    from support.pubsub_emulator import PubSubEmulator

pytest_plugins = ["support.pubsub_emulator"]


def audit_event(record_id: str, resource: str) -> events_pb2.Event:
    payload = any_pb2.Any()
    payload.Pack(common_pb2.AuditRecord(record_id=record_id, resource=resource, outcome="ok"))
    return events_pb2.Event(
        event_id=f"evt-{record_id}",
        event_type="audit.ok",
        aggregate_type="audit",
        aggregate_id=record_id,
        payload=payload,
    )


async def test_the_replay_reads_every_record_the_audit_topic_holds(
    pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    project = f"chaos-{uuid.uuid4().hex[:12]}"
    records = [(f"aud-{i:02d}", f"task/t{i % 3}") for i in range(30)]
    bus = await PubSubBus.open(project, create_missing=True)
    try:
        # A consumer like the audit log takes (and acknowledges) every record first.
        taken: set[str] = set()
        everything = asyncio.Event()

        async def take(message: Message) -> None:
            taken.add(message.attributes["aggregate_id"])
            if len(taken) == len(records):
                everything.set()

        consumer = await bus.subscribe(
            SubscriptionSpec(topic=topics.AUDIT_EVENTS, name="governor-audit-log"), take
        )
        # The first record twice, as a relay that died after publishing publishes it again.
        published = [*records, records[0]]
        await bus.publish_many(
            [event_message(topics.AUDIT_EVENTS, audit_event(*r)) for r in published]
        )
        await asyncio.wait_for(everything.wait(), timeout=30)
        await consumer.close()
    finally:
        await bus.close()

    replayed = await asyncio.to_thread(replay_audit_topic, pubsub_emulator.host, project)

    expected: dict[str, set[str]] = {}
    for record_id, resource in records:
        expected.setdefault(resource, set()).add(record_id)
    assert replayed == expected
    # Each replay reads through a subscription of its own: a second one reads it all again.
    assert await asyncio.to_thread(replay_audit_topic, pubsub_emulator.host, project) == expected
