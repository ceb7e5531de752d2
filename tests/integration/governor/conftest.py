"""A real Governor server on an ephemeral port, in this test's event loop, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import inprocess
from support.running import RunningGovernor


@pytest.fixture
async def governor(sqlite_url: str) -> AsyncIterator[RunningGovernor]:
    async with inprocess.governor(sqlite_url, max_message_bytes=1024 * 1024) as running:
        yield running
