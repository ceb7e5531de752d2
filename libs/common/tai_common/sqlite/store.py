"""The DocumentStore port on an embedded SQLite file (WAL mode), through aiosqlite.

Layout: one table per collection, `c_<collection> (id TEXT PRIMARY KEY, data TEXT NOT NULL)`,
`data` holding the document as JSON. Fields are read with `json_extract(data, '$.a.b')`, the
same expression `ensure_indexes` indexes, so SQLite's planner matches the two; `DOC_ID` is the
`id` column.

Rules a caller can see:
- Results are ordered by the query's order fields, then by document id in the direction of the
  last order field (ascending when there is none) — Firestore's implicit `__name__` order, so
  pages come out the same on both adapters. Cursors resume with a keyset comparison in the
  same order, so paging returns every document exactly once, however many values tie.
- null and missing fields are the same value: `Filter.eq(f, None)` matches both, and they sort
  before every other value (first ascending, last descending). Values of different types
  compare in SQLite's order (null < numbers < text); keep one type per field.
- Booleans are JSON true/false in the document and compare as 1/0, so a boolean field and a
  numeric field holding 0/1 are indistinguishable to a filter.
- Filter values are scalars (str, int, float, bool, None).

Concurrency: two connections. The reader serves reads outside transactions and never waits for
the write lock (WAL readers see the last commit). The writer runs every write: transactions
and single-call writes share one `SqliteWriteLock` (an asyncio lock, so one coroutine's writes
never land inside another's open transaction, then an flock that hands the file from process
to process without SQLite's polling), and `BEGIN IMMEDIATE` takes SQLite's write lock up
front, which serialises writers across processes without lost updates.

Expiry: a document whose `expires_at_ns` has passed is deleted by `delete_expired`, which a
janitor task (started by `open`, every `expire_every_seconds`) runs over every collection. Each
table gets a partial index on `expires_at_ns` (rows without it stay out of the index), so a
sweep is an index range scan per table, however large the table and however few documents
expire.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiosqlite
from tai.v1 import events_pb2

from tai_common.core import Aborted, AlreadyExists, Clock, SystemClock, Unavailable
from tai_common.ports import (
    OUTBOX,
    Data,
    Document,
    DocumentStore,
    Filter,
    IndexSpec,
    OutgoingMessage,
    Page,
    Query,
    Transaction,
    check_collection,
    event_message,
    outbox_document,
)
from tai_common.sqlite.event_log import SqliteEventLog
from tai_common.sqlite.sql import (
    TABLES_SQL,
    WriteKind,
    bind_parameters,
    compile_select,
    count_sql,
    create_table_sql,
    decode_json,
    delete_expired_sql,
    encode_json,
    expiry_index_sql,
    filter_shape,
    flat_name,
    get_many_sql,
    get_sql,
    index_sql,
    namespace_tables_sql,
    page_of,
    write_sql,
)
from tai_common.sqlite.write_lock import SqliteWriteLock

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
# Prepared statements kept per connection; generated SQL is cached per query shape, so the same
# string comes back and hits this cache.
_CACHED_STATEMENTS: Final = 512
# Jittered exponential backoff between transaction attempts that met another process's lock.
# SQLite has already waited `busy_timeout_ms` before reporting the lock, so these stay short.
_BACKOFF_BASE_S: Final = 0.01
_BACKOFF_CAP_S: Final = 1.0
# Transactions committed together at most, so one batch never holds the lock for long.
_MAX_BATCH: Final = 64
# Documents one expiry statement deletes; the janitor repeats it, releasing the write lock in
# between, so a large backlog never holds other writers up for long.
_EXPIRE_BATCH: Final = 500

# The stores whose transaction the current task is running, to turn a nested transaction or a
# single-call write from inside `fn` (both would wait for the lock `fn` holds) into an error.
_ACTIVE: ContextVar[tuple[SqliteStore, ...]] = ContextVar("tai_sqlite_active", default=())


class _Contention(Unavailable):
    """Another connection held the write lock past busy_timeout. Outside a transaction the
    caller sees an `Unavailable`; `run_transaction` retries it."""


def _translate(error: sqlite3.OperationalError) -> Unavailable:
    """The domain error for an operational SQLite failure (locked, disk I/O, full, …)."""
    if error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return _Contention(f"sqlite: {error}")
    return Unavailable(f"sqlite: {error}")


# --- the store -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Write:
    kind: WriteKind
    collection: str
    doc_id: str
    # The document as JSON, encoded when the write is buffered (a snapshot: later changes to
    # the caller's dict do not leak in, and an unencodable value fails at the call site).
    data: str | None = None

    def parameters(self) -> tuple[str, ...]:
        return (self.doc_id,) if self.data is None else (self.doc_id, self.data)


@dataclass(eq=False)
class _BatchMember:
    """One transaction waiting for, or taking, its turn in a group commit."""

    turn: asyncio.Future[None]  # set by the leader: the batch is open, run now
    done: asyncio.Future[None]  # set by the member: its savepoint is released or rolled back
    committed: asyncio.Future[None]  # set by the leader once the batch is committed (or not)
    new_tables: frozenset[str] = frozenset()
    failed: bool = False  # its own attempt failed (rolled back to its savepoint)
    poisoned: bool = False  # ...and the rollback failed: the batch must not commit


class _SqliteTransaction:
    """A `Transaction` on the writer connection, inside `BEGIN IMMEDIATE`."""

    def __init__(self, store: SqliteStore, conn: aiosqlite.Connection) -> None:
        self._store = store
        self._conn = conn
        self.writes: list[_Write] = []
        # Events for the bus's log, when the store holds it (see `publish`).
        self.messages: list[OutgoingMessage] = []
        self.finished = False

    def _check_read(self) -> None:
        self._check_open()
        if self.writes or self.messages:
            raise RuntimeError(
                "a transaction must do all its reads before its first write (as in Firestore)"
            )

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("the transaction has already finished")

    async def get(self, collection: str, doc_id: str) -> Document | None:
        self._check_read()
        return self._store._get_inline(self._conn._conn, collection, doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        self._check_read()
        return self._store._get_many_inline(self._conn._conn, collection, doc_ids)

    async def query(self, query: Query) -> Page:
        self._check_read()
        return await self._store._query(self._conn, query)

    def create(self, collection: str, doc_id: str, data: Data) -> None:
        self._buffer(_Write("create", check_collection(collection), doc_id, encode_json(data)))

    def set(self, collection: str, doc_id: str, data: Data) -> None:
        self._buffer(_Write("set", check_collection(collection), doc_id, encode_json(data)))

    def delete(self, collection: str, doc_id: str) -> None:
        self._buffer(_Write("delete", check_collection(collection), doc_id))

    def publish(self, topic: str, event: events_pb2.Event) -> None:
        """Appends `event` to the bus's log in the commit when this file holds it; else writes
        an outbox document for the relay."""
        if self._store._event_log is None:
            self.create(OUTBOX, event.event_id, outbox_document(topic, event))
            return
        self._check_open()
        self.messages.append(event_message(topic, event))

    def _buffer(self, write: _Write) -> None:
        self._check_open()
        self.writes.append(write)


class SqliteStore:
    """`DocumentStore` on one SQLite file. Open it with `SqliteStore.open`."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        tables: Iterable[str],
        rng: random.Random,
        write_lock: SqliteWriteLock,
        clock: Clock | None = None,
        event_log: SqliteEventLog | None = None,
        lookup: sqlite3.Connection | None = None,
    ) -> None:
        """Takes the open connections on the same file and its write lock; `open` makes them.

        Args:
            writer: the connection every write and transaction goes through.
            reader: a query-only connection for reads outside transactions.
            tables: the collections whose table is known to exist.
            rng: the source of backoff jitter.
            write_lock: held by every write and transaction (this process's and the file's).
            clock: what the expiry janitor calls now; the system clock by default.
            event_log: the event bus's log in the same file, when there is one: transactions
                then publish into it (`Transaction.publish`) instead of the outbox.
            lookup: a query-only connection the event loop's own thread reads documents by
                id through (`get`, `get_many`); without one they go through `reader`.
        """
        self._lookup = lookup
        self._writer: aiosqlite.Connection | None = writer
        self._reader: aiosqlite.Connection | None = reader
        # Collections whose table exists. Only ever grows: a read of a collection not in it
        # still tries the table (another process may have created it) and treats "no such
        # table" as empty, so no call ever asks SQLite whether a table exists.
        self._tables = set(tables)
        self._rng = rng
        self._write_lock = write_lock
        # Group commit: transactions waiting for the next batch, and the task running batches.
        self._batch_queue: collections.deque[_BatchMember] = collections.deque()
        self._batch_leader: asyncio.Task[None] | None = None
        self._clock: Clock = clock or SystemClock()
        self._event_log = event_log
        # Collections whose expiry index this store has created (or found).
        self._expiry_indexed: set[str] = set()
        self._janitor: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        rng: random.Random | None = None,
        expire_every_seconds: float | None = 60.0,
        clock: Clock | None = None,
        event_log: SqliteEventLog | None = None,
    ) -> SqliteStore:
        """Opens (creating if needed) the database file at `path` in WAL mode.

        Args:
            path: the database file; its folder is created if missing.
            synchronous: SQLite's `synchronous` setting. FULL syncs every commit to disk
                (survives power loss); NORMAL survives process crashes only.
            busy_timeout_ms: how long SQLite waits for another process's lock before a
                transaction backs off and retries (or a single write fails `Unavailable`).
            rng: the source of backoff jitter; a fresh `random.Random()` by default.
            expire_every_seconds: how often the janitor deletes expired documents (see
                `delete_expired`); None runs no janitor.
            clock: the janitor's notion of now; the system clock by default.
            event_log: the event bus's log, when the bus keeps it in this same file (its
                tables must exist): transactions can then publish with their writes.

        Returns:
            The open store. Close it with `close()`.

        Raises:
            ValueError: `synchronous` is not a SQLite mode, `path` is not a file, or
                `expire_every_seconds` is not positive.
            Unavailable: the file cannot be opened or switched to WAL mode.
        """
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}")
        if expire_every_seconds is not None and not expire_every_seconds > 0:
            raise ValueError("expire_every_seconds must be positive (or None for no janitor)")
        if str(path) in ("", ":memory:"):
            # The reader and the writer must share one database.
            raise ValueError("SqliteStore needs a database file, not an in-memory database")
        file = Path(path)
        await asyncio.to_thread(file.parent.mkdir, parents=True, exist_ok=True)
        conns: list[aiosqlite.Connection] = []
        try:
            writer = await cls._connect(file, busy_timeout_ms)
            conns.append(writer)
            rows = await writer.execute_fetchall("PRAGMA journal_mode = WAL")
            journal = next(iter(rows))[0]
            if str(journal).lower() != "wal":
                raise Unavailable(f"sqlite: {file} cannot use WAL mode (journal_mode={journal})")
            await writer.execute_fetchall(f"PRAGMA synchronous = {mode}")
            reader = await cls._connect(file, busy_timeout_ms)
            conns.append(reader)
            # A guard: nothing may write through the connection that bypasses the write lock.
            await reader.execute_fetchall("PRAGMA query_only = ON")
            tables = await reader.execute_fetchall(TABLES_SQL)
            lookup = sqlite3.connect(
                file,
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=_CACHED_STATEMENTS,
            )
            lookup.execute("PRAGMA query_only = ON")
        except sqlite3.OperationalError as error:
            await _close_all(conns)
            raise _translate(error) from error
        except BaseException:
            await _close_all(conns)
            raise
        store = cls(
            writer,
            reader,
            (row[0] for row in tables),
            rng or random.Random(),
            SqliteWriteLock(file),
            clock,
            event_log,
            lookup,
        )
        if expire_every_seconds is not None:
            store._janitor = asyncio.create_task(
                store._expire_periodically(expire_every_seconds), name=f"sqlite-expiry:{file}"
            )
        return store

    @staticmethod
    async def _connect(file: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
        return await aiosqlite.connect(
            file,
            # Autocommit: a single statement is its own transaction, and transactions are
            # begun explicitly with BEGIN IMMEDIATE.
            isolation_level=None,
            timeout=busy_timeout_ms / 1000,
            cached_statements=_CACHED_STATEMENTS,
            # The event loop's thread also reads and writes through the writer's connection,
            # while its own thread is idle (`_get_inline`, `_apply`).
            check_same_thread=False,
        )

    @property
    def publishes_through_outbox(self) -> bool:
        """False when this file holds the bus's log: transactions publish into it."""
        return self._event_log is None

    # --- reads ---

    async def get(self, collection: str, doc_id: str) -> Document | None:
        """The document, or None when it (or its collection) does not exist."""
        return self._get_inline(self._lookup_conn(), collection, doc_id)

    async def get_many(self, collection: str, doc_ids: Sequence[str]) -> list[Document]:
        """The documents that exist, in the order of `doc_ids`."""
        return self._get_many_inline(self._lookup_conn(), collection, doc_ids)

    async def query(self, query: Query) -> Page:
        """One page of the documents matching `query`; see the module docstring for order."""
        return await self._query(self._reader_conn(), query)

    async def count(self, collection: str, filters: Sequence[Filter] = ()) -> int:
        """How many documents of `collection` match every filter."""
        sql = count_sql(collection, tuple(filter_shape(f) for f in filters))
        rows = await self._fetch(
            self._reader_conn(), collection, sql.text, bind_parameters(sql, filters)
        )
        return int(rows[0][0]) if rows else 0

    async def explain_query_plan(self, query: Query) -> list[str]:
        """SQLite's plan for `query`, one line per step (diagnostics and index tests)."""
        sql, parameters = compile_select(query)
        rows = await self._fetch(
            self._reader_conn(), query.collection, f"EXPLAIN QUERY PLAN {sql.text}", parameters
        )
        return [str(row[3]) for row in rows]

    async def _get_many(
        self, conn: aiosqlite.Connection, collection: str, doc_ids: Sequence[str]
    ) -> list[Document]:
        if not doc_ids:
            check_collection(collection)
            return []
        rows = await self._fetch(
            conn, collection, get_many_sql(collection), (encode_json(list(doc_ids)),)
        )
        found = {row[0]: row[1] for row in rows}
        return [Document(i, decode_json(found[i])) for i in doc_ids if i in found]

    async def _get(
        self, conn: aiosqlite.Connection, collection: str, doc_id: str
    ) -> Document | None:
        rows = await self._fetch(conn, collection, get_sql(collection), (doc_id,))
        return Document(rows[0][0], decode_json(rows[0][1])) if rows else None

    # Reads by id run on the event loop's thread: inside a transaction on the writer's sqlite3
    # connection (while a batch member's `fn` runs, the writer's thread has nothing to do: the
    # batch waits for the member), outside one on `lookup`, a connection of this thread's own.
    # A lookup by id in the page cache takes microseconds, where a hop to a connection's thread
    # and back costs a wake-up of each thread; under load the batch members, run one after
    # another, spent most of their time waiting for those wake-ups, and the Scheduler's check
    # of a claim at its due time waited ~1 ms for one. Queries, whose size has no bound, keep
    # to their threads.

    def _get_inline(
        self, conn: sqlite3.Connection, collection: str, doc_id: str
    ) -> Document | None:
        rows = self._fetch_inline(conn, collection, get_sql(collection), (doc_id,))
        return Document(rows[0][0], decode_json(rows[0][1])) if rows else None

    def _get_many_inline(
        self, conn: sqlite3.Connection, collection: str, doc_ids: Sequence[str]
    ) -> list[Document]:
        if not doc_ids:
            check_collection(collection)
            return []
        rows = self._fetch_inline(
            conn, collection, get_many_sql(collection), (encode_json(list(doc_ids)),)
        )
        found = {row[0]: row[1] for row in rows}
        return [Document(i, decode_json(found[i])) for i in doc_ids if i in found]

    def _fetch_inline(
        self, conn: sqlite3.Connection, collection: str, sql: str, parameters: Sequence[Any]
    ) -> list[Any]:
        """`_fetch` on this thread (see above)."""
        try:
            rows = conn.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if collection not in self._tables and str(error).startswith("no such table"):
                return []
            raise _translate(error) from error
        self._tables.add(collection)
        return rows

    async def _query(self, conn: aiosqlite.Connection, query: Query) -> Page:
        sql, parameters = compile_select(query)
        rows = await self._fetch(conn, query.collection, sql.text, parameters)
        return page_of(rows, query.limit, query.order_by)

    async def _fetch(
        self, conn: aiosqlite.Connection, collection: str, sql: str, parameters: Sequence[Any]
    ) -> Sequence[Any]:
        """Runs a read in one thread hop; a collection without a table reads as empty."""
        try:
            rows = await conn.execute_fetchall(sql, parameters)
        except sqlite3.OperationalError as error:
            if collection not in self._tables and str(error).startswith("no such table"):
                return []
            raise _translate(error) from error
        self._tables.add(collection)
        return rows if isinstance(rows, list) else list(rows)

    # --- single-call writes ---

    async def create(self, collection: str, doc_id: str, data: Data) -> None:
        """Creates the document.

        Raises:
            AlreadyExists: the document exists (`resource_id` is "<collection>/<id>").
        """
        await self._write_one(
            _Write("create", check_collection(collection), doc_id, encode_json(data))
        )

    async def set(self, collection: str, doc_id: str, data: Data) -> None:
        """Creates or replaces the document."""
        await self._write_one(
            _Write("set", check_collection(collection), doc_id, encode_json(data))
        )

    async def delete(self, collection: str, doc_id: str) -> None:
        """Deletes the document; no error when it does not exist."""
        await self._write_one(_Write("delete", check_collection(collection), doc_id))

    async def _write_one(self, write: _Write) -> None:
        self._check_not_in_transaction(f"SqliteStore.{write.kind}")
        async with self._write_lock:
            conn = self._writer_conn()
            known = write.collection in self._tables
            try:
                if not known and write.kind != "delete":
                    await conn.execute_fetchall(create_table_sql(write.collection))
                    self._tables.add(write.collection)
                # Autocommit: one statement, one implicit transaction, one thread hop.
                await conn.execute_fetchall(
                    write_sql(write.kind, write.collection), write.parameters()
                )
            except sqlite3.IntegrityError as error:
                raise _already_exists(write) from error
            except sqlite3.OperationalError as error:
                if not known and str(error).startswith("no such table"):
                    return  # a delete in a collection that was never written
                raise _translate(error) from error

    # --- transactions ---

    async def run_transaction(
        self, fn: Callable[[Transaction], Awaitable[T]], *, max_attempts: int = 10
    ) -> T:
        """Runs `fn` in a transaction and commits its buffered writes atomically.

        `fn` may run more than once: when another process holds the write lock past
        busy_timeout, the attempt is rolled back and `fn` rerun after a jittered exponential
        backoff.

        Args:
            fn: does the reads, then buffers the writes; must have no other side effects.
            max_attempts: attempts before giving up with `Aborted`.

        Returns:
            What `fn` returned, once its writes are committed.

        Raises:
            Aborted: every attempt met another writer's lock.
            AlreadyExists: a buffered `create` named an existing document; nothing was written.
            RuntimeError: `fn` read after writing, or called this store's transaction or
                single-call writes from inside a transaction.
            Unavailable: SQLite failed otherwise (disk I/O, disk full, …).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._check_not_in_transaction("SqliteStore.run_transaction")
        for attempt in range(1, max_attempts + 1):
            try:
                return await self._attempt(fn)
            except _Contention as error:
                if attempt == max_attempts:
                    raise Aborted(
                        f"transaction gave up after {max_attempts} attempts: {error.message}"
                    ) from error
                log.debug("sqlite transaction attempt %d met a lock; retrying", attempt)
                ceiling = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
                # Outside the write lock: this process's other writers may go first meanwhile.
                await asyncio.sleep(ceiling / 2 + self._rng.uniform(0, ceiling / 2))
        raise AssertionError("unreachable")

    async def _attempt(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        """One attempt, as a member of the next group commit (see `_lead_batches`).

        `fn` runs in the caller's task (its context variables: trace, principal), inside a
        savepoint of the batch's transaction; a failure rolls back to the savepoint and is
        raised at once, success waits for the batch's COMMIT.
        """
        loop = asyncio.get_running_loop()
        member = _BatchMember(loop.create_future(), loop.create_future(), loop.create_future())
        self._batch_queue.append(member)
        if self._batch_leader is None:
            self._batch_leader = asyncio.create_task(self._lead_batches(), name="sqlite-commit")
        try:
            await member.turn  # raises the contention that kept the batch from beginning
        except asyncio.CancelledError:
            if member.turn.done() and not member.turn.cancelled():
                member.failed = True  # our turn came as we were cancelled: pass it on
                _resolve(member.done)
            raise
        conn = self._writer_conn()
        tx = _SqliteTransaction(self, conn)
        token = _ACTIVE.set((*_ACTIVE.get(), self))
        try:
            result = await fn(tx)
        except BaseException:
            # Nothing was written yet (writes are buffered until `fn` returns).
            member.failed = True
            _resolve(member.done)
            raise
        finally:
            tx.finished = True
            _ACTIVE.reset(token)
        # The writes go in one hop to SQLite's thread, in a savepoint of the batch (see
        # `_apply_writes`). Once that hop is queued it runs whatever this caller does, so the
        # member's outcome is settled by the hop itself, and a caller that leaves meanwhile
        # leaves writes that commit with the batch (as a caller leaving after them would).
        applying = asyncio.ensure_future(self._apply(conn, tx.writes, tx.messages))

        def settle(done: asyncio.Future[frozenset[str]]) -> None:
            if done.cancelled() or done.exception() is not None:
                member.failed = True
                member.poisoned = isinstance(done.exception(), _SavepointStuck)
            else:
                member.new_tables = done.result()
            _resolve(member.done)

        applying.add_done_callback(settle)
        try:
            await asyncio.shield(applying)
        except _SavepointStuck as error:
            raise Unavailable(f"sqlite: {error}") from error
        # Shielded: once applied, the writes commit with the batch even if this caller leaves.
        await asyncio.shield(member.committed)
        # Tables created inside a rolled-back transaction do not exist: record them only now.
        self._tables.update(member.new_tables)
        if tx.messages and self._event_log is not None:
            self._event_log.appended({m.topic for m in tx.messages})
        return result

    async def _lead_batches(self) -> None:
        """Group commit: while transactions are queued, take the write lock, BEGIN once, let
        each queued transaction run in turn inside a savepoint, and COMMIT them together.

        Under load this turns N lock hand-offs between processes and N syncs into one each,
        which is what bounds the embedded store's write throughput. Hand-written: SQLite and
        aiosqlite offer no group commit.
        """
        try:
            while self._batch_queue:
                try:
                    async with self._write_lock:
                        await self._run_batch()
                except Exception as error:  # e.g. the store was closed meanwhile
                    self._fail_queued(error)
        except BaseException:
            self._fail_queued(Unavailable("sqlite: the store is shutting down"))
            raise
        finally:
            self._batch_leader = None
            if self._batch_queue:  # arrived while the last batch was finishing
                self._batch_leader = asyncio.create_task(self._lead_batches())

    def _fail_queued(self, error: Exception) -> None:
        """Every transaction still waiting for its turn gets `error` (contention included:
        run_transaction backs off and retries it)."""
        while self._batch_queue:
            member = self._batch_queue.popleft()
            if not member.turn.done():
                member.turn.set_exception(error)

    async def _run_batch(self) -> None:
        conn = self._writer_conn()
        await _run(conn, "BEGIN IMMEDIATE")
        members: list[_BatchMember] = []
        try:
            while self._batch_queue and len(members) < _MAX_BATCH:
                member = self._batch_queue.popleft()
                if member.turn.done():
                    continue  # its caller was cancelled while waiting
                members.append(member)
                member.turn.set_result(None)
                await member.done
                if member.poisoned:
                    raise Unavailable("sqlite: a savepoint could not be rolled back")
            await _run(conn, "COMMIT")
        except BaseException as error:
            await asyncio.shield(self._rollback(conn))
            failure = error if isinstance(error, Exception) else Unavailable("sqlite: interrupted")
            for member in members:
                if member.failed:
                    _resolve(member.committed)
                elif not member.committed.done():
                    member.committed.set_exception(failure)
            raise
        for member in members:
            _resolve(member.committed)

    async def _apply(
        self,
        conn: aiosqlite.Connection,
        writes: list[_Write],
        messages: Sequence[OutgoingMessage] = (),
    ) -> frozenset[str]:
        """Applies buffered writes in order, in a savepoint, in one hop to SQLite's thread:
        one executemany per run of writes of one kind to one collection, then one appending
        the messages to the event log. Returns the collections whose table this created."""
        new_tables = frozenset(w.collection for w in writes) - self._tables
        runs = [
            list(run) for _, run in itertools.groupby(writes, key=lambda w: (w.kind, w.collection))
        ]
        tables = [create_table_sql(c) for c in sorted(new_tables)]
        statements = [
            (write_sql(run[0].kind, run[0].collection), [w.parameters() for w in run])
            for run in runs
        ]
        if messages and self._event_log is not None:
            statements.append(self._event_log.append_statement(messages))
        try:
            # On this thread, as the reads (`_get_inline`): the savepoint and its inserts touch
            # the page cache and the WAL's memory only; COMMIT, which syncs, stays in SQLite's
            # thread.
            _apply_writes(conn._conn, tables, statements)
        except _StatementFailed as failed:
            error = failed.error
            # Only a document write can conflict (the log's statement comes after them).
            index = failed.index
            if (
                isinstance(error, sqlite3.IntegrityError)
                and index is not None
                and index < len(runs)
            ):
                raise _already_exists(runs[index][failed.row or 0]) from error
            if isinstance(error, sqlite3.OperationalError):
                raise _translate(error) from error
            raise error from None
        return new_tables

    async def _rollback(self, conn: aiosqlite.Connection) -> None:
        # A no-op when no transaction is open (BEGIN failed). A failed rollback must not hide
        # the error that caused it; SQLite rolls back anyway when the connection closes.
        try:
            await conn.rollback()
        except (sqlite3.Error, ValueError):
            log.warning("sqlite rollback failed", exc_info=True)

    def _check_not_in_transaction(self, what: str) -> None:
        if self in _ACTIVE.get():
            raise RuntimeError(
                f"{what} called inside this store's transaction; use the transaction object"
            )

    # --- expiry ---

    async def delete_expired(self, collection: str, now_ns: int, limit: int = _EXPIRE_BATCH) -> int:
        """Deletes up to `limit` documents of `collection` whose `expires_at_ns` is at most
        `now_ns`, and returns how many it deleted (fewer than `limit`: none are left).

        The first call for a collection creates its expiry index (once per file).
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        check_collection(collection)
        self._check_not_in_transaction("SqliteStore.delete_expired")
        async with self._write_lock:
            conn = self._writer_conn()
            try:
                if collection not in self._expiry_indexed:
                    await conn.execute_fetchall(expiry_index_sql(collection))
                    self._expiry_indexed.add(collection)
                async with conn.execute(delete_expired_sql(collection), (now_ns, limit)) as cursor:
                    deleted = cursor.rowcount
            except sqlite3.OperationalError as error:
                if str(error).startswith("no such table"):
                    return 0  # a collection never written holds nothing to expire
                raise _translate(error) from error
        return max(deleted, 0)

    async def _expire_all(self, now_ns: int) -> int:
        """One janitor sweep: every collection of the file, batch by batch."""
        try:
            rows = await self._reader_conn().execute_fetchall(TABLES_SQL)
        except sqlite3.OperationalError as error:
            raise _translate(error) from error
        collections = sorted({flat_name(t) for t in self._tables} | {str(row[0]) for row in rows})
        deleted = 0
        for collection in collections:
            try:
                check_collection(collection)
            except ValueError:
                continue  # a table this adapter did not make
            while True:
                batch = await self.delete_expired(collection, now_ns, _EXPIRE_BATCH)
                deleted += batch
                if batch < _EXPIRE_BATCH:
                    break
        return deleted

    async def _expire_periodically(self, every_seconds: float) -> None:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                deleted = await self._expire_all(self._clock.now_ns())
            except Unavailable as error:
                # Locked by another process past busy_timeout, or a disk error: next round.
                log.warning("sqlite expiry sweep failed: %s", error.message)
                continue
            if deleted:
                log.debug("sqlite expiry sweep deleted %d documents", deleted)

    # --- namespaces ---

    async def drop_namespace(self, namespace: str, *, batch: int = _EXPIRE_BATCH) -> int:
        """Deletes up to `batch` documents from the tables of `namespace`'s collections, and
        drops the tables it empties; returns how many documents it deleted."""
        if batch < 1:
            raise ValueError("batch must be positive")
        self._check_not_in_transaction("SqliteStore.drop_namespace")
        sql, parameters = namespace_tables_sql(namespace)
        deleted = 0
        dropped: set[str] = set()
        async with self._write_lock:
            conn = self._writer_conn()
            try:
                tables = [str(row[0]) for row in await conn.execute_fetchall(sql, parameters)]
                for table in tables:
                    # Table names come from sqlite_master, matched to this adapter's pattern.
                    async with conn.execute(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} LIMIT ?)",
                        (batch - deleted,),
                    ) as cursor:
                        deleted += max(cursor.rowcount, 0)
                    if deleted >= batch:
                        break
                    await conn.execute_fetchall(f"DROP TABLE IF EXISTS {table}")
                    dropped.add(table[2:])
                await conn.commit()
            except sqlite3.OperationalError as error:
                await self._rollback(conn)
                raise _translate(error) from error
            self._tables = {t for t in self._tables if flat_name(t) not in dropped}
        return deleted

    # --- schema and lifecycle ---

    async def ensure_indexes(self, specs: Sequence[IndexSpec]) -> None:
        """Creates (if missing) one expression index per spec: the spec's fields, then the id.

        Each indexed field is `json_extract(data, '$.field')`, the exact expression queries
        use, so the planner can pick the index for filters and for the order.
        """
        statements = [index_sql(spec) for spec in specs]
        collections = sorted({spec.collection for spec in specs})
        if not statements:
            return
        self._check_not_in_transaction("SqliteStore.ensure_indexes")
        async with self._write_lock:
            conn = self._writer_conn()
            try:
                await _run(conn, "BEGIN IMMEDIATE")
                for collection in collections:
                    await _run(conn, create_table_sql(collection))
                for statement in statements:
                    await _run(conn, statement)
                await _run(conn, "COMMIT")
            except BaseException:
                await self._rollback(conn)
                raise
            self._tables.update(collections)

    async def close(self) -> None:
        """Closes both connections, after the transaction or write in progress (if any).
        Safe to call more than once; later calls on the store raise `Unavailable`."""
        if self._writer is None and self._reader is None:
            return
        self._check_not_in_transaction("SqliteStore.close")
        janitor, self._janitor = self._janitor, None
        if janitor is not None:
            janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor
        async with self._write_lock:
            conns = [c for c in (self._writer, self._reader) if c is not None]
            self._writer = self._reader = None
            lookup, self._lookup = self._lookup, None
            if lookup is not None:
                lookup.close()
            await _close_all(conns)
        self._write_lock.close()

    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise Unavailable("sqlite: the store is closed")
        return self._writer

    def _lookup_conn(self) -> sqlite3.Connection:
        if self._lookup is None:
            raise Unavailable("sqlite: the store is closed")
        return self._lookup

    def _reader_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise Unavailable("sqlite: the store is closed")
        return self._reader


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _StatementFailed(Exception):
    """`_apply_writes` failed with `error` (at write statement `index`, row `row` of it when
    known; `index` None when it was not a write); nothing of the member's writes remains."""

    def __init__(self, index: int | None, error: Exception, row: int | None = None) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error
        self.row = row


class _SavepointStuck(Exception):
    """A member's savepoint could not be undone: its batch must not commit."""


def _apply_writes(
    db: sqlite3.Connection, tables: list[str], statements: list[tuple[str, list[Any]]]
) -> None:
    """In SQLite's thread: one batch member's new tables and writes, all or nothing, in a
    savepoint released into the batch's transaction."""
    try:
        db.execute("SAVEPOINT tai_tx")
    except sqlite3.Error as error:
        raise _StatementFailed(None, error) from error
    index: int | None = None
    try:
        for sql in tables:
            db.execute(sql)
        for position, (sql, rows) in enumerate(statements):
            index = position  # names the write that failed, if one does
            db.executemany(sql, rows)
        index = None
        db.execute("RELEASE tai_tx")
    except Exception as error:
        row: int | None = None
        try:
            db.execute("ROLLBACK TO tai_tx")
            if isinstance(error, sqlite3.IntegrityError) and index is not None:
                row = _failing_row(db, tables, statements, index)
                db.execute("ROLLBACK TO tai_tx")
            db.execute("RELEASE tai_tx")
        except sqlite3.Error as stuck:
            raise _SavepointStuck(f"rolling back to a savepoint failed: {stuck}") from error
        raise _StatementFailed(index, error, row) from error


def _failing_row(
    db: sqlite3.Connection, tables: list[str], statements: list[tuple[str, list[Any]]], index: int
) -> int | None:
    """Which row of statement `index` breaks a constraint (executemany does not say): the
    writes before it are replayed, then its rows one by one. The caller rolls them back."""
    try:
        for sql in tables:
            db.execute(sql)
        for sql, rows in statements[:index]:
            db.executemany(sql, rows)
        sql, rows = statements[index]
        for position, row in enumerate(rows):
            try:
                db.execute(sql, row)
            except sqlite3.IntegrityError:
                return position
    except sqlite3.Error:
        pass
    return None


async def _run(conn: aiosqlite.Connection, sql: str) -> None:
    """Runs one parameterless statement of the store's own, as a domain error if it fails."""
    try:
        await conn.execute_fetchall(sql)
    except sqlite3.OperationalError as error:
        raise _translate(error) from error


def _already_exists(write: _Write) -> AlreadyExists:
    return AlreadyExists("document", f"{write.collection}/{write.doc_id}")


async def _close_all(conns: Sequence[aiosqlite.Connection]) -> None:
    """Closes every connection, even when closing one fails; re-raises the first failure."""
    failure: BaseException | None = None
    for conn in conns:
        try:
            await conn.close()
        except BaseException as error:  # close the rest, then re-raise
            failure = failure or error
    if failure is not None:
        raise failure


if TYPE_CHECKING:
    # Keeps the adapter honest about implementing the port (checked by mypy only).
    _store_conforms: type[DocumentStore] = SqliteStore
    _tx_conforms: type[Transaction] = _SqliteTransaction
