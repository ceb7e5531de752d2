"""A real Governor and a real Coordinator sharing one SQLite store and bus, in this test's
event loop, on ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import inprocess
from support.running import Suite


@pytest.fixture
async def suite(sqlite_url: str) -> AsyncIterator[Suite]:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target) as coordinator,
    ):
        yield Suite(governor, coordinator)
