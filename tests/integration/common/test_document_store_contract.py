"""The DocumentStore contract: every adapter must pass these, against its real backend.

The tests at the end, on the `sqlite_store` and `firestore_store` fixtures, cover what only
one adapter has.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1 import AsyncClient
from support.firestore_emulator import FirestoreEmulator
from tai_common.core import Aborted, AlreadyExists, Unavailable
from tai_common.gcp import FirestoreStore
from tai_common.ports import (
    DOC_ID,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    Op,
    Order,
    Query,
    Transaction,
)
from tai_common.sqlite import SqliteStore
from tai_common.sqlite.sql import delete_expired_sql, expiry_index_sql

COLL = "widgets"


async def _ids(store: DocumentStore, query: Query) -> list[str]:
    return [doc.id for doc in (await store.query(query)).documents]


async def _page_through(store: DocumentStore, query: Query) -> list[str]:
    """Every id the query yields, page by page."""
    ids: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await store.query(
            Query(query.collection, query.filters, query.order_by, query.limit, cursor)
        )
        assert len(page.documents) <= (query.limit or len(page.documents))
        ids.extend(doc.id for doc in page.documents)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


def _expected_order(docs: dict[str, dict[str, Any]], order: list[tuple[str, bool]]) -> list[str]:
    """The contract's order computed in Python: the order fields, then the id in the direction
    of the last order field (ascending without order fields). Values here are never null."""
    ids = sorted(docs)
    tie_descending = order[-1][1] if order else False
    ids.sort(reverse=tie_descending)
    for field_path, descending in reversed(order):  # stable sorts: least significant first
        ids.sort(key={i: docs[i][field_path] for i in ids}.__getitem__, reverse=descending)
    return ids


# --- CRUD -------------------------------------------------------------------------------------


async def test_get_on_unknown_collection_returns_nothing(document_store: DocumentStore) -> None:
    assert await document_store.get("never_written", "x") is None
    assert await document_store.get_many("never_written", ["x", "y"]) == []
    assert (await document_store.query(Query("never_written"))).documents == []
    assert await document_store.count("never_written") == 0
    await document_store.delete("never_written", "x")


async def test_crud(document_store: DocumentStore) -> None:
    data = {
        "name": "a",
        "n": 1,
        "f": 1.5,
        "ok": True,
        "none": None,
        "tags": ["x", "y"],
        "nested": {"deep": {"v": "é"}},
    }
    await document_store.create(COLL, "w1", data)
    assert await document_store.get(COLL, "w1") == Document("w1", data)
    assert await document_store.get(COLL, "missing") is None

    await document_store.set(COLL, "w1", {"name": "b"})
    assert await document_store.get(COLL, "w1") == Document("w1", {"name": "b"})

    await document_store.set(COLL, "w2", {"name": "c"})  # set creates
    assert await document_store.get(COLL, "w2") == Document("w2", {"name": "c"})

    await document_store.delete(COLL, "w1")
    assert await document_store.get(COLL, "w1") is None
    await document_store.delete(COLL, "w1")  # deleting a missing document is not an error
    assert await document_store.count(COLL) == 1


async def test_stored_data_is_a_snapshot(document_store: DocumentStore) -> None:
    data: dict[str, Any] = {"items": [1]}
    await document_store.set(COLL, "w", data)
    data["items"].append(2)
    fetched = await document_store.get(COLL, "w")
    assert fetched is not None
    assert fetched.data == {"items": [1]}


async def test_get_many_keeps_the_order_asked_and_skips_missing(
    document_store: DocumentStore,
) -> None:
    for i in range(5):
        await document_store.set(COLL, f"w{i}", {"i": i})
    docs = await document_store.get_many(COLL, ["w3", "nope", "w0", "w4"])
    assert [(d.id, d.data["i"]) for d in docs] == [("w3", 3), ("w0", 0), ("w4", 4)]
    assert await document_store.get_many(COLL, []) == []


async def test_create_conflict(document_store: DocumentStore) -> None:
    await document_store.create(COLL, "w1", {"v": 1})
    with pytest.raises(AlreadyExists) as caught:
        await document_store.create(COLL, "w1", {"v": 2})
    assert caught.value.kind == "document"
    assert caught.value.resource_id == f"{COLL}/w1"
    assert await document_store.get(COLL, "w1") == Document("w1", {"v": 1})


# --- filters ------------------------------------------------------------------------------------


@pytest.fixture
async def numbers(document_store: DocumentStore) -> DocumentStore:
    """n0..n9 with n = i, parity, a label, and a nested value."""
    for i in range(10):
        await document_store.set(
            COLL,
            f"n{i}",
            {"n": i, "even": i % 2 == 0, "label": f"L{i % 3}", "meta": {"rank": {"v": 9 - i}}},
        )
    return document_store


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Filter.eq("n", 3), {3}),
        (Filter("n", Op.LT, 3), {0, 1, 2}),
        (Filter("n", Op.LE, 3), {0, 1, 2, 3}),
        (Filter("n", Op.GT, 7), {8, 9}),
        (Filter("n", Op.GE, 7), {7, 8, 9}),
        (Filter.is_in("n", [1, 5, 42]), {1, 5}),
        (Filter.eq("label", "L1"), {1, 4, 7}),
        (Filter.is_in("label", ["L0", "L2"]), {0, 2, 3, 5, 6, 8, 9}),
        (Filter("label", Op.GT, "L1"), {2, 5, 8}),
        (Filter.eq("even", True), {0, 2, 4, 6, 8}),
        (Filter.eq("even", False), {1, 3, 5, 7, 9}),
        (Filter.eq("meta.rank.v", 0), {9}),
        (Filter("meta.rank.v", Op.GE, 8), {0, 1}),
        (Filter.eq(DOC_ID, "n4"), {4}),
        (Filter.is_in(DOC_ID, ["n4", "n6", "zz"]), {4, 6}),
        (Filter(DOC_ID, Op.GE, "n8"), {8, 9}),
    ],
    ids=lambda v: str(v) if not isinstance(v, Filter) else f"{v.field}{v.op.value}{v.value}",
)
async def test_filter_ops(numbers: DocumentStore, flt: Filter, expected: set[int]) -> None:
    ids = await _ids(numbers, Query(COLL, filters=(flt,)))
    assert sorted(ids) == sorted(f"n{i}" for i in expected)
    assert await numbers.count(COLL, [flt]) == len(expected)


async def test_filters_combine_with_and(numbers: DocumentStore) -> None:
    filters = (Filter("n", Op.GE, 2), Filter("n", Op.LT, 8), Filter.eq("even", True))
    assert sorted(await _ids(numbers, Query(COLL, filters=filters))) == ["n2", "n4", "n6"]
    assert await numbers.count(COLL, filters) == 3
    assert await numbers.count(COLL) == 10
    assert await numbers.count(COLL, [Filter.eq("n", 99)]) == 0


async def test_eq_none_matches_null(document_store: DocumentStore) -> None:
    await document_store.set(COLL, "null", {"owner": None})
    await document_store.set(COLL, "set", {"owner": "ann"})
    ids = await _ids(document_store, Query(COLL, filters=(Filter.eq("owner", None),)))
    assert "null" in ids
    assert "set" not in ids


# --- order and pagination -----------------------------------------------------------------------


@pytest.fixture
async def ties(document_store: DocumentStore) -> tuple[DocumentStore, dict[str, dict[str, Any]]]:
    """30 documents with few distinct values in `a` and `b`, so most orders have ties."""
    docs = {f"d{i:02d}": {"a": i % 3, "b": f"v{i % 4}", "c": {"x": (i * 7) % 5}} for i in range(30)}
    for doc_id, data in docs.items():
        await document_store.set(COLL, doc_id, data)
    return document_store, docs


ORDERS = [
    [],
    [("a", False)],
    [("a", True)],
    [("a", False), ("b", True)],
    [("b", True), ("a", False)],
    [("a", True), ("b", True)],
    [("c.x", False), ("a", True)],
]


@pytest.mark.parametrize("order", ORDERS, ids=str)
async def test_order_with_ties(
    ties: tuple[DocumentStore, dict[str, dict[str, Any]]], order: list[tuple[str, bool]]
) -> None:
    store, docs = ties
    flat = {i: {**d, "c.x": d["c"]["x"]} for i, d in docs.items()}
    query = Query(COLL, order_by=tuple(Order(f, desc) for f, desc in order))
    assert await _ids(store, query) == _expected_order(flat, order)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("page_size", [1, 4, 7])
async def test_pagination_returns_each_document_once(
    ties: tuple[DocumentStore, dict[str, dict[str, Any]]],
    order: list[tuple[str, bool]],
    page_size: int,
) -> None:
    store, docs = ties
    flat = {i: {**d, "c.x": d["c"]["x"]} for i, d in docs.items()}
    query = Query(COLL, order_by=tuple(Order(f, desc) for f, desc in order), limit=page_size)
    assert await _page_through(store, query) == _expected_order(flat, order)


async def test_pagination_with_filter_and_explicit_id_order(
    ties: tuple[DocumentStore, dict[str, dict[str, Any]]],
) -> None:
    store, docs = ties
    expected = sorted((i for i, d in docs.items() if d["a"] != 1), reverse=True)
    query = Query(
        COLL,
        filters=(Filter.is_in("a", [0, 2]),),
        order_by=(Order(DOC_ID, descending=True),),
        limit=3,
    )
    assert await _page_through(store, query) == expected


async def test_last_page_has_no_cursor(document_store: DocumentStore) -> None:
    for i in range(4):
        await document_store.set(COLL, f"w{i}", {"i": i})
    page = await document_store.query(Query(COLL, order_by=(Order("i"),), limit=4))
    assert len(page.documents) == 4
    assert page.next_cursor is None
    page = await document_store.query(Query(COLL, order_by=(Order("i"),), limit=3))
    assert page.next_cursor == (2, "w2")


# --- transactions -------------------------------------------------------------------------------


async def test_transaction_reads_then_writes(document_store: DocumentStore) -> None:
    await document_store.set(COLL, "src", {"v": 5})
    await document_store.set(COLL, "gone", {"v": 0})

    async def fn(tx: Transaction) -> int:
        src = await tx.get(COLL, "src")
        page = await tx.query(Query(COLL, filters=(Filter("v", Op.GE, 5),)))
        assert src is not None
        assert [d.id for d in page.documents] == ["src"]
        tx.set(COLL, "dst", {"v": src.data["v"] * 2})
        tx.create(COLL, "new", {"v": 1})
        tx.delete(COLL, "gone")
        return int(src.data["v"])

    assert await document_store.run_transaction(fn) == 5
    assert await document_store.get(COLL, "dst") == Document("dst", {"v": 10})
    assert await document_store.get(COLL, "new") == Document("new", {"v": 1})
    assert await document_store.get(COLL, "gone") is None


async def test_transaction_writes_apply_in_order(document_store: DocumentStore) -> None:
    await document_store.set(COLL, "a", {"v": 0})

    async def fn(tx: Transaction) -> None:
        tx.set(COLL, "a", {"v": 1})
        tx.delete(COLL, "a")
        tx.create(COLL, "a", {"v": 2})  # allowed: deleted earlier in this transaction
        tx.set(COLL, "b", {"v": 1})
        tx.delete(COLL, "b")

    await document_store.run_transaction(fn)
    assert await document_store.get(COLL, "a") == Document("a", {"v": 2})
    assert await document_store.get(COLL, "b") is None


class _Boom(Exception):
    pass


async def test_transaction_exception_rolls_back_and_propagates(
    document_store: DocumentStore,
) -> None:
    await document_store.set(COLL, "keep", {"v": 1})
    boom = _Boom("fn failed")

    async def fn(tx: Transaction) -> None:
        tx.set(COLL, "keep", {"v": 2})
        tx.create(COLL, "other", {"v": 1})
        tx.delete(COLL, "keep")
        raise boom

    with pytest.raises(_Boom) as caught:
        await document_store.run_transaction(fn)
    assert caught.value is boom
    assert await document_store.get(COLL, "keep") == Document("keep", {"v": 1})
    assert await document_store.get(COLL, "other") is None


async def test_transaction_create_conflict_rolls_back_everything(
    document_store: DocumentStore,
) -> None:
    await document_store.set(COLL, "taken", {"v": 1})

    async def fn(tx: Transaction) -> None:
        tx.set(COLL, "a", {"v": 1})
        tx.create("other_coll", "b", {"v": 1})
        tx.create(COLL, "c", {"v": 1})
        tx.create(COLL, "taken", {"v": 2})
        tx.set(COLL, "d", {"v": 1})

    with pytest.raises(AlreadyExists) as caught:
        await document_store.run_transaction(fn)
    assert caught.value.resource_id == f"{COLL}/taken"
    assert await document_store.get(COLL, "taken") == Document("taken", {"v": 1})
    for coll, doc_id in [(COLL, "a"), ("other_coll", "b"), (COLL, "c"), (COLL, "d")]:
        assert await document_store.get(coll, doc_id) is None


async def test_transaction_create_twice_conflicts(document_store: DocumentStore) -> None:
    async def fn(tx: Transaction) -> None:
        tx.create(COLL, "x", {"v": 1})
        tx.create(COLL, "y", {"v": 1})
        tx.create(COLL, "x", {"v": 2})

    with pytest.raises(AlreadyExists) as caught:
        await document_store.run_transaction(fn)
    assert caught.value.resource_id == f"{COLL}/x"
    assert await document_store.get_many(COLL, ["x", "y"]) == []


async def test_read_after_write_raises(document_store: DocumentStore) -> None:
    async def get_after_set(tx: Transaction) -> None:
        tx.set(COLL, "a", {"v": 1})
        await tx.get(COLL, "a")

    async def query_after_delete(tx: Transaction) -> None:
        tx.delete(COLL, "a")
        await tx.query(Query(COLL))

    for fn in (get_after_set, query_after_delete):
        with pytest.raises(RuntimeError):
            await document_store.run_transaction(fn)
    assert await document_store.get(COLL, "a") is None


# Concurrent transactions per backend. The Firestore emulator locks pessimistically: colliding
# transactions wait ~2 s for each other's locks, then abort and rerun, so a few already prove
# that no update is lost.
def _concurrent_increments(store: DocumentStore) -> int:
    return 3 if isinstance(store, FirestoreStore) else 50


async def test_concurrent_increments_lose_no_update(document_store: DocumentStore) -> None:
    increments = _concurrent_increments(document_store)
    await document_store.set(COLL, "counter", {"n": 0})

    async def increment(tx: Transaction) -> None:
        doc = await tx.get(COLL, "counter")
        assert doc is not None
        await asyncio.sleep(0)  # let the other transactions interleave if they can
        tx.set(COLL, "counter", {"n": doc.data["n"] + 1})

    await asyncio.gather(*(document_store.run_transaction(increment) for _ in range(increments)))
    assert await document_store.get(COLL, "counter") == Document("counter", {"n": increments})


async def test_concurrent_transactions_fail_alone(document_store: DocumentStore) -> None:
    """Transactions committed together (SQLite's group commit) or side by side (Firestore):
    one that conflicts and one that raises leave nothing, and the others all land."""
    n = _concurrent_increments(document_store)
    await document_store.set(COLL, "taken", {"v": 0})

    def writer(i: int) -> Callable[[Transaction], Awaitable[int]]:
        async def write(tx: Transaction) -> int:
            await tx.get(COLL, "taken")
            tx.set(COLL, f"ok{i}", {"i": i})
            tx.create(COLL, f"new{i}", {"i": i})
            return i

        return write

    async def conflicting(tx: Transaction) -> None:
        tx.set(COLL, "lost", {"v": 1})
        tx.create(COLL, "taken", {"v": 1})

    async def raising(tx: Transaction) -> None:
        await tx.get(COLL, "taken")
        raise ValueError("the caller's own error")

    outcomes = await asyncio.gather(
        *(document_store.run_transaction(writer(i)) for i in range(n // 2)),
        document_store.run_transaction(conflicting),
        document_store.run_transaction(raising),
        *(document_store.run_transaction(writer(i)) for i in range(n // 2, n)),
        return_exceptions=True,
    )
    conflict, raised = outcomes[n // 2], outcomes[n // 2 + 1]
    assert isinstance(conflict, AlreadyExists)
    assert conflict.resource_id == f"{COLL}/taken"
    assert isinstance(raised, ValueError)
    assert [o for o in outcomes if not isinstance(o, Exception)] == list(range(n))
    assert len(await document_store.get_many(COLL, [f"ok{i}" for i in range(n)])) == n
    assert len(await document_store.get_many(COLL, [f"new{i}" for i in range(n)])) == n
    assert await document_store.get(COLL, "lost") is None
    assert await document_store.get(COLL, "taken") == Document("taken", {"v": 0})


async def test_transaction_get_many_reads_in_order_and_isolates_its_keys(
    document_store: DocumentStore,
) -> None:
    increments = _concurrent_increments(document_store)
    for i in range(3):
        await document_store.set(COLL, f"c{i}", {"n": 0})

    async def increment_all(tx: Transaction) -> list[str]:
        docs = await tx.get_many(COLL, ["c2", "missing", "c0", "c1"])
        await asyncio.sleep(0)  # let the other transactions interleave if they can
        for doc in docs:
            tx.set(COLL, doc.id, {"n": doc.data["n"] + 1})
        return [doc.id for doc in docs]

    results = await asyncio.gather(
        *(document_store.run_transaction(increment_all) for _ in range(increments))
    )
    assert results == [["c2", "c0", "c1"]] * increments
    counters = await document_store.get_many(COLL, ["c0", "c1", "c2"])
    assert [d.data["n"] for d in counters] == [increments] * 3

    async def read_after_write(tx: Transaction) -> None:
        tx.set(COLL, "c0", {"n": -1})
        await tx.get_many(COLL, ["c0"])

    with pytest.raises(RuntimeError, match="reads before its first write"):
        await document_store.run_transaction(read_after_write)


async def test_cancelled_transaction_writes_nothing_and_blocks_nobody(
    document_store: DocumentStore,
) -> None:
    await document_store.set(COLL, "a", {"v": 1})
    inside = asyncio.Event()

    async def stalls(tx: Transaction) -> None:
        await tx.get(COLL, "a")
        tx.set(COLL, "a", {"v": 2})
        inside.set()
        await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(document_store.run_transaction(stalls))
    await inside.wait()
    # A read outside the open transaction does not wait for it, and sees the last commit.
    assert await document_store.get(COLL, "a") == Document("a", {"v": 1})
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await document_store.run_transaction(_set_b)
    assert await document_store.get(COLL, "a") == Document("a", {"v": 1})
    assert await document_store.get(COLL, "b") == Document("b", {"v": 2})


async def test_durability_across_reopen(
    open_document_store: Callable[[], Awaitable[DocumentStore]],
) -> None:
    store = await open_document_store()
    try:
        await store.create(COLL, "a", {"v": 1})
        await store.run_transaction(_set_b)
    finally:
        await store.close()
    store = await open_document_store()
    try:
        assert await store.get(COLL, "a") == Document("a", {"v": 1})
        assert await store.get(COLL, "b") == Document("b", {"v": 2})
    finally:
        await store.close()


async def _set_b(tx: Transaction) -> None:
    tx.set(COLL, "b", {"v": 2})


# --- data and lifecycle ---------------------------------------------------------------------


async def test_map_keys_may_hold_any_text(document_store: DocumentStore) -> None:
    # Metadata keys come from callers: dots, spaces, reserved-looking and empty keys included.
    keys = ["a.b", "", "__x__", "____", "~t", "~~", "é", "a b", "$", "/", "`q`", "__name__"]
    data = {"metadata": {k: f"v{i}" for i, k in enumerate(keys)}, "nested": {"": {"__k__": 1}}}
    await document_store.set(COLL, "m", data)
    assert await document_store.get(COLL, "m") == Document("m", data)
    assert (await document_store.query(Query(COLL))).documents == [Document("m", data)]


async def test_expiring_documents_round_trip_unchanged(document_store: DocumentStore) -> None:
    data = {"v": 1, "expires_at_ns": 1_700_000_000_123_456_789}
    # Without an integer expires_at_ns next to it, `expires_at` is an ordinary field.
    other = {"v": 2, "expires_at_ns": None, "expires_at": "mine"}
    await document_store.create(COLL, "e", data)

    async def write_and_read(tx: Transaction) -> Document | None:
        seen = await tx.get(COLL, "e")
        tx.set(COLL, "o", other)
        return seen

    assert await document_store.run_transaction(write_and_read) == Document("e", data)
    assert await document_store.get(COLL, "e") == Document("e", data)
    assert await document_store.get_many(COLL, ["o", "e"]) == [
        Document("o", other),
        Document("e", data),
    ]
    page = await document_store.query(Query(COLL, order_by=(Order("v"),)))
    assert page.documents == [Document("e", data), Document("o", other)]


async def test_in_with_none_matches_null(document_store: DocumentStore) -> None:
    await document_store.set(COLL, "null", {"owner": None})
    await document_store.set(COLL, "ann", {"owner": "ann"})
    await document_store.set(COLL, "bob", {"owner": "bob"})
    query = Query(COLL, filters=(Filter.is_in("owner", [None, "ann"]),))
    assert await _ids(document_store, query) == ["ann", "null"]
    assert await document_store.count(COLL, query.filters) == 2
    query = Query(COLL, filters=(Filter.is_in("owner", [None]),))
    assert await _ids(document_store, query) == ["null"]


@pytest.mark.parametrize("order", [[], [("b", True)], [("b", False), ("a", True)]], ids=str)
async def test_range_filter_on_an_unordered_field_keeps_the_order(
    ties: tuple[DocumentStore, dict[str, dict[str, Any]]], order: list[tuple[str, bool]]
) -> None:
    # Firestore itself would order by the range-filtered field `c.x` first.
    store, docs = ties
    kept = {i: d for i, d in docs.items() if d["c"]["x"] >= 2}
    query = Query(
        COLL,
        filters=(Filter("c.x", Op.GE, 2),),
        order_by=tuple(Order(f, desc) for f, desc in order),
    )
    assert await _ids(store, query) == _expected_order(kept, order)


async def test_close_twice_and_use_after_close(
    open_document_store: Callable[[], Awaitable[DocumentStore]],
) -> None:
    store = await open_document_store()
    await store.close()
    await store.close()
    with pytest.raises(Unavailable):
        await store.get(COLL, "a")
    with pytest.raises(Unavailable):
        await store.set(COLL, "a", {})


# --- SQLite only --------------------------------------------------------------------------------


async def test_sqlite_eq_none_matches_missing_field(sqlite_store: SqliteStore) -> None:
    await sqlite_store.set(COLL, "missing", {"other": 1})
    await sqlite_store.set(COLL, "null", {"owner": None})
    await sqlite_store.set(COLL, "set", {"owner": "ann"})
    query = Query(COLL, filters=(Filter.eq("owner", None),))
    assert sorted(await _ids(sqlite_store, query)) == ["missing", "null"]
    query = Query(COLL, filters=(Filter.is_in("owner", [None, "ann"]),))
    assert sorted(await _ids(sqlite_store, query)) == ["missing", "null", "set"]


async def test_sqlite_pagination_over_null_values(sqlite_store: SqliteStore) -> None:
    # Nulls sort first ascending, last descending; cursors on a null value still resume.
    for i in range(9):
        await sqlite_store.set(COLL, f"w{i}", {"v": None if i % 3 == 0 else i % 2})
    for descending in (False, True):
        order = (Order("v", descending),)
        everything = await _ids(sqlite_store, Query(COLL, order_by=order))
        assert sorted(everything) == [f"w{i}" for i in range(9)]
        assert await _page_through(sqlite_store, Query(COLL, order_by=order, limit=2)) == (
            everything
        )


async def test_sqlite_query_uses_the_declared_index(sqlite_store: SqliteStore) -> None:
    await sqlite_store.ensure_indexes(
        [IndexSpec("outbox", ("claimed_until_ns", "created_ns")), IndexSpec("outbox", ("topic",))]
    )
    await sqlite_store.ensure_indexes([IndexSpec("outbox", ("claimed_until_ns", "created_ns"))])
    for i in range(20):
        await sqlite_store.set(
            "outbox", f"e{i}", {"claimed_until_ns": 0, "created_ns": i, "topic": f"t{i % 2}"}
        )
    query = Query(
        "outbox",
        filters=(Filter("claimed_until_ns", Op.LE, 100),),
        order_by=(Order("claimed_until_ns"), Order("created_ns")),
        limit=5,
    )
    plan = " | ".join(await sqlite_store.explain_query_plan(query))
    assert "USING INDEX ix_outbox_" in plan
    assert "TEMP B-TREE" not in plan  # the index delivers the order, ties included

    page = await sqlite_store.query(query)
    assert page.next_cursor is not None
    resumed = Query(query.collection, query.filters, query.order_by, 5, page.next_cursor)
    plan = " | ".join(await sqlite_store.explain_query_plan(resumed))
    assert "USING INDEX ix_outbox_" in plan
    assert "TEMP B-TREE" not in plan

    by_topic = Query("outbox", filters=(Filter.eq("topic", "t1"),))
    assert "USING INDEX ix_outbox_" in " | ".join(await sqlite_store.explain_query_plan(by_topic))
    assert await sqlite_store.count("outbox", [Filter.eq("topic", "t1")]) == 10


async def test_sqlite_close_twice_and_use_after_close(sqlite_path: Path) -> None:
    store = await SqliteStore.open(sqlite_path)
    await store.close()
    await store.close()
    with pytest.raises(Unavailable):
        await store.get(COLL, "a")
    with pytest.raises(Unavailable):
        await store.set(COLL, "a", {})


async def test_sqlite_store_writes_are_forbidden_inside_its_transaction(
    sqlite_store: SqliteStore,
) -> None:
    async def writes_outside(tx: Transaction) -> None:
        await sqlite_store.set(COLL, "a", {"v": 1})

    async def nests(tx: Transaction) -> None:
        await sqlite_store.run_transaction(writes_outside)

    for fn in (writes_outside, nests):
        with pytest.raises(RuntimeError):
            await sqlite_store.run_transaction(fn)
    assert await sqlite_store.get(COLL, "a") is None


async def test_sqlite_concurrent_check_then_create_admits_one(sqlite_store: SqliteStore) -> None:
    """Transactions that each create a lease when a query finds none, committed in one group:
    exactly one lease is created."""

    def claim(i: int) -> Callable[[Transaction], Awaitable[bool]]:
        async def fn(tx: Transaction) -> bool:
            page = await tx.query(Query(COLL, filters=(Filter("kind", Op.EQ, "lease"),)))
            await asyncio.sleep(0)  # let the others read too, if they can
            if page.documents:
                return False
            tx.set(COLL, f"lease{i}", {"kind": "lease"})
            return True

        return fn

    won = await asyncio.gather(*(sqlite_store.run_transaction(claim(i)) for i in range(20)))
    assert won.count(True) == 1
    page = await sqlite_store.query(Query(COLL, filters=(Filter("kind", Op.EQ, "lease"),)))
    assert len(page.documents) == 1


async def test_sqlite_create_conflicting_with_an_earlier_member_of_the_batch(
    sqlite_store: SqliteStore,
) -> None:
    """Of two transactions in one group commit creating the same document, the second gets
    `AlreadyExists` naming that document (not another create of its own), and none of its
    writes land."""

    async def first(tx: Transaction) -> None:
        tx.create(COLL, "same", {"by": "first"})

    async def second(tx: Transaction) -> None:
        tx.create(COLL, "mine", {"by": "second"})
        tx.create(COLL, "same", {"by": "second"})

    outcomes = await asyncio.gather(
        sqlite_store.run_transaction(first),
        sqlite_store.run_transaction(second),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], AlreadyExists)
    assert outcomes[1].resource_id == f"{COLL}/same"
    assert await sqlite_store.get(COLL, "same") == Document("same", {"by": "first"})
    assert await sqlite_store.get(COLL, "mine") is None


async def test_sqlite_transaction_aborts_while_another_process_holds_the_lock(
    sqlite_path: Path,
) -> None:
    store = await SqliteStore.open(sqlite_path, busy_timeout_ms=20)
    # A plain sqlite3 connection stands in for another process holding the write lock.
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    calls = 0

    async def fn(tx: Transaction) -> None:
        nonlocal calls
        calls += 1
        tx.set(COLL, "a", {"v": 1})

    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(Aborted):
            await store.run_transaction(fn, max_attempts=3)
        assert calls == 0
        with pytest.raises(Unavailable):
            await store.set(COLL, "b", {"v": 1})
        assert await store.get(COLL, "a") is None  # reads never wait for the writer

        # Released during the retries, the lock is taken and fn runs once.
        task = asyncio.create_task(store.run_transaction(fn, max_attempts=1000))
        await asyncio.sleep(0.05)
        other.execute("ROLLBACK")
        await task
        assert calls == 1
        assert await store.get(COLL, "a") == Document("a", {"v": 1})
    finally:
        other.close()
        await store.close()


async def test_sqlite_rejects_bad_arguments(sqlite_store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="collection"):
        await sqlite_store.get("Bad-Name", "x")
    with pytest.raises(ValueError, match="None"):
        await sqlite_store.query(Query(COLL, filters=(Filter("v", Op.LT, None),)))
    with pytest.raises(TypeError):
        await sqlite_store.query(Query(COLL, filters=(Filter.eq("v", {"a": 1}),)))
    with pytest.raises(ValueError, match="not JSON compliant"):
        await sqlite_store.set(COLL, "x", {"v": float("nan")})
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteStore.open(Path("unused.db"), synchronous="SOMETIMES")
    with pytest.raises(ValueError, match="expire_every_seconds"):
        await SqliteStore.open(Path("unused.db"), expire_every_seconds=0)


async def test_sqlite_delete_expired_removes_what_expired(sqlite_store: SqliteStore) -> None:
    """The expiry hook deletes what is due, and only that.

    SQLite only: the Firestore adapter leaves expiry to a TTL policy, which the emulator does
    not run (its side — the `expires_at` timestamp it writes — is tested below).
    """
    assert await sqlite_store.delete_expired("never_written", now_ns=10, limit=10) == 0
    for i in range(5):
        await sqlite_store.set(COLL, f"old{i}", {"expires_at_ns": i})
    await sqlite_store.set(COLL, "due", {"expires_at_ns": 10})
    await sqlite_store.set(COLL, "later", {"expires_at_ns": 11})
    await sqlite_store.set(COLL, "forever", {"v": 1})
    await sqlite_store.set(COLL, "null", {"expires_at_ns": None})

    assert await sqlite_store.delete_expired(COLL, now_ns=10, limit=4) == 4
    assert await sqlite_store.delete_expired(COLL, now_ns=10, limit=4) == 2
    assert await sqlite_store.delete_expired(COLL, now_ns=10, limit=4) == 0
    remaining = await _ids(sqlite_store, Query(COLL))
    assert remaining == ["forever", "later", "null"]


def test_sqlite_expiry_uses_its_partial_index(tmp_path: Path) -> None:
    """A sweep seeks in the expiry index instead of reading every document."""
    conn = sqlite3.connect(tmp_path / "plan.db")
    try:
        conn.execute("CREATE TABLE c_widgets (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        conn.execute(expiry_index_sql(COLL))
        plan = conn.execute(f"EXPLAIN QUERY PLAN {delete_expired_sql(COLL)}", (1, 1)).fetchall()
    finally:
        conn.close()
    assert "USING INDEX ix_widgets_expiry" in " | ".join(str(row[3]) for row in plan)


async def test_sqlite_janitor_deletes_expired_documents(sqlite_path: Path) -> None:
    """The store's own periodic task calls the expiry hook on every collection."""
    clock = _PinnedClock(now_ns=1_000)
    store = await SqliteStore.open(sqlite_path, expire_every_seconds=0.02, clock=clock)
    try:
        await store.set(COLL, "due", {"expires_at_ns": 1_000})
        await store.set("other_coll", "due", {"expires_at_ns": 999})
        await store.set(COLL, "later", {"expires_at_ns": 1_001})
        for _ in range(500):
            if not (await store.get(COLL, "due") or await store.get("other_coll", "due")):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the janitor did not delete the expired documents")
        assert await store.get(COLL, "later") is not None
    finally:
        await store.close()


class _PinnedClock:
    def __init__(self, now_ns: int) -> None:
        self._now_ns = now_ns

    def now_ns(self) -> int:
        return self._now_ns

    def monotonic(self) -> float:
        return 0.0


# --- Firestore only -----------------------------------------------------------------------------


async def test_firestore_writes_a_ttl_timestamp(
    firestore_store: FirestoreStore, firestore_emulator: FirestoreEmulator, firestore_project: str
) -> None:
    """Documents with `expires_at_ns` carry the `expires_at` timestamp a TTL policy acts on."""
    expires_ns = 1_700_000_000_123_456_789
    await firestore_store.set(COLL, "e", {"v": 1, "expires_at_ns": expires_ns})
    await firestore_store.set(COLL, "plain", {"v": 1})
    with firestore_emulator.environ():
        client = AsyncClient(project=firestore_project)
    raw = (await client.collection(COLL).document("e").get()).to_dict()
    plain = (await client.collection(COLL).document("plain").get()).to_dict()
    assert raw is not None
    assert raw["expires_at"] == datetime.fromtimestamp(1_700_000_000.123456, UTC)
    assert plain == {"v": 1}
    with pytest.raises(ValueError, match="reserved"):
        await firestore_store.set(COLL, "x", {"expires_at_ns": 1, "expires_at": 2})


async def test_firestore_refuses_what_it_cannot_store(firestore_store: FirestoreStore) -> None:
    for bad_id in ["a/b", ".", "..", "__x__", ""]:
        with pytest.raises(ValueError, match="document with id"):
            await firestore_store.set(COLL, bad_id, {"v": 1})
        # Such a document cannot exist: reads find nothing rather than fail.
        assert await firestore_store.get(COLL, bad_id) is None
        await firestore_store.delete(COLL, bad_id)
    assert await firestore_store.get_many(COLL, ["a/b"]) == []
    assert await _ids(firestore_store, Query(COLL, filters=(Filter.eq(DOC_ID, "a/b"),))) == []
    with pytest.raises(ValueError, match="array directly inside an array"):
        await firestore_store.set(COLL, "x", {"v": [[1]]})
    with pytest.raises(ValueError, match="out of range"):
        await firestore_store.set(COLL, "x", {"v": 2**63})


async def test_firestore_refuses_to_page_a_range_filter_it_would_reorder(
    firestore_store: FirestoreStore,
) -> None:
    query = Query(COLL, filters=(Filter("n", Op.GT, 1),), order_by=(Order("a"),), limit=2)
    with pytest.raises(ValueError, match="range-filtered"):
        await firestore_store.query(query)
    # Ordering by the range field first, as TAI's queries do, pages as usual.
    await firestore_store.set(COLL, "w", {"n": 2, "a": 1})
    query = Query(COLL, filters=(Filter("n", Op.GT, 1),), order_by=(Order("n"), Order("a")))
    assert await _ids(firestore_store, query) == ["w"]


async def test_firestore_transaction_gives_up_with_aborted(firestore_store: FirestoreStore) -> None:
    """A transaction that keeps losing to another ends in `Aborted` after `max_attempts`.

    The emulator locks pessimistically: a transaction holding a read of the document makes a
    writer's commit wait (~2 s) and then abort, which stands in for Firestore's contention.
    """
    await firestore_store.set(COLL, "a", {"v": 1})
    holding = asyncio.Event()

    async def holds(tx: Transaction) -> None:
        await tx.get(COLL, "a")
        holding.set()
        await asyncio.Event().wait()  # until cancelled

    calls = 0

    async def writes(tx: Transaction) -> None:
        nonlocal calls
        calls += 1
        doc = await tx.get(COLL, "a")
        assert doc is not None
        tx.set(COLL, "a", {"v": doc.data["v"] + 1})

    holder = asyncio.create_task(firestore_store.run_transaction(holds))
    try:
        await holding.wait()
        with pytest.raises(Aborted, match="gave up after 2 attempts"):
            await firestore_store.run_transaction(writes, max_attempts=2)
        assert calls == 2
    finally:
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
    assert await firestore_store.get(COLL, "a") == Document("a", {"v": 1})
    await firestore_store.run_transaction(writes)  # the holder's locks are gone
    assert await firestore_store.get(COLL, "a") == Document("a", {"v": 2})


async def test_firestore_open_fails_fast_when_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
    with pytest.raises(Unavailable, match="did not answer"):
        await FirestoreStore.open("tai-unreachable", connect_timeout_s=0.5)
