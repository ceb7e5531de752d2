"""The audit log over the real SQLite store: appends that arrive together share a transaction,
and the chain stays whole and gap-free whatever their number and duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tai.v1 import common_pb2
from tai_common.messaging import AuditLog, audit
from tai_common.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "tai.db")
    await store.ensure_indexes(audit.INDEXES)
    yield store
    await store.close()


def record(n: int) -> common_pb2.AuditRecord:
    return common_pb2.AuditRecord(
        record_id=f"rec-{n}",
        time_ns=n,
        principal="team-a",
        action="/tai.v1.Governor/ProposePolicy",
        resource=f"policy/p{n}",
        outcome="ok",
    )


async def test_concurrent_appends_form_one_gap_free_chain(store: SqliteStore) -> None:
    log = AuditLog(store)
    records = [record(n) for n in range(200)]
    # Delivered at least once: some records arrive twice, in the same burst and later.
    await asyncio.gather(*(log.append(r) for r in [*records, records[5], records[150]]))
    await log.append(records[7])

    stored = await log.records(after_seq=0, limit=1000)
    assert [r.seq for r in stored] == list(range(1, 201))
    assert sorted(r.record_id for r in stored) == sorted(r.record_id for r in records)
    verification = await log.verify(page_size=64)
    assert verification.intact, verification.reason
    assert verification.checked == 200


async def test_appends_after_a_restart_continue_the_chain(store: SqliteStore) -> None:
    await asyncio.gather(*(AuditLog(store).append(record(n)) for n in range(10)))
    # A new process (a new AuditLog) picks the chain up from its stored head.
    await asyncio.gather(*(AuditLog(store).append(record(n)) for n in range(10, 15)))

    stored = await AuditLog(store).records(after_seq=0, limit=100)
    assert [r.seq for r in stored] == list(range(1, 16))
    assert (await AuditLog(store).verify()).intact
