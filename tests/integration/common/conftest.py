"""Fixtures for the DocumentStore adapters, run against the real backends.

`document_store` is parametrised over `STORE_BACKENDS`; an adapter joins the contract by adding
a backend here (Firestore: one emulator per session, started only when a Firestore test runs,
and a fresh project id per test, wiped afterwards).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from tai_common.gcp import FirestoreStore
from tai_common.ports import DocumentStore
from tai_common.sqlite import SqliteStore


@dataclass
class StoreBackend:
    """Where a test's documents live. `open()` returns a new store on the same data, so a test
    can close one store and check what another one reads back."""

    name: str
    open: Callable[[], Awaitable[DocumentStore]]


def _sqlite_backend(tmp_path: Path) -> StoreBackend:
    path = tmp_path / "store" / "tai.db"

    async def open_store() -> DocumentStore:
        return await SqliteStore.open(path)

    return StoreBackend("sqlite", open_store)


def _firestore_backend(emulator: FirestoreEmulator, project: str) -> StoreBackend:
    async def open_store() -> DocumentStore:
        with emulator.environ():
            return await FirestoreStore.open(project)

    return StoreBackend("firestore", open_store)


STORE_BACKENDS = ["sqlite", "firestore"]


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    if request.param == "sqlite":
        yield _sqlite_backend(tmp_path)
    elif request.param == "firestore":
        # Looked up here, so that a run without Firestore tests never starts the JVM.
        emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
        project = emulator.new_project()
        yield _firestore_backend(emulator, project)
        emulator.wipe(project)
    else:
        raise AssertionError(f"unknown store backend {request.param!r}")


@pytest.fixture
async def document_store(store_backend: StoreBackend) -> AsyncIterator[DocumentStore]:
    store = await store_backend.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def open_document_store(store_backend: StoreBackend) -> Callable[[], Awaitable[DocumentStore]]:
    """Opens another store on the data `document_store` uses (for reopen tests); the caller
    closes it."""
    return store_backend.open


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "sqlite" / "tai.db"


@pytest.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[SqliteStore]:
    """The SQLite adapter alone, for what only it has (query plans, file locks)."""
    store = await SqliteStore.open(sqlite_path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def firestore_project(firestore_emulator: FirestoreEmulator) -> Iterator[str]:
    """A project id of the session's emulator for this test alone, wiped afterwards."""
    project = firestore_emulator.new_project()
    yield project
    firestore_emulator.wipe(project)


@pytest.fixture
async def firestore_store(
    firestore_emulator: FirestoreEmulator, firestore_project: str
) -> AsyncIterator[FirestoreStore]:
    """The Firestore adapter alone, for what only it has (the TTL timestamp, id rules)."""
    with firestore_emulator.environ():
        store = await FirestoreStore.open(firestore_project)
    try:
        yield store
    finally:
        await store.close()
