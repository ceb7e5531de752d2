"""A DocumentStore decorator that puts each store operation in a span (`store.<op>`), with the
collection as an attribute, so a trace shows where a request spent its time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from opentelemetry import trace

from tai_common.core import tracer
from tai_common.ports import (
    Data,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    Page,
    Query,
    Transaction,
)

T = TypeVar("T")


def _span(operation: str, collection: str = "") -> trace.Span:
    return tracer().start_span(
        f"store.{operation}",
        kind=trace.SpanKind.CLIENT,
        attributes={"db.operation.name": operation, "db.collection.name": collection},
    )


class TracedStore:
    def __init__(self, inner: DocumentStore) -> None:
        self.inner = inner

    @property
    def publishes_through_outbox(self) -> bool:
        return self.inner.publishes_through_outbox

    async def get(self, collection: str, doc_id: str) -> Document | None:
        with trace.use_span(_span("get", collection), end_on_exit=True):
            return await self.inner.get(collection, doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        with trace.use_span(_span("get_many", collection), end_on_exit=True):
            return await self.inner.get_many(collection, doc_ids)

    async def query(self, query: Query) -> Page:
        with trace.use_span(_span("query", query.collection), end_on_exit=True):
            return await self.inner.query(query)

    async def count(self, collection: str, filters: Sequence[Filter] = ()) -> int:
        with trace.use_span(_span("count", collection), end_on_exit=True):
            return await self.inner.count(collection, filters)

    async def create(self, collection: str, doc_id: str, data: Data) -> None:
        with trace.use_span(_span("create", collection), end_on_exit=True):
            await self.inner.create(collection, doc_id, data)

    async def set(self, collection: str, doc_id: str, data: Data) -> None:
        with trace.use_span(_span("set", collection), end_on_exit=True):
            await self.inner.set(collection, doc_id, data)

    async def delete(self, collection: str, doc_id: str) -> None:
        with trace.use_span(_span("delete", collection), end_on_exit=True):
            await self.inner.delete(collection, doc_id)

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, max_attempts: int = 10
    ) -> T:
        with trace.use_span(_span("transaction"), end_on_exit=True):
            return await self.inner.run_transaction(fn, max_attempts=max_attempts)

    async def ensure_indexes(self, specs: Sequence[IndexSpec]) -> None:
        await self.inner.ensure_indexes(specs)

    async def drop_namespace(self, namespace: str, *, batch: int = 500) -> int:
        with trace.use_span(_span("drop_namespace"), end_on_exit=True):
            return await self.inner.drop_namespace(namespace, batch=batch)

    async def close(self) -> None:
        await self.inner.close()
