"""A real Governor and Coordinator sharing one SQLite store, for the `taictl` tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support import inprocess
from support.running import Suite
from tai_client.cli import DEFAULT_TARGETS


@pytest.fixture
async def suite(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Suite]:
    async with (
        inprocess.governor(sqlite_url) as governor,
        inprocess.coordinator(sqlite_url, governor.target) as coordinator,
    ):
        # taictl has one --target for every service, and some commands call two (`policy
        # enforce`: the Coordinator rehearses, the Governor enforces): each service's default
        # address points at its server here.
        monkeypatch.setitem(DEFAULT_TARGETS, "governor", governor.target)
        monkeypatch.setitem(DEFAULT_TARGETS, "coordinator", coordinator.target)
        yield Suite(governor, coordinator)
