"""The data layer's tenancy rule on each store (SQLite, the Firestore emulator): through
`NamespacedStore`, each namespace sees its own documents only, whatever ids and queries it
uses; nothing namespaced is reachable outside a namespace; the installation's collections are
shared; and dropping a namespace deletes its documents and no one else's."""

from __future__ import annotations

import base64

import pytest
from tai.v1 import events_pb2
from tai_common.core.namespace import NoNamespace, in_namespace
from tai_common.namespacing import NAMESPACES, NamespacedStore
from tai_common.ports import OUTBOX, DocumentStore, Filter, IndexSpec, Query, Transaction

INDEXES = [IndexSpec("things", ("kind", "n"))]


async def _fill(store: NamespacedStore, namespace: str, count: int) -> None:
    with in_namespace(namespace):
        for n in range(count):
            await store.set("things", f"t{n}", {"kind": "k", "n": n, "owner": namespace})


async def test_each_namespace_sees_its_own_documents_only(
    document_store: DocumentStore,
) -> None:
    store = NamespacedStore(document_store)
    await store.ensure_indexes(INDEXES)
    await _fill(store, "default", 2)
    await _fill(store, "team-a", 3)
    await _fill(store, "team-b", 4)
    for namespace, count in (("default", 2), ("team-a", 3), ("team-b", 4)):
        with in_namespace(namespace):
            page = await store.query(Query("things", filters=(Filter.eq("kind", "k"),), limit=100))
            assert {d.data["owner"] for d in page.documents} == {namespace}
            assert len(page.documents) == count
            assert await store.count("things") == count
            # The same id in each namespace is a different document.
            found = await store.get("things", "t1")
            assert found is not None
            assert found.data["owner"] == namespace

            async def read_in_tx(tx: Transaction) -> list[str]:
                docs = await tx.get_many("things", ["t0", "t1", "t2", "t3"])
                return [d.data["owner"] for d in docs]

            assert set(await store.run_transaction(read_in_tx)) == {namespace}
    # The default namespace's documents are where they were before namespaces.
    root = await document_store.query(Query("things", limit=100))
    assert {d.data["owner"] for d in root.documents} == {"default"}


async def test_namespaced_data_is_refused_outside_any_namespace(
    document_store: DocumentStore,
) -> None:
    store = NamespacedStore(document_store)
    with pytest.raises(NoNamespace):
        await store.get("things", "t0")
    with pytest.raises(NoNamespace):
        await store.query(Query("things"))

    async def write(tx: Transaction) -> None:
        tx.set("things", "x", {"a": 1})

    with pytest.raises(NoNamespace):
        await store.run_transaction(write)
    # The installation's own collections need none.
    await store.set(NAMESPACES, "team-a", {"state": "ACTIVE"})
    assert await store.get(NAMESPACES, "team-a") is not None


async def test_events_written_in_a_namespace_carry_it(document_store: DocumentStore) -> None:
    store = NamespacedStore(document_store)
    assert store.publishes_through_outbox  # these stores hold no bus log

    async def publish(tx: Transaction) -> None:
        tx.publish("tai-test", events_pb2.Event(event_id="evt-1", event_type="x"))

    with in_namespace("team-a"):
        await store.run_transaction(publish)
    entry = await store.get(OUTBOX, "evt-1")
    assert entry is not None
    event = events_pb2.Event()
    event.ParseFromString(base64.b64decode(entry.data["event"]))
    assert event.namespace == "team-a"


async def test_dropping_a_namespace_deletes_its_documents_and_no_one_elses(
    document_store: DocumentStore,
) -> None:
    store = NamespacedStore(document_store)
    await store.ensure_indexes(INDEXES)
    await _fill(store, "default", 2)
    await _fill(store, "team-a", 7)
    await _fill(store, "team-b", 3)
    with in_namespace("team-a"):
        await store.set("others", "o", {"x": 1})
    deleted = []
    while True:
        batch = await store.drop_namespace("team-a", batch=3)
        deleted.append(batch)
        if batch < 3:
            break
    assert sum(deleted) == 8
    assert max(deleted) <= 3
    with in_namespace("team-a"):
        assert await store.count("things") == 0
        assert await store.get("others", "o") is None
        # Usable again afterwards.
        await store.set("things", "again", {"kind": "k", "n": 0, "owner": "team-a"})
        assert await store.count("things") == 1
    for namespace, count in (("default", 2), ("team-b", 3)):
        with in_namespace(namespace):
            assert await store.count("things") == count
