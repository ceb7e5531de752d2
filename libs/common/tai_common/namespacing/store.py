"""`NamespacedStore`: the data layer's tenancy rule. Every collection but the installation's own
(`INSTALLATION_COLLECTIONS`) is read and written under the current namespace
(`tai_common.core.namespace`), so a handler cannot reach another namespace's documents however
it builds its queries, and code running outside any namespace is refused (`NoNamespace`)
instead of falling back to one."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Final, TypeVar

from tai.v1 import events_pb2

from tai_common.core.namespace import DEFAULT_NAMESPACE, current_namespace, namespace_or_none
from tai_common.ports import (
    NAMESPACES_ROOT,
    OUTBOX,
    Data,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    Page,
    Query,
    Transaction,
    namespaced_collection,
)

T = TypeVar("T")

# The registry of namespaces: one document per namespace, at the root. On Firestore each is
# also the parent of its namespace's collections (`namespaces/<ns>/<collection>`).
NAMESPACES: Final = NAMESPACES_ROOT
# Collections of the installation rather than of a namespace: the registry, and the outbox the
# relay drains for every namespace (its entries carry their namespace in the event).
INSTALLATION_COLLECTIONS: Final = frozenset({NAMESPACES, OUTBOX})


@functools.lru_cache(maxsize=4096)
def _physical(namespace: str, collection: str) -> str:
    if collection in INSTALLATION_COLLECTIONS:
        return collection
    return namespaced_collection(namespace, collection)


class _NamespacedTransaction:
    """A transaction whose collections are the current namespace's."""

    def __init__(self, inner: Transaction, namespace: str | None) -> None:
        """`namespace` None: a transaction outside any namespace, which may touch only the
        installation's collections (the outbox relay's)."""
        self._inner = inner
        self._namespace = namespace

    def _where(self, collection: str) -> str:
        if collection in INSTALLATION_COLLECTIONS:
            return collection
        return _physical(self._namespace or current_namespace(), collection)

    async def get(self, collection: str, doc_id: str) -> Document | None:
        return await self._inner.get(self._where(collection), doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        return await self._inner.get_many(self._where(collection), doc_ids)

    async def query(self, query: Query) -> Page:
        return await self._inner.query(replace(query, collection=self._where(query.collection)))

    def create(self, collection: str, doc_id: str, data: Data) -> None:
        self._inner.create(self._where(collection), doc_id, data)

    def set(self, collection: str, doc_id: str, data: Data) -> None:
        self._inner.set(self._where(collection), doc_id, data)

    def delete(self, collection: str, doc_id: str) -> None:
        self._inner.delete(self._where(collection), doc_id)

    def publish(self, topic: str, event: events_pb2.Event) -> None:
        # The event belongs to the namespace it was written in, whoever built it.
        namespace = self._namespace or DEFAULT_NAMESPACE
        if event.namespace != namespace:
            event = _with_namespace(event, namespace)
        self._inner.publish(topic, event)


def _with_namespace(event: events_pb2.Event, namespace: str) -> events_pb2.Event:
    stamped = events_pb2.Event()
    stamped.CopyFrom(event)
    stamped.namespace = namespace
    return stamped


class NamespacedStore:
    """A `DocumentStore` that keeps each namespace's documents under it (see the module)."""

    def __init__(self, inner: DocumentStore) -> None:
        self.inner = inner
        self._index_specs: list[IndexSpec] = []
        # Namespaces whose tables and indexes this process has declared (SQLite builds them
        # per namespace; Firestore's indexes serve every namespace already).
        self._indexed: set[str] = {DEFAULT_NAMESPACE}

    @property
    def publishes_through_outbox(self) -> bool:
        return self.inner.publishes_through_outbox

    async def _where(self, collection: str) -> str:
        if collection in INSTALLATION_COLLECTIONS:
            return collection
        namespace = current_namespace()
        if namespace not in self._indexed:
            await self._index(namespace)
        return _physical(namespace, collection)

    async def _index(self, namespace: str) -> None:
        await self.inner.ensure_indexes(
            [replace(s, collection=_physical(namespace, s.collection)) for s in self._index_specs]
        )
        self._indexed.add(namespace)

    async def get(self, collection: str, doc_id: str) -> Document | None:
        return await self.inner.get(await self._where(collection), doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        return await self.inner.get_many(await self._where(collection), doc_ids)

    async def query(self, query: Query) -> Page:
        where = await self._where(query.collection)
        return await self.inner.query(replace(query, collection=where))

    async def count(self, collection: str, filters: Sequence[Filter] = ()) -> int:
        return await self.inner.count(await self._where(collection), filters)

    async def create(self, collection: str, doc_id: str, data: Data) -> None:
        await self.inner.create(await self._where(collection), doc_id, data)

    async def set(self, collection: str, doc_id: str, data: Data) -> None:
        await self.inner.set(await self._where(collection), doc_id, data)

    async def delete(self, collection: str, doc_id: str) -> None:
        await self.inner.delete(await self._where(collection), doc_id)

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, max_attempts: int = 10
    ) -> T:
        namespace = namespace_or_none()
        if namespace is not None and namespace not in self._indexed:
            await self._index(namespace)

        async def scoped_fn(tx: Transaction) -> T:
            return await fn(_NamespacedTransaction(tx, namespace))

        return await self.inner.run_transaction(scoped_fn, max_attempts=max_attempts)

    async def ensure_indexes(self, specs: Sequence[IndexSpec]) -> None:
        """Declares the indexes for the default namespace now, and for each other namespace
        the first time this process works in it."""
        self._index_specs.extend(specs)
        self._indexed = {DEFAULT_NAMESPACE}
        await self.inner.ensure_indexes(specs)

    async def drop_namespace(self, namespace: str, *, batch: int = 500) -> int:
        self._indexed.discard(namespace)
        return await self.inner.drop_namespace(namespace, batch=batch)

    async def close(self) -> None:
        await self.inner.close()
