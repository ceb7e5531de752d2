"""The DocumentStore port: documents in flat collections, queried by field, changed in
transactions.

Kept narrow enough for Firestore to implement it as well as SQLite:
- documents are JSON-like dicts (str, int, float, bool, None, list, dict; bytes as base64 text
  in the domain's own mapping), keyed by (collection, id);
- queries combine filters on fields, an order, a limit and a cursor — no joins, no SQL;
- a transaction is a function the store may run more than once (on contention), whose reads
  all come before its writes, and whose writes are buffered until commit (as in Firestore).

Rules every adapter keeps, so that the domain behaves the same on all of them:
- a field holds values of one type across a collection, and every document of a collection
  carries every field its queries filter or order on (Firestore leaves documents lacking an
  order field out of the results; SQLite would not);
- results are ordered by the order fields, then by document id in the direction of the last
  order field (Firestore's rule);
- `Filter.eq(field, None)` matches fields explicitly set to null.

Expiry: a document may carry a top-level integer `expires_at_ns`; backends with TTL remove it
some time after then (Firestore through a TTL policy on a timestamp twin the adapter writes and
hides, SQLite through a periodic janitor). Until it is removed it reads as usual, so readers
that care compare `expires_at_ns` with the time themselves.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from tai.v1 import events_pb2

from tai_common.core.namespace import DEFAULT_NAMESPACE, namespace_name_problem

Data = dict[str, Any]
T = TypeVar("T")

# The pseudo-field that orders or filters by the document id.
DOC_ID = "__id__"

# Room for a namespace's flat SQLite name too (`<collection>__ns__<namespace>`).
_COLLECTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,126}$")
_FIELD_RE = re.compile(r"^(__id__|[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$")
# A namespace's collections live under it (Firestore's path for a subcollection).
NAMESPACES_ROOT = "namespaces"


def check_collection(name: str) -> str:
    """Collections are code-chosen names (lowercase, digits, underscores), either at the root
    (the default namespace's, and the installation's own) or under a namespace:
    `namespaces/<namespace>/<collection>` (`namespaced_collection`)."""
    namespace, collection = split_collection(name)
    if not _COLLECTION_RE.match(collection) or (
        namespace is not None and namespace_name_problem(namespace) is not None
    ):
        raise ValueError(f"invalid collection name {name!r}")
    return name


def namespaced_collection(namespace: str, collection: str) -> str:
    """Where `collection` of `namespace` lives. The default namespace keeps the root
    collections, so an installation from before namespaces holds its data where it was."""
    if namespace == DEFAULT_NAMESPACE:
        return collection
    return f"{NAMESPACES_ROOT}/{namespace}/{collection}"


def split_collection(name: str) -> tuple[str | None, str]:
    """(namespace, collection) of a collection name; namespace None for a root collection."""
    if not name.startswith(NAMESPACES_ROOT + "/"):
        return None, name
    parts = name.split("/")
    if len(parts) != 3:
        raise ValueError(f"invalid collection name {name!r}")
    return parts[1], parts[2]


def check_field(name: str) -> str:
    """Field paths are dotted identifiers (`action.target_service`) or DOC_ID."""
    if not _FIELD_RE.match(name):
        raise ValueError(f"invalid field path {name!r}")
    return name


class Op(StrEnum):
    EQ = "=="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"


@dataclass(frozen=True)
class Filter:
    """`field op value`; with `Op.IN`, value is a list of at most 30 values (Firestore's limit)."""

    field: str
    op: Op
    value: Any

    def __post_init__(self) -> None:
        check_field(self.field)
        if self.op is Op.IN and (
            not isinstance(self.value, list | tuple) or not 1 <= len(self.value) <= 30
        ):
            raise ValueError("an IN filter needs a list of 1 to 30 values")
        if self.op not in (Op.EQ, Op.IN) and self.value is None:
            raise ValueError("a range filter cannot compare with None")

    @staticmethod
    def eq(field_path: str, value: Any) -> Filter:
        return Filter(field_path, Op.EQ, value)

    @staticmethod
    def is_in(field_path: str, values: Sequence[Any]) -> Filter:
        return Filter(field_path, Op.IN, list(values))


@dataclass(frozen=True)
class Order:
    field: str
    descending: bool = False

    def __post_init__(self) -> None:
        check_field(self.field)


# Where a page ends: the values of the query's order fields in the last document, then its id.
Cursor = tuple[Any, ...]


@dataclass(frozen=True)
class Query:
    """A query on one collection. Results are ordered by `order_by`, then by document id."""

    collection: str
    filters: tuple[Filter, ...] = ()
    order_by: tuple[Order, ...] = ()
    limit: int | None = None
    start_after: Cursor | None = None

    def __post_init__(self) -> None:
        check_collection(self.collection)
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be positive")
        if self.start_after is not None and len(self.start_after) != len(self.order_by) + 1:
            raise ValueError("a cursor holds one value per order field, then the document id")


@dataclass(frozen=True)
class Document:
    id: str
    data: Data


@dataclass(frozen=True)
class Page:
    documents: list[Document]
    # Set when more documents follow; pass it as `Query.start_after` for the next page.
    next_cursor: Cursor | None = None


@dataclass(frozen=True)
class IndexSpec:
    """Fields a query filters or orders on together. SQLite builds an index from it; for
    Firestore the same specs are shipped in deploy/firestore/firestore.indexes.json."""

    collection: str
    fields: tuple[str, ...]
    descending: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        check_collection(self.collection)
        for name in self.fields:
            check_field(name)


def cursor_of(document: Document, order_by: Sequence[Order]) -> Cursor:
    """The cursor that resumes a query after `document`."""
    return (*(get_field(document, o.field) for o in order_by), document.id)


def get_field(document: Document, path: str) -> Any:
    """The value at a dotted field path, or None when any part is missing."""
    if path == DOC_ID:
        return document.id
    value: Any = document.data
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class Transaction(Protocol):
    """Reads (awaited) then writes (buffered until commit). Reading after writing is an error,
    as in Firestore."""

    async def get(self, collection: str, doc_id: str) -> Document | None: ...

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        """The documents that exist, in the order of `doc_ids` (one round trip). Reading by
        key locks only these documents; a query locks the whole collection on Firestore."""

    async def query(self, query: Query) -> Page: ...

    def create(self, collection: str, doc_id: str, data: Data) -> None:
        """Fails the commit with `AlreadyExists` when the document exists."""

    def set(self, collection: str, doc_id: str, data: Data) -> None:
        """Creates or replaces the document."""

    def delete(self, collection: str, doc_id: str) -> None:
        """Deletes the document; no error when it does not exist."""

    def publish(self, topic: str, event: events_pb2.Event) -> None:
        """Publishes `event` on `topic` if, and once, the transaction commits: never when it
        fails. A store that holds the event bus's log (the embedded default: one SQLite file
        for both) appends the event to the log in the commit; any other store writes an
        outbox document (`tai_common.ports.publishing`) that `OutboxRelay` publishes
        afterwards, at least once. Counts as a write (no reads after it)."""


class DocumentStore(Protocol):
    """Durable documents. Every method may raise `tai_common.core.Unavailable` when the
    backend cannot be reached."""

    @property
    def publishes_through_outbox(self) -> bool:
        """Whether `Transaction.publish` leaves outbox documents for a relay to publish (False:
        the commit itself publishes, and a relay has only other processes' leftovers to
        look for)."""

    async def get(self, collection: str, doc_id: str) -> Document | None: ...

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        """The documents that exist, in the order of `doc_ids`."""

    async def query(self, query: Query) -> Page: ...

    async def count(self, collection: str, filters: Sequence[Filter] = ()) -> int: ...

    async def create(self, collection: str, doc_id: str, data: Data) -> None:
        """Raises `AlreadyExists` when the document exists."""

    async def set(self, collection: str, doc_id: str, data: Data) -> None: ...

    async def delete(self, collection: str, doc_id: str) -> None: ...

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, max_attempts: int = 10
    ) -> T:
        """Runs `fn` in a transaction and commits its writes atomically. On contention the
        store rolls back and runs `fn` again (up to `max_attempts`, then `Aborted`), so `fn`
        must have no side effects outside the transaction. An exception from `fn` rolls back
        and propagates."""

    async def ensure_indexes(self, specs: Sequence[IndexSpec]) -> None:
        """Declares the indexes the caller's queries need."""

    async def drop_namespace(self, namespace: str, *, batch: int = 500) -> int:
        """Deletes up to `batch` documents of the collections under `namespace` and returns
        how many it deleted (0: nothing is left). Callers repeat it, so that a large namespace
        never holds other writers up for long."""

    async def close(self) -> None: ...
