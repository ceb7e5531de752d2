"""Fixtures for the Vault adapter, run against a real OpenBao dev server.

Every test gets its own KV folder (`prefix`) and policy, so tests sharing the module's server
never see each other's secrets. Every value a test registers in `sensitive` (secret values,
tokens, secret_ids, JWTs) is checked, after the test, against every log record it produced at
any level: a leak fails the test that caused it.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import AsyncIterator, Iterator

import pytest
from support.vault_server import VaultServer, running_vault
from vault_kit import Kit, make_kit


@pytest.fixture(scope="module")
def vault() -> Iterator[VaultServer]:
    """One OpenBao dev server for the module."""
    with running_vault() as server:
        yield server


@pytest.fixture
def own_vault() -> Iterator[VaultServer]:
    """A server of the test's own, for tests that stop, pause or seal it."""
    with running_vault() as server:
        yield server


@pytest.fixture
def sensitive() -> set[str]:
    """Strings that must never appear in a log record or an error message."""
    return set()


@pytest.fixture(autouse=True)
def no_sensitive_value_in_logs(
    caplog: pytest.LogCaptureFixture, sensitive: set[str]
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    records = [
        *caplog.get_records("setup"),
        *caplog.get_records("call"),
        *caplog.records,
    ]
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        for value in sensitive:
            assert value not in text, f"a sensitive value leaked into a {record.name} log record"


@pytest.fixture
async def kit(vault: VaultServer, sensitive: set[str]) -> AsyncIterator[Kit]:
    made = make_kit(vault, sensitive)
    yield made
    for source in made.opened:
        await source.close()


@pytest.fixture
async def own_kit(own_vault: VaultServer, sensitive: set[str]) -> AsyncIterator[Kit]:
    made = make_kit(own_vault, sensitive)
    yield made
    for source in made.opened:
        await source.close()


@pytest.fixture(scope="module")
def approle_mount(vault: VaultServer) -> str:
    """AppRole enabled once per server, at a path of its own."""
    mount = f"approle-{secrets.token_hex(3)}"
    vault.admin().sys.enable_auth_method("approle", path=mount)
    return mount
