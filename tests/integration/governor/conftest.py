"""A real Governor server on an ephemeral port, in this test's event loop, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import inprocess
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from support.running import RunningGovernor


@pytest.fixture
async def governor(sqlite_url: str) -> AsyncIterator[RunningGovernor]:
    async with inprocess.governor(sqlite_url, max_message_bytes=1024 * 1024) as running:
        yield running


@pytest.fixture(params=["sqlite", "firestore"])
async def governor_on_each_store(
    request: pytest.FixtureRequest, sqlite_url: str, tmp_path: Path
) -> AsyncIterator[RunningGovernor]:
    """A Governor on the embedded default (SQLite store and bus), then on Firestore (the
    emulator; the bus stays a SQLite file, as the listing never touches it)."""
    if request.param == "sqlite":
        async with inprocess.governor(sqlite_url) as running:
            yield running
        return
    # Looked up here, so that a run without Firestore tests never starts the JVM.
    emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
    project = emulator.new_project()
    try:
        with emulator.environ():
            async with inprocess.governor(
                f"firestore://{project}", bus=f"sqlite:///{tmp_path}/bus.db"
            ) as running:
                yield running
    finally:
        emulator.wipe(project)
