"""The DocumentStore port on Google Cloud Firestore (Native mode), through the async client.

Layout: each collection is a top-level Firestore collection of the same name (a namespace's,
`namespaces/<namespace>/<collection>`, a subcollection of that name: the same collection id, so
the same indexes serve every namespace), each document a
Firestore document with the same id, and the data its fields. `FIRESTORE_EMULATOR_HOST`, when
set, points the client at an emulator (the client library reads it).

Rules a caller can see:
- Results are ordered by the query's order fields, then by document id in the direction of the
  last order field (Firestore's own `__name__` rule). The adapter spells the whole order out,
  `__name__` included, so a cursor — the order values, then the id — resumes exactly after its
  document and paging returns every document once, however many values tie.
- Firestore also orders by every range-filtered field (`<`, `<=`, `>`, `>=`) before the id. A
  query whose range-filtered fields are all among its order fields (what every TAI query does:
  the range field is the first order field) keeps the port's order. Otherwise an unlimited
  query is re-sorted here into the port's order; a query with a limit or a cursor raises
  ValueError, since its pages could not follow the port's order.
- `Filter.eq(f, None)` matches null only (never a missing field), and an IN filter holding
  None becomes `f IN (…) OR f == null`, as Firestore's IN never matches null.
- Ints are int64 (larger ones raise ValueError); an array directly inside an array cannot be
  stored (ValueError); document ids may not contain "/", be "." or "..", or look like
  `__x__` (writes raise ValueError; reads of such an id find nothing).
- Map keys may hold any text. Keys Firestore reserves (empty, or `__x__`) are stored with a "~"
  prefix, as is any key already starting with "~", and restored on read; filters and orders
  name code-chosen fields, which never need it.
- TTL: a document whose top-level `expires_at_ns` is an int is written with an extra timestamp
  field `expires_at` (the same instant), the field a Firestore TTL policy can act on
  (deploy/firestore/firestore.indexes.json declares those policies); reads strip it, so the
  document round-trips unchanged. Such a document may not carry its own `expires_at`.

Transactions: reads go through the Firestore transaction (documents and queries); writes are
buffered by it and sent in one atomic commit. On contention (ABORTED — in the emulator also a
lock wait that timed out — or a transaction the server no longer knows) the transaction is
rolled back and `fn` rerun after a jittered backoff, with the first attempt's id as
`retry_transaction` so Firestore keeps its place in line.

A `create` of a document the same transaction already created or set fails with AlreadyExists
before anything is sent (Firestore would refuse the commit as an invalid request).

Errors: `_translated` maps google.api_core errors to TAI's (see its docstring). The only other
place that catches backend errors is `_rollback`, which logs a failed rollback rather than hide
the error that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import google.auth.exceptions
from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import AsyncClient
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_query import AsyncQuery
from google.cloud.firestore_v1.async_transaction import AsyncTransaction
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import BaseFilter, FieldFilter, Or
from google.cloud.firestore_v1.field_path import FieldPath
from tai.v1 import events_pb2

from tai_common.core import Aborted, AlreadyExists, Unavailable
from tai_common.ports import (
    DOC_ID,
    NAMESPACES_ROOT,
    OUTBOX,
    Data,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    Op,
    Order,
    Page,
    Query,
    Transaction,
    check_collection,
    cursor_of,
    namespaced_collection,
    outbox_document,
)

__all__ = ["FirestoreStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The field a document's expiry is stored under, and the timestamp twin a TTL policy reads.
EXPIRES_AT_NS: Final = "expires_at_ns"
EXPIRES_AT: Final = "expires_at"

# Jittered exponential backoff between transaction attempts. Firestore itself queues a retried
# transaction (retry_transaction), so this mostly spreads out clients that collided; the
# emulator's lock waits (~2 s) dominate there anyway.
_BACKOFF_BASE_S: Final = 0.02
_BACKOFF_CAP_S: Final = 1.0
# How long `open` waits for the backend to answer its first read.
_DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0

_RANGE_OPS: Final = frozenset({Op.LT, Op.LE, Op.GT, Op.GE})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NAME: Final = FieldPath.document_id()  # "__name__"

# The document an ALREADY_EXISTS names: ".../documents/<collection>/<id>" from Firestore,
# "path=/<collection>/<id>}" from the emulator. Only trusted when it names a create of the
# transaction (ids may hold characters that cut the match short).
_CONFLICT_PATH = re.compile(r"(?:documents|path=)/([a-z][a-z0-9_]{0,62})/([^/}\s]+)")

# The stores whose transaction the current task is running: a single-call write or a nested
# transaction from inside `fn` would bypass the transaction (and, on the emulator, wait for its
# own locks), so it is refused, as the SQLite adapter does.
_ACTIVE: ContextVar[tuple[FirestoreStore, ...]] = ContextVar("tai_firestore_active", default=())


class _Contention(Aborted):
    """The transaction lost to another one (or the server dropped it); `run_transaction`
    reruns it. Outside a transaction the caller sees an `Aborted`."""


# --- error mapping ---------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(document: str | None = None) -> Iterator[None]:
    """Maps Firestore client errors to the most specific TAI error.

    - ABORTED, and a transaction the server no longer knows → `_Contention` (retried by
      `run_transaction`, an `Aborted` elsewhere);
    - ALREADY_EXISTS / other conflicts → `AlreadyExists` naming `document` (or, when None, the
      document the server's message names — "" when it names none);
    - INVALID_ARGUMENT → ValueError: the request can never succeed (a caller's bug, as SQLite's
      ValueError for unstorable data), so it must not look retryable;
    - UNAVAILABLE, DEADLINE_EXCEEDED, retries exhausted, credentials, anything else →
      `Unavailable` with the reason.

    Args:
        document: "<collection>/<id>" of the one document a create names, if any.
    """
    try:
        yield
    except gexc.Aborted as error:  # a Conflict subclass: before Conflict
        raise _Contention(f"firestore: {error.message}") from error
    except gexc.Conflict as error:  # AlreadyExists and other 409s
        resource = document if document is not None else _named_document(str(error.message))
        raise AlreadyExists("document", resource) from error
    except gexc.FailedPrecondition as error:
        if _is_lost_transaction(error):
            raise _Contention(f"firestore: {error.message}") from error
        raise Unavailable(f"firestore: failed precondition: {error.message}") from error
    except gexc.InvalidArgument as error:
        if _is_lost_transaction(error):
            raise _Contention(f"firestore: {error.message}") from error
        raise ValueError(f"firestore rejected the request: {error.message}") from error
    except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as error:
        raise Unavailable(f"firestore: {error.message}") from error
    except gexc.GoogleAPICallError as error:
        raise Unavailable(f"firestore: {error.code}: {error.message}") from error
    except gexc.RetryError as error:
        raise Unavailable(f"firestore: gave up retrying: {error.cause}") from error
    except google.auth.exceptions.GoogleAuthError as error:
        raise Unavailable(f"firestore: credentials: {error}") from error


def _is_lost_transaction(error: gexc.GoogleAPICallError) -> bool:
    # "The referenced transaction has expired or is no longer valid" (production) and the
    # emulator's failed-precondition variants: the transaction is gone, rerunning it is right.
    return "transaction" in str(error.message).lower()


def _named_document(message: str) -> str:
    match = _CONFLICT_PATH.search(message)
    return f"{match[1]}/{match[2]}" if match else ""


# --- data mapping ----------------------------------------------------------------------------


def _escape_key(key: str) -> str:
    """The stored form of a map key: Firestore rejects "" and reserves `__x__`; a "~" prefix
    moves them out of the way, and keys already starting with "~" get one more, so the
    mapping is reversible."""
    if not key or key[0] == "~" or (len(key) >= 4 and key[:2] == "__" and key[-2:] == "__"):
        return "~" + key
    return key


def _unescape_key(key: str) -> str:
    return key[1:] if key[:1] == "~" else key


def _encode(value: Any, in_array: bool = False) -> Any:
    """A copy of `value` in stored form (escaped map keys; tuples as lists)."""
    if isinstance(value, dict):
        return {_escape_key(str(k)): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if in_array:
            raise ValueError("Firestore cannot store an array directly inside an array")
        return [_encode(v, True) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return {_unescape_key(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _expiry_ns(data: Data) -> int | None:
    value = data.get(EXPIRES_AT_NS)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _to_fields(data: Data) -> dict[str, Any]:
    """The Firestore fields of a document: escaped keys, plus the TTL timestamp."""
    fields: dict[str, Any] = _encode(data)
    expires_ns = _expiry_ns(data)
    if expires_ns is not None:
        if EXPIRES_AT in data:
            raise ValueError(
                f"{EXPIRES_AT!r} is reserved in a document carrying {EXPIRES_AT_NS!r} "
                "(the Firestore adapter stores the TTL timestamp there)"
            )
        # Microseconds: what a Python datetime holds; TTL needs no finer grain.
        fields[EXPIRES_AT] = _EPOCH + timedelta(microseconds=expires_ns // 1000)
    return fields


def _from_fields(fields: dict[str, Any]) -> Data:
    data: Data = _decode(fields)
    if _expiry_ns(data) is not None and isinstance(data.get(EXPIRES_AT), datetime):
        del data[EXPIRES_AT]
    return data


def _document(snapshot: DocumentSnapshot[Any]) -> Document:
    return Document(snapshot.id, _from_fields(snapshot.to_dict() or {}))


def _valid_id(doc_id: str) -> bool:
    """Whether Firestore can hold a document with this id (one path segment, not reserved)."""
    return (
        bool(doc_id)
        and "/" not in doc_id
        and doc_id not in (".", "..")
        and not (len(doc_id) >= 4 and doc_id[:2] == "__" and doc_id[-2:] == "__")
    )


def _writable_id(doc_id: str) -> str:
    if not _valid_id(doc_id):
        raise ValueError(f"Firestore cannot store a document with id {doc_id!r}")
    return doc_id


@functools.lru_cache(maxsize=1024)
def _field_path(field: str) -> str:
    """The Firestore path of a port field path (quoted where a part needs it)."""
    if field == DOC_ID:
        return _NAME
    return FieldPath(*(_escape_key(part) for part in field.split("."))).to_api_repr()


def _sort_key(value: Any) -> tuple[Any, ...]:
    """Firestore's order of values (null < bool < NaN < numbers < strings < bytes < arrays <
    maps), as a Python sort key; used only to re-sort an unlimited query."""
    if value is None:
        return (0,)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, 0, 0) if isinstance(value, float) and math.isnan(value) else (2, 1, value)
    if isinstance(value, str):
        # Python compares code points, Firestore UTF-8 bytes: the same order.
        return (3, value)
    if isinstance(value, bytes):
        return (4, value)
    if isinstance(value, list):
        return (8, tuple(_sort_key(v) for v in value))
    if isinstance(value, dict):
        return (9, tuple((k, _sort_key(v)) for k, v in sorted(value.items())))
    return (5, str(value))


def _field_value(document: Document, path: str) -> Any:
    value: Any = document.data
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _port_order(documents: list[Document], key: Sequence[tuple[str, bool]]) -> list[Document]:
    """`documents` in the port's order: the key's fields, each in its direction (stable sorts,
    least significant first)."""
    ordered = list(documents)
    for field, descending in reversed(key):
        if field == DOC_ID:
            ordered.sort(key=lambda d: d.id, reverse=descending)
        else:
            ordered.sort(key=lambda d: _sort_key(_field_value(d, field)), reverse=descending)
    return ordered


def _direction(descending: bool) -> str:
    return AsyncQuery.DESCENDING if descending else AsyncQuery.ASCENDING


def _key(order_by: Sequence[Order]) -> list[tuple[str, bool]]:
    """The fields results are sorted by: the order fields, then the id in the direction of the
    last order field. An explicit DOC_ID order ends the key (ids are unique)."""
    key: list[tuple[str, bool]] = []
    for order in order_by:
        key.append((order.field, order.descending))
        if order.field == DOC_ID:
            return key
    key.append((DOC_ID, order_by[-1].descending if order_by else False))
    return key


# --- the store -------------------------------------------------------------------------------

_WriteKind = Literal["create", "set", "delete"]


@dataclass(frozen=True, slots=True)
class _Write:
    kind: _WriteKind
    collection: str
    doc_id: str


class _FirestoreTransaction:
    """A `Transaction` on one attempt of a Firestore transaction."""

    def __init__(self, store: FirestoreStore, tx: AsyncTransaction) -> None:
        self._store = store
        self._tx = tx
        self.writes: list[_Write] = []
        self.finished = False
        # Documents this transaction has created or set (and not deleted since). A create of
        # one of them must fail with AlreadyExists; Firestore would reject the whole commit as
        # an invalid request instead, so the adapter detects it before committing.
        self._written: set[tuple[str, str]] = set()
        self.recreates = False

    def _check_read(self) -> None:
        self._check_open()
        if self.writes:
            raise RuntimeError(
                "a transaction must do all its reads before its first write (as in Firestore)"
            )

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("the transaction has already finished")

    async def get(self, collection: str, doc_id: str) -> Document | None:
        self._check_read()
        return await self._store._get(collection, doc_id, self._tx)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        self._check_read()
        return await self._store._get_many(collection, doc_ids, self._tx)

    async def query(self, query: Query) -> Page:
        self._check_read()
        return await self._store._query(query, self._tx)

    def create(self, collection: str, doc_id: str, data: Data) -> None:
        self._check_open()
        self._tx.create(self._store._ref(collection, _writable_id(doc_id)), _to_fields(data))
        self.writes.append(_Write("create", collection, doc_id))
        if (collection, doc_id) in self._written:
            self.recreates = True
        self._written.add((collection, doc_id))

    def set(self, collection: str, doc_id: str, data: Data) -> None:
        self._check_open()
        self._tx.set(self._store._ref(collection, _writable_id(doc_id)), _to_fields(data))
        self.writes.append(_Write("set", collection, doc_id))
        self._written.add((collection, doc_id))

    def delete(self, collection: str, doc_id: str) -> None:
        self._check_open()
        if not _valid_id(doc_id):
            check_collection(collection)
            return  # such a document cannot exist
        self._tx.delete(self._store._ref(collection, doc_id))
        self.writes.append(_Write("delete", collection, doc_id))
        self._written.discard((collection, doc_id))

    def publish(self, topic: str, event: events_pb2.Event) -> None:
        """Writes an outbox document in the transaction; the relay publishes it."""
        self.create(OUTBOX, event.event_id, outbox_document(topic, event))


@dataclass
class _Attempts:
    """State carried across the attempts of one `run_transaction`."""

    # The first attempt's transaction id, sent with every retry.
    retry_id: bytes | None = None


class FirestoreStore:
    """`DocumentStore` on a Firestore database. Open it with `FirestoreStore.open`."""

    def __init__(self, client: AsyncClient, rng: random.Random) -> None:
        """Takes a client; `open` makes one.

        Args:
            client: the Firestore client every call goes through; `close` closes it.
            rng: the source of backoff jitter.
        """
        self._client: AsyncClient | None = client
        self._rng = rng

    @classmethod
    async def open(
        cls,
        project: str,
        *,
        database: str = "(default)",
        connect_timeout_s: float = _DEFAULT_CONNECT_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> FirestoreStore:
        """Connects to `database` of `project` and checks that it answers.

        Credentials are Google's application default credentials; with
        `FIRESTORE_EMULATOR_HOST` set, the emulator at that address (no credentials).

        Args:
            project: the Google Cloud project id.
            database: the Firestore database id.
            connect_timeout_s: how long the first read may take before `open` gives up.
            rng: the source of backoff jitter; a fresh `random.Random()` by default.

        Returns:
            The open store. Close it with `close()`.

        Raises:
            Unavailable: no credentials, or the database did not answer in time.
        """
        with _translated():
            client = AsyncClient(project=project, database=database)
        store = cls(client, rng or random.Random())
        try:
            # Any read proves the database is reachable; a missing document is the cheapest.
            async with asyncio.timeout(connect_timeout_s):
                await store.get("tai_probe", "probe")
        except TimeoutError as error:
            await store.close()
            raise Unavailable(
                f"firestore: project {project!r} database {database!r} did not answer "
                f"within {connect_timeout_s}s"
            ) from error
        except BaseException:
            await store.close()
            raise
        return store

    # --- references ---

    def _live_client(self) -> AsyncClient:
        if self._client is None:
            raise Unavailable("firestore: the store is closed")
        return self._client

    def _collection(self, collection: str) -> AsyncCollectionReference:
        return self._live_client().collection(check_collection(collection))

    def _ref(self, collection: str, doc_id: str) -> AsyncDocumentReference:
        return self._collection(collection).document(doc_id)

    @property
    def publishes_through_outbox(self) -> bool:
        """Always: Firestore cannot append to a bus in its transactions."""
        return True

    # --- reads ---

    async def get(self, collection: str, doc_id: str) -> Document | None:
        """The document, or None when it does not exist."""
        return await self._get(collection, doc_id, None)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        """The documents that exist, in the order of `doc_ids` (one batched read)."""
        return await self._get_many(collection, doc_ids, None)

    async def _get_many(
        self, collection: str, doc_ids: Sequence[str], tx: AsyncTransaction | None
    ) -> list[Document]:
        wanted = list(dict.fromkeys(i for i in doc_ids if _valid_id(i)))
        if not wanted:
            check_collection(collection)
            return []
        refs = [self._ref(collection, i) for i in wanted]
        found: dict[str, dict[str, Any]] = {}
        with _translated():
            async for snapshot in self._live_client().get_all(refs, transaction=tx):
                if snapshot.exists:
                    found[snapshot.id] = snapshot.to_dict() or {}
        # Decoded per occurrence: a repeated id yields independent documents.
        return [Document(i, _from_fields(found[i])) for i in doc_ids if i in found]

    async def query(self, query: Query) -> Page:
        """One page of the documents matching `query`; see the module docstring for order."""
        return await self._query(query, None)

    async def count(self, collection: str, filters: Sequence[Filter] = ()) -> int:
        """How many documents of `collection` match every filter (an aggregation query)."""
        built = self._filtered(collection, filters)
        if built is None:
            return 0
        # Typed by the library as returning the class; it returns an AsyncAggregationQuery.
        aggregation = cast(Any, built.count(alias="n"))
        with _translated():
            results = await aggregation.get()
        return int(results[0][0].value) if results and results[0] else 0

    async def _get(
        self, collection: str, doc_id: str, tx: AsyncTransaction | None
    ) -> Document | None:
        if not _valid_id(doc_id):
            check_collection(collection)
            return None
        ref = self._ref(collection, doc_id)
        with _translated():
            # Drained, not left suspended after the first item: the stream then ends cleanly.
            snapshots = [s async for s in self._live_client().get_all([ref], transaction=tx)]
        return _document(snapshots[0]) if snapshots and snapshots[0].exists else None

    async def _query(self, query: Query, tx: AsyncTransaction | None) -> Page:
        filtered = self._filtered(query.collection, query.filters)
        if filtered is None:
            return Page([])
        key = _key(query.order_by)
        # Firestore orders by every range-filtered field before the id: name them in the order
        # (so the implicit order never differs from the one sent), right before the id.
        ordered = {field for field, _ in key}
        unordered = sorted(
            {f.field for f in query.filters if f.op in _RANGE_OPS and f.field != DOC_ID} - ordered
        )
        if unordered and (query.limit is not None or query.start_after is not None):
            raise ValueError(
                f"Firestore orders by the range-filtered field(s) {unordered} before the document "
                "id; to page this query, add them to its order (first, as TAI's queries do)"
            )
        sent_key = [*key[:-1], *((f, False) for f in unordered), key[-1]]
        first, first_descending = sent_key[0]
        built = filtered.order_by(_field_path(first), direction=_direction(first_descending))
        for field, descending in sent_key[1:]:
            built = built.order_by(_field_path(field), direction=_direction(descending))
        if query.start_after is not None:
            built = built.start_after(self._cursor_values(query, key))
        if query.limit is not None:
            # One document more than asked tells whether another page follows.
            built = built.limit(query.limit + 1)
        with _translated():
            documents = [_document(s) async for s in built.stream(transaction=tx)]
        if unordered:
            documents = _port_order(documents, key)
        more = query.limit is not None and len(documents) > query.limit
        if more:
            documents = documents[: query.limit]
            return Page(documents, cursor_of(documents[-1], query.order_by))
        return Page(documents)

    @staticmethod
    def _cursor_values(query: Query, key: Sequence[tuple[str, bool]]) -> list[Any]:
        """The cursor as Firestore start_after values, one per field of `key`.

        The key is a prefix of the cursor's fields (it ends at the first DOC_ID order, or at
        the implicit id), and a cursor's value for DOC_ID is the id itself.
        """
        assert query.start_after is not None
        values: list[Any] = []
        for index, (field, _) in enumerate(key):
            value = query.start_after[index]
            if field == DOC_ID:
                if not isinstance(value, str) or not _valid_id(value):
                    raise ValueError(f"invalid document id {value!r} in the cursor")
                # The client turns an id at the __name__ position into a document reference.
                values.append(value)
            else:
                values.append(_encode(value))
        return values

    def _filtered(
        self, collection: str, filters: Sequence[Filter]
    ) -> AsyncQuery | AsyncCollectionReference | None:
        """The collection with `filters` applied, or None when no document can match."""
        coll = self._collection(collection)
        built: AsyncQuery | AsyncCollectionReference = coll
        for flt in filters:
            native = self._native_filter(coll, flt)
            if native is None:
                return None
            built = built.where(filter=native)
        return built

    @staticmethod
    def _native_filter(coll: AsyncCollectionReference, flt: Filter) -> BaseFilter | None:
        """The Firestore filter for `flt`; None when it can match no document."""
        if flt.field == DOC_ID:
            # Ids compare as document references; an id Firestore cannot hold matches nothing.
            if flt.op is Op.IN:
                refs = [coll.document(v) for v in flt.value if isinstance(v, str) and _valid_id(v)]
                return FieldFilter(_NAME, "in", refs) if refs else None
            if not isinstance(flt.value, str) or not _valid_id(flt.value):
                if flt.op is Op.EQ:
                    return None
                raise ValueError(f"a range filter on the id needs a valid id, not {flt.value!r}")
            return FieldFilter(_NAME, flt.op.value, coll.document(flt.value))
        path = _field_path(flt.field)
        if flt.op is Op.IN:
            present = [_encode(v) for v in flt.value if v is not None]
            if len(present) == len(flt.value):
                return FieldFilter(path, "in", present)
            # Firestore's IN never matches null: the port's IN with None is IN … OR == null.
            if not present:
                return FieldFilter(path, "==", None)
            return Or([FieldFilter(path, "in", present), FieldFilter(path, "==", None)])
        return FieldFilter(path, flt.op.value, _encode(flt.value))

    # --- single-call writes ---

    async def create(self, collection: str, doc_id: str, data: Data) -> None:
        """Creates the document.

        Raises:
            AlreadyExists: the document exists (`resource_id` is "<collection>/<id>").
        """
        self._check_not_in_transaction("FirestoreStore.create")
        ref = self._ref(collection, _writable_id(doc_id))
        fields = _to_fields(data)
        with _translated(document=f"{collection}/{doc_id}"):
            await ref.create(fields)

    async def set(self, collection: str, doc_id: str, data: Data) -> None:
        """Creates or replaces the document."""
        self._check_not_in_transaction("FirestoreStore.set")
        ref = self._ref(collection, _writable_id(doc_id))
        fields = _to_fields(data)
        with _translated():
            await ref.set(fields)

    async def delete(self, collection: str, doc_id: str) -> None:
        """Deletes the document; no error when it does not exist."""
        self._check_not_in_transaction("FirestoreStore.delete")
        if not _valid_id(doc_id):
            check_collection(collection)
            return  # such a document cannot exist
        ref = self._ref(collection, doc_id)
        with _translated():
            await ref.delete()

    # --- transactions ---

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, max_attempts: int = 10
    ) -> T:
        """Runs `fn` in a Firestore transaction and commits its buffered writes atomically.

        `fn` may run more than once: when the transaction loses to another (ABORTED), it is
        rolled back and `fn` rerun after a jittered exponential backoff.

        Args:
            fn: does the reads, then buffers the writes; must have no other side effects.
            max_attempts: attempts before giving up with `Aborted`.

        Returns:
            What `fn` returned, once its writes are committed.

        Raises:
            Aborted: every attempt lost to another transaction.
            AlreadyExists: a buffered `create` named an existing document; nothing was written.
            RuntimeError: `fn` read after writing, or called this store's transaction or
                single-call writes from inside a transaction.
            Unavailable: Firestore could not be reached.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._check_not_in_transaction("FirestoreStore.run_transaction")
        attempts = _Attempts()
        for attempt in range(1, max_attempts + 1):
            try:
                return await self._attempt(fn, attempts)
            except _Contention as error:
                if attempt == max_attempts:
                    raise Aborted(
                        f"transaction gave up after {max_attempts} attempts: {error.message}"
                    ) from error
                log.debug("firestore transaction attempt %d lost: %s", attempt, error.message)
                ceiling = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
                await asyncio.sleep(ceiling / 2 + self._rng.uniform(0, ceiling / 2))
        raise AssertionError("unreachable")

    async def _attempt(self, fn: Callable[[Transaction], Awaitable[T]], attempts: _Attempts) -> T:
        tx = self._live_client().transaction()
        view = _FirestoreTransaction(self, tx)
        token = _ACTIVE.set((*_ACTIVE.get(), self))
        committing = False
        try:
            # The transaction's private protocol (begin, commit, rollback) is the one the
            # library's own `async_transactional` drives; it is used directly so that reads
            # that lose a lock are retried too, and the retry policy is ours.
            with _translated():
                await tx._begin(retry_id=attempts.retry_id)
            if attempts.retry_id is None:
                attempts.retry_id = tx._id
            result = await fn(view)
            view.finished = True
            if view.recreates:
                await _rollback(tx)
                raise await self._conflict(view.writes, AlreadyExists("document", ""))
            committing = True
            try:
                with _translated():
                    await tx._commit()
            except AlreadyExists as error:
                conflict = await self._conflict(view.writes, error)
                if conflict is error:
                    raise
                raise conflict from error
        except BaseException:
            if committing:
                # A failed commit ends the transaction on the server; nothing to roll back.
                tx._clean_up()
            else:
                await _rollback(tx)
            raise
        finally:
            view.finished = True
            _ACTIVE.reset(token)
        return result

    async def _conflict(self, writes: list[_Write], error: AlreadyExists) -> AlreadyExists:
        """The `AlreadyExists` for the first buffered create whose document existed.

        The server's message names it; when it cannot be read from the message, the creates
        are replayed against what exists now (the transaction wrote nothing).
        """
        creates = [w for w in writes if w.kind == "create"]
        if any(f"{w.collection}/{w.doc_id}" == error.resource_id for w in creates):
            return error
        existing: set[tuple[str, str]] = set()
        for collection in sorted({w.collection for w in creates}):
            ids = [w.doc_id for w in writes if w.collection == collection]
            for doc in await self.get_many(collection, ids):
                existing.add((collection, doc.id))
        for write in writes:
            key = (write.collection, write.doc_id)
            if write.kind == "create" and key in existing:
                return AlreadyExists("document", f"{write.collection}/{write.doc_id}")
            if write.kind == "delete":
                existing.discard(key)
            else:
                existing.add(key)
        return error

    def _check_not_in_transaction(self, what: str) -> None:
        if self in _ACTIVE.get():
            raise RuntimeError(
                f"{what} called inside this store's transaction; use the transaction object"
            )

    # --- schema and lifecycle ---

    async def ensure_indexes(self, specs: Sequence[IndexSpec]) -> None:
        """Nothing at run time: Firestore indexes (and TTL policies) are deployed from
        deploy/firestore/firestore.indexes.json, generated from the same specs by
        scripts/firestore_indexes.py."""
        self._live_client()

    async def drop_namespace(self, namespace: str, *, batch: int = 500) -> int:
        """Deletes up to `batch` documents of the collections under `namespaces/<namespace>`
        (the subcollections Firestore lists for that document, whether it exists or not)."""
        if batch < 1:
            raise ValueError("batch must be positive")
        self._check_not_in_transaction("FirestoreStore.drop_namespace")
        check_collection(namespaced_collection(namespace, "any"))
        client = self._live_client()
        parent = client.collection(NAMESPACES_ROOT).document(namespace)
        deleted = 0
        with _translated():
            async for collection in parent.collections():
                while deleted < batch:
                    refs = [
                        snapshot.reference
                        async for snapshot in collection.limit(min(batch - deleted, 500)).stream()
                    ]
                    if not refs:
                        break
                    writes = client.batch()
                    for ref in refs:
                        writes.delete(ref)
                    await writes.commit()
                    deleted += len(refs)
                if deleted >= batch:
                    break
        return deleted

    async def close(self) -> None:
        """Closes the client's channel. Safe to call more than once; later calls on the store
        raise `Unavailable`."""
        client, self._client = self._client, None
        if client is None:
            return
        # The client has no public close; its GAPIC client (made on first use) owns the channel.
        api = getattr(client, "_firestore_api_internal", None)
        if api is not None:
            await api.transport.close()


async def _rollback(tx: AsyncTransaction) -> None:
    """Rolls back `tx` if it began. A failed rollback must not hide the error that caused it;
    the server drops the transaction on its own after a while."""
    if not tx.in_progress:
        return
    try:
        await tx._rollback()
    except gexc.GoogleAPIError:
        log.warning("firestore rollback failed", exc_info=True)


if TYPE_CHECKING:
    # Keeps the adapter honest about implementing the port (checked by mypy only).
    _store_conforms: type[DocumentStore] = FirestoreStore
    _tx_conforms: type[Transaction] = _FirestoreTransaction
