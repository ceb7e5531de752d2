"""The suite on its production adapters, each against the real thing: Firestore and Pub/Sub
emulators, a real redis-server. Service processes are separate, as in production."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from support.pubsub_emulator import PubSubEmulator
from support.pubsub_emulator import pubsub_emulator as pubsub_emulator
from support.redis_server import RedisServer, running_redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def production_env(
    firestore_emulator: FirestoreEmulator,
    pubsub_emulator: PubSubEmulator,
    redis_server: RedisServer,
) -> Iterator[dict[str, str]]:
    """TAI_* settings for a service process: its own project on both emulators."""
    project = f"tai-e2e-{uuid.uuid4().hex[:12]}"
    yield {
        "TAI_STORE": f"firestore://{project}",
        "TAI_BUS": f"pubsub://{project}",
        "TAI_BUS_CREATE_MISSING": "true",
        "TAI_CACHE": redis_server.url,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
        "TAI_LOG_LEVEL": "WARNING",
    }
    firestore_emulator.wipe(project)
