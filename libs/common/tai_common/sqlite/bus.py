"""The embedded EventBus: an append-only log in a SQLite file that local processes share.

Every `SqliteBus` (one per process, or several in one process) opens the same file in WAL mode.
The file may be the document store's own: the bus only touches tables prefixed `bus_`.

Tables:

- `bus_messages` is the log. `seq` is AUTOINCREMENT so that the seq of an expired (deleted)
  message is never handed out again: cursors compare seqs, and a reused seq could look settled.
- `bus_subscriptions` holds one row per subscription with its `cursor`: every message of the
  topic with `seq <= cursor` is settled (acked or dead-lettered) for that subscription.
- `bus_deliveries` holds, per (subscription, seq) past the cursor that was delivered at least
  once, the attempts so far, `visible_at_ns` (end of the lease or of the nack backoff), `done`
  and the consumer holding the lease. A message past the cursor without a row was never
  delivered. Rows are deleted as the cursor passes them, so the table stays small.

Claiming: a consumer scans the unsettled messages past the cursor in seq order (at most
`_SCAN_WINDOW` of them, like the Pub/Sub client's default flow-control limit of 1000 outstanding
messages) inside `BEGIN IMMEDIATE`. It claims a message when it is visible (never delivered, or
its lease/backoff has ended) and no earlier unsettled message has the same ordering key, so a
key's messages are handled one at a time in publish order. A claim writes a lease of
`ack_deadline_seconds`; since SQLite has one writer at a time, two consumers never hold the same
lease. A message about to be delivered for attempt `max_delivery_attempts + 1` is published to
the dead-letter topic and settled in the same transaction instead.

Waking: a consumer queries only when something may have changed. Commits by this `SqliteBus`
wake the local consumers directly; commits by other connections are noticed through
`PRAGMA data_version`, polled every `poll_interval` on a connection of the watcher's own, called
from the event loop itself: it reads shared memory, not the disk, in microseconds, where a hop
to aiosqlite's thread and back would cost far more than the pragma (100 polls a second).
Such a commit wakes a consumer when its topic has a newer message than it has seen (one query
reads every followed topic's last seq), or when its last scan saw messages in other hands
(leased or backing off), whose settling may unblock it. And each consumer sleeps until the
earliest lease or backoff it saw ends.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import aiosqlite

from tai_common.core import (
    Clock,
    FailedPrecondition,
    IdFactory,
    InvalidArgument,
    StartupError,
    SystemClock,
    Unavailable,
    UuidFactory,
    wait_event,
)
from tai_common.core.units import NS_PER_SECOND
from tai_common.ports import (
    DEAD_LETTER_DELIVERY_ATTEMPTS,
    DEAD_LETTER_SOURCE_MESSAGE_ID,
    DEAD_LETTER_SOURCE_SUBSCRIPTION,
    Handler,
    Message,
    OutgoingMessage,
    Subscription,
    SubscriptionSpec,
)
from tai_common.sqlite.event_log import SqliteEventLog
from tai_common.sqlite.local_consumer import READ_SQL, LocalConsumer, Row, finish_or_cancel
from tai_common.sqlite.write_lock import SqliteWriteLock

__all__ = ["SqliteBus", "Synchronous"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# Unsettled messages a claim looks at past the cursor. Messages further on wait until the
# window moves, which only matters when more than this many messages of blocked ordering keys
# (leased or backing off) pile up ahead of them.
_SCAN_WINDOW: Final = 1000
# A scan reads this many first, and the whole window only when they do not settle its plan.
_FIRST_SCAN_WINDOW: Final = 64
# Messages expired per topic per janitor pass, so a janitor transaction stays short.
_RETENTION_BATCH: Final = 1000
# Whole-transaction retries when SQLite still reports BUSY after `busy_timeout` (or skips the
# busy handler, as it does during WAL recovery).
_BUSY_ATTEMPTS: Final = 4
_MAX_ERROR_BACKOFF_SECONDS: Final = 5.0
_SEQ_MAX: Final = 2**63 - 1

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS bus_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        message_id TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        attributes TEXT NOT NULL,  -- JSON object of strings
        data BLOB NOT NULL,
        publish_time_ns INTEGER NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS bus_messages_topic_seq ON bus_messages (topic, seq)",
    """
    CREATE TABLE IF NOT EXISTS bus_subscriptions (
        name TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        ephemeral INTEGER NOT NULL,
        ttl_ns INTEGER NOT NULL,
        last_seen_ns INTEGER NOT NULL,
        created_ns INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS bus_subscriptions_topic ON bus_subscriptions (topic, cursor)",
    """
    CREATE TABLE IF NOT EXISTS bus_deliveries (
        subscription TEXT NOT NULL,
        seq INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        visible_at_ns INTEGER NOT NULL,
        done INTEGER NOT NULL,
        lease_owner TEXT,
        PRIMARY KEY (subscription, seq)
    ) WITHOUT ROWID
    """,
)

# The unsettled messages past the subscription's cursor, oldest first. The cursor comes from a
# subquery so the whole scan reads one snapshot.
_SCAN_SQL: Final = """
    SELECT m.seq, m.ordering_key, coalesce(d.attempts, 0), coalesce(d.visible_at_ns, 0),
        json_extract(m.attributes, '$.event_type')
    FROM bus_messages AS m
    LEFT JOIN bus_deliveries AS d ON d.subscription = :name AND d.seq = m.seq
    WHERE m.topic = :topic
      AND m.seq > (SELECT cursor FROM bus_subscriptions WHERE name = :name)
      AND coalesce(d.done, 0) = 0
    ORDER BY m.seq
    LIMIT :window
"""

_FIRST_UNSETTLED_SQL: Final = """
    SELECT m.seq
    FROM bus_messages AS m
    LEFT JOIN bus_deliveries AS d ON d.subscription = :name AND d.seq = m.seq
    WHERE m.topic = :topic AND m.seq > :cursor AND coalesce(d.done, 0) = 0
    ORDER BY m.seq
    LIMIT 1
"""

_INSERT_MESSAGE_SQL: Final = """
    INSERT INTO bus_messages
        (topic, message_id, ordering_key, attributes, data, publish_time_ns)
    VALUES (?, ?, ?, ?, ?, ?)
"""

# A settlement only applies while the consumer still holds the delivery it settles: once the
# lease lapsed and someone else claimed the message (attempts moved on), the late outcome of
# the old delivery is dropped, as Pub/Sub drops acks of expired leases.
_ACK_SQL: Final = """
    UPDATE bus_deliveries SET done = 1, lease_owner = NULL
    WHERE subscription = :name AND seq = :seq AND attempts = :attempt
      AND lease_owner = :owner AND done = 0
"""
_NACK_SQL: Final = """
    UPDATE bus_deliveries SET visible_at_ns = :visible_at, lease_owner = NULL
    WHERE subscription = :name AND seq = :seq AND attempts = :attempt
      AND lease_owner = :owner AND done = 0
"""
# Only while the lease is still running: a lapsed lease already counted as an attempt.
_RELEASE_SQL: Final = """
    UPDATE bus_deliveries SET attempts = attempts - 1, visible_at_ns = :now, lease_owner = NULL
    WHERE subscription = :name AND seq = :seq AND attempts = :attempt
      AND lease_owner = :owner AND done = 0 AND visible_at_ns > :now
"""
_LEASE_SQL: Final = """
    INSERT INTO bus_deliveries (subscription, seq, attempts, visible_at_ns, done, lease_owner)
    VALUES (:name, :seq, :attempt, :visible_at, 0, :owner)
    ON CONFLICT (subscription, seq) DO UPDATE SET
        attempts = excluded.attempts,
        visible_at_ns = excluded.visible_at_ns,
        lease_owner = excluded.lease_owner
"""
_SETTLE_SQL: Final = """
    INSERT INTO bus_deliveries (subscription, seq, attempts, visible_at_ns, done, lease_owner)
    VALUES (:name, :seq, :attempts, 0, 1, NULL)
    ON CONFLICT (subscription, seq) DO UPDATE SET done = 1, lease_owner = NULL
"""

# Distinct topics through the (topic, seq) index, one index seek per topic.
_TOPICS_SQL: Final = """
    WITH RECURSIVE topics (topic) AS (
        SELECT (SELECT min(topic) FROM bus_messages)
        UNION ALL
        SELECT (SELECT min(topic) FROM bus_messages WHERE topic > topics.topic)
        FROM topics WHERE topics.topic IS NOT NULL
    )
    SELECT topic FROM topics WHERE topic IS NOT NULL
"""
_STALE_EPHEMERAL_SQL: Final = """
    SELECT name FROM bus_subscriptions WHERE ephemeral = 1 AND last_seen_ns + ttl_ns < :now
"""
_EXPIRE_SQL: Final = """
    DELETE FROM bus_messages
    WHERE seq IN (
        SELECT seq FROM bus_messages WHERE topic = :topic AND seq <= :limit
        ORDER BY seq LIMIT :batch
    )
      AND publish_time_ns < :cutoff
"""


@contextmanager
def _unavailable_on_sqlite_error(what: str) -> Iterator[None]:
    """Maps the sqlite3 errors that mean the bus cannot be used to `Unavailable`.

    Programming errors (bad SQL, constraint violations, oversized values) are bugs or caller
    mistakes and propagate unchanged.
    """
    try:
        yield
    except (
        sqlite3.IntegrityError,
        sqlite3.ProgrammingError,
        sqlite3.DataError,
        sqlite3.NotSupportedError,
    ):
        raise
    except sqlite3.DatabaseError as exc:
        raise Unavailable(f"{what}: {exc}") from exc


def _check_topics(messages: Sequence[OutgoingMessage]) -> None:
    for message in messages:
        if not message.topic:
            raise InvalidArgument("topic", "must not be empty")


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


async def _fetch_one(db: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    """The first row of a query, or None."""
    rows = await db.execute_fetchall(sql, params)
    return next(iter(rows), None)


class _Outcome(enum.Enum):
    ACK = "ack"
    NACK = "nack"
    # Give the message back without counting the attempt (handler cancelled on close).
    RELEASE = "release"


@dataclass(frozen=True)
class _Settlement:
    seq: int
    attempt: int
    outcome: _Outcome


@dataclass(frozen=True)
class _Pending:
    """An unsettled message past the cursor, as a claim scan sees it."""

    seq: int
    ordering_key: str
    attempts: int
    visible_at_ns: int


@dataclass
class _Plan:
    """What one scan found: messages to claim, messages to dead-letter, the next timer."""

    claims: list[_Pending] = field(default_factory=list)
    dead: list[_Pending] = field(default_factory=list)
    # Messages the subscription's `event_types` leave out: settled without a delivery.
    unwanted: list[_Pending] = field(default_factory=list)
    next_due_ns: int | None = None
    # The scan stopped with messages left unread (it filled its capacity or its window).
    more: bool = False

    @property
    def has_work(self) -> bool:
        return bool(self.claims or self.dead or self.unwanted)

    def due_at(self, at_ns: int) -> None:
        if self.next_due_ns is None or at_ns < self.next_due_ns:
            self.next_due_ns = at_ns


# eq=False: compared and hashed by identity, as the key of a consumer's in-flight handlers.
@dataclass(frozen=True, eq=False)
class _Claimed:
    message: Message
    seq: int
    lease_expiry_ns: int


@dataclass
class _StepResult:
    # When the subscription's `last_seen_ns` was refreshed, if this step did.
    touched_at: int | None
    claimed: list[_Claimed]
    next_due_ns: int | None
    # Rows marked done (acks, dead letters) or given back: other local consumers may proceed.
    freed: bool
    dead_letter_topic: str | None
    # The scan read every message there was to take: no backlog is left.
    caught_up: bool


class SqliteBus:
    """An `EventBus` in a SQLite file, shared by every process that opens the same file.

    Create it with `await SqliteBus.open(path)`; close it with `await bus.close()`.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        clock: Clock,
        ids: IdFactory,
        poll_interval: float,
        retention_seconds: float,
        ephemeral_ttl_seconds: float,
        janitor_interval: float,
        write_lock: SqliteWriteLock | None = None,
        single_process: bool = False,
        cursor_flush_interval: float = 0.1,
    ) -> None:
        """Wraps an open connection; use `SqliteBus.open`, which also prepares the file.

        `write_lock` is held by every write transaction (the file's lock shared with the other
        processes and the document store); None for an in-memory database.
        """
        self._db = db
        self._write_lock = write_lock
        self._clock = clock
        self._ids = ids
        self._poll_interval = poll_interval
        self._retention_ns = int(retention_seconds * NS_PER_SECOND)
        self._ephemeral_ttl_ns = int(ephemeral_ttl_seconds * NS_PER_SECOND)
        self._janitor_interval = janitor_interval
        # One aiosqlite connection runs one statement at a time; the lock keeps the statements
        # of one transaction together.
        self._lock = asyncio.Lock()
        self._consumers: set[_Consumer] = set()
        # Set by close(): no new subscriptions. Publishing goes on while handlers drain, since
        # handlers often publish.
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # Set (under the lock) once the connection is closed; later statements fail cleanly.
        self._db_closed = False
        self._watcher: asyncio.Task[None] | None = None
        # The watcher's connection (None for an in-memory database, which no other connection
        # can change): used from the event loop only, never waits for a lock (timeout 0).
        self._watch_db: sqlite3.Connection | None = None
        # One process owns the file: consumers run in memory (`LocalConsumer`), by name.
        self._single_process = single_process
        self._local: dict[str, LocalConsumer] = {}
        # Closed consumers whose last cursor is not written yet.
        self._closed_local: list[LocalConsumer] = []
        self._cursor_flush_interval = cursor_flush_interval
        # The flock on `<database>-owners` that keeps a single-process owner and the processes
        # sharing the file apart (`_claim_ownership`).
        self._owners_fd: int | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        ids: IdFactory | None = None,
        poll_interval: float = 0.01,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        retention_seconds: float = 7 * 24 * 3600,
        ephemeral_ttl_seconds: float = 180.0,
        janitor_interval: float = 5.0,
        single_process: bool = False,
    ) -> SqliteBus:
        """Opens (creating if needed) the bus tables in a SQLite file and starts the watcher.

        Args:
            path: The database file; may be shared with the document store.
            clock: Source of wall-clock time for leases, backoffs and retention.
            ids: Source of message and consumer ids.
            poll_interval: Seconds between checks for commits by other processes.
            synchronous: SQLite `PRAGMA synchronous`; FULL makes a returned publish survive
                power loss.
            busy_timeout_ms: How long SQLite waits for another writer before reporting BUSY.
            retention_seconds: Messages older than this are deleted once every subscription of
                their topic has settled them.
            ephemeral_ttl_seconds: An ephemeral subscription not refreshed for this long
                (its process died) is deleted by any bus's janitor.
            janitor_interval: Seconds between janitor passes (stale subscriptions, retention).
            single_process: This process is the only one that will open the file (`tai-server`):
                consumers deliver from memory (`LocalConsumer`) with no claim or
                acknowledgement transactions. Refused while another process has the file open
                through a bus, and other processes' buses are refused while it is.

        Returns:
            The open bus.

        Raises:
            Unavailable: The file cannot be opened or prepared.
            StartupError: Another process owns the file, or shares it while this one would own
                it.
            ValueError: A setting is out of range.
        """
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        for name, value in (
            ("poll_interval", poll_interval),
            ("retention_seconds", retention_seconds),
            ("ephemeral_ttl_seconds", ephemeral_ttl_seconds),
            ("janitor_interval", janitor_interval),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must not be negative")

        with _unavailable_on_sqlite_error(f"cannot open event bus {os.fspath(path)!r}"):
            # isolation_level=None: the bus issues BEGIN IMMEDIATE / COMMIT itself.
            db = await aiosqlite.connect(os.fspath(path), isolation_level=None, iter_chunk_size=256)
        bus = cls(
            db,
            clock=clock or SystemClock(),
            ids=ids or UuidFactory(),
            poll_interval=poll_interval,
            retention_seconds=retention_seconds,
            ephemeral_ttl_seconds=ephemeral_ttl_seconds,
            janitor_interval=janitor_interval,
            write_lock=(
                None if os.fspath(path) in ("", ":memory:") else SqliteWriteLock(Path(path))
            ),
            single_process=single_process,
        )
        try:
            if bus._write_lock is not None:
                bus._claim_ownership(Path(path))
            with _unavailable_on_sqlite_error("cannot prepare event bus"):
                await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                mode = await bus._run(
                    lambda c: _fetch_one(c, "PRAGMA journal_mode = WAL"), write=False
                )
                if mode is None or str(mode[0]).lower() != "wal":
                    # E.g. ":memory:": works within this bus, but other processes cannot share it.
                    logger.warning("event bus %s is not in WAL mode (%s)", path, mode)
                await db.execute(f"PRAGMA synchronous = {synchronous}")
                await bus._run(_create_schema, write=True)
                if bus._write_lock is not None and not single_process:
                    bus._watch_db = sqlite3.connect(
                        os.fspath(path), timeout=0, isolation_level=None
                    )
                    bus._watch_db.execute("PRAGMA query_only = ON")
        except BaseException:
            await db.close()
            if bus._watch_db is not None:
                bus._watch_db.close()
            bus._release_ownership()
            raise
        bus._watcher = asyncio.create_task(bus._watch(), name="sqlite-bus-watcher")
        return bus

    async def publish(self, message: OutgoingMessage) -> str:
        """Appends one message to the log.

        Args:
            message: The message; its topic need not have subscriptions.

        Returns:
            The message id, once the message is committed.

        Raises:
            Unavailable: The database cannot be written.
            InvalidArgument: The topic is empty.
        """
        (message_id,) = await self.publish_many([message])
        return message_id

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Appends messages in one transaction, in order.

        Args:
            messages: The messages, possibly for several topics.

        Returns:
            Their ids, in the order of `messages`.

        Raises:
            Unavailable: The database cannot be written.
            InvalidArgument: A topic is empty.
        """
        _check_topics(messages)
        if not messages:
            return []
        ids = [self._ids.new_id("msg") for _ in messages]

        async def insert(db: aiosqlite.Connection) -> None:
            await db.executemany(_INSERT_MESSAGE_SQL, self._rows(messages, ids))

        with _unavailable_on_sqlite_error("cannot publish"):
            await self._run(insert, write=True)
        self._wake_consumers({m.topic for m in messages})
        return ids

    def event_log(self) -> SqliteEventLog:
        """The log as a document store on the same file appends to it in its transactions
        (`SqliteStore(event_log=…)`): an event then commits with the change it describes."""
        return _SharedLog(self)

    def _rows(
        self, messages: Sequence[OutgoingMessage], ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """`_INSERT_MESSAGE_SQL`'s rows for `messages`, published now."""
        now = self._clock.now_ns()
        return [
            (m.topic, message_id, m.ordering_key, json.dumps(dict(m.attributes)), m.data, now)
            for m, message_id in zip(messages, ids, strict=True)
        ]

    async def subscribe(self, spec: SubscriptionSpec, handler: Handler) -> Subscription:
        """Creates the subscription if needed and starts delivering its messages to `handler`.

        Args:
            spec: The subscription; consumers with the same `spec.name` share its messages.
            handler: Called once per delivery; returning acks, raising nacks.

        Returns:
            The running consumer; `close()` it to stop.

        Raises:
            FailedPrecondition: The subscription exists for another topic.
            InvalidArgument: The dead-letter topic is the subscription's own topic.
            Unavailable: The database cannot be written.
        """
        if spec.dead_letter == spec.topic:
            raise InvalidArgument("dead_letter_topic", "must differ from the topic")
        if self._closing:
            raise Unavailable("the event bus is closed")
        if self._single_process:
            return await self._subscribe_local(spec, handler)
        consumer = _Consumer(self, spec, handler, self._ids.new_id("consumer"))
        with _unavailable_on_sqlite_error(f"cannot subscribe {spec.name!r}"):
            registered_at = await self._run(consumer.register, write=True)
        self._consumers.add(consumer)
        consumer.start(registered_at)
        return consumer

    async def _subscribe_local(self, spec: SubscriptionSpec, handler: Handler) -> LocalConsumer:
        """`subscribe` when this process owns the file: the cursor is read (a durable
        subscription's row created if new), and the consumer runs in memory."""
        if spec.name in self._local:
            # Two consumers sharing a subscription in one process would be one consumer with
            # more concurrency: say so rather than deliver each message to both.
            raise FailedPrecondition(f"subscription {spec.name!r} already has a consumer here")

        async def register(db: aiosqlite.Connection) -> int:
            row = await _fetch_one(
                db, "SELECT topic, cursor FROM bus_subscriptions WHERE name = ?", (spec.name,)
            )
            if row is not None:
                if row[0] != spec.topic:
                    raise FailedPrecondition(
                        f"subscription {spec.name!r} exists for topic {row[0]!r}, "
                        f"not {spec.topic!r}"
                    )
                return int(row[1])
            start = 0
            if spec.start_at_latest:
                end = await _fetch_one(db, "SELECT coalesce(max(seq), 0) FROM bus_messages")
                start = int(end[0])
            if not spec.ephemeral:
                now = self._clock.now_ns()
                await db.execute(
                    """
                    INSERT INTO bus_subscriptions
                        (name, topic, cursor, ephemeral, ttl_ns, last_seen_ns, created_ns)
                    VALUES (?, ?, ?, 0, ?, ?, ?)
                    """,
                    (spec.name, spec.topic, start, self._ephemeral_ttl_ns, now, now),
                )
            return start

        with _unavailable_on_sqlite_error(f"cannot subscribe {spec.name!r}"):
            cursor = await self._run(register, write=not spec.ephemeral)
        consumer = LocalConsumer(
            spec,
            handler,
            cursor=cursor,
            clock=self._clock,
            read=self._read_messages,
            publish=self.publish_many,
            on_closed=self._local_closed,
        )
        self._local[spec.name] = consumer
        consumer.start()
        return consumer

    async def _read_messages(self, topic: str, after: int, limit: int) -> list[Row]:
        rows = await self._run(
            lambda db: db.execute_fetchall(READ_SQL, (topic, after, limit)), write=False
        )
        return [(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    async def _local_closed(self, consumer: LocalConsumer) -> None:
        # Its cursor is written before it is forgotten, so a consumer opened next on the same
        # subscription starts where this one stopped.
        self._closed_local.append(consumer)
        if self._local.get(consumer.name) is consumer:
            del self._local[consumer.name]
        if self._closing:
            return  # the bus's close writes every cursor once
        try:
            await self.flush_cursors()
        except Exception:
            logger.exception(
                "could not write the cursor of %r; written at the next flush", consumer.name
            )

    async def flush_cursors(self) -> None:
        """Writes the cursors of this process's consumers that moved, in one transaction
        (single-process mode; a no-op otherwise)."""
        consumers = [*self._local.values(), *self._closed_local]
        moved = [(c, c.cursor) for c in consumers if c.durable and c.cursor > c.persisted]
        self._closed_local.clear()
        if not moved:
            return
        now = self._clock.now_ns()

        async def write(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE bus_subscriptions SET cursor = max(cursor, ?), last_seen_ns = ?"
                " WHERE name = ?",
                [(cursor, now, c.name) for c, cursor in moved],
            )

        try:
            await self._run(write, write=True)
        except BaseException:
            self._closed_local.extend(c for c, _ in moved if c.name not in self._local)
            raise
        for consumer, cursor in moved:
            consumer.persisted = max(consumer.persisted, cursor)

    def _claim_ownership(self, database: Path) -> None:
        """Takes `<database>-owners`: exclusively in single-process mode, shared otherwise,
        so that a single-process owner and processes sharing the file never run together."""
        fd = os.open(f"{database}-owners", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_EX if self._single_process else fcntl.LOCK_SH
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if self._single_process:
                raise StartupError(
                    f"{database} is in use by other TAI processes; stop them before starting "
                    "the single-process server on it"
                ) from None
            raise StartupError(
                f"{database} is owned by a single-process TAI server (tai-server); stop it, or "
                "use another file"
            ) from None
        self._owners_fd = fd

    def _release_ownership(self) -> None:
        if self._owners_fd is not None:
            with suppress(OSError):
                os.close(self._owners_fd)
            self._owners_fd = None

    async def close(self) -> None:
        """Closes every consumer of this bus (letting in-flight handlers finish, and publish),
        then the connection. Calling it again waits for the same close."""
        self._closing = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        await asyncio.gather(
            *(c.close() for c in list(self._consumers)),
            *(c.close() for c in list(self._local.values())),
        )
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._watch_db is not None:
            self._watch_db.close()
        try:
            await self.flush_cursors()
        except Exception:
            # Those messages are delivered again at the next start.
            logger.exception("could not write the consumers' cursors on close")
        async with self._lock:
            self._db_closed = True
            await self._db.close()
            if self._write_lock is not None:
                self._write_lock.close()
            self._release_ownership()

    def _wake_consumers(
        self, topics: Iterable[str] | None = None, *, exclude: _Consumer | None = None
    ) -> None:
        """Wakes local consumers after a local commit, which `data_version` does not report to
        the committing connection."""
        wanted = None if topics is None else set(topics)
        consumers: list[_Consumer | LocalConsumer] = [*self._consumers, *self._local.values()]
        for consumer in consumers:
            if consumer is not exclude and (wanted is None or consumer.topic in wanted):
                consumer.wake()

    async def _run(self, body: Callable[[aiosqlite.Connection], Awaitable[T]], *, write: bool) -> T:
        """Runs `body` on the connection, in a `BEGIN IMMEDIATE` transaction when `write`.

        The whole body is retried when SQLite reports BUSY, so it must only touch the database.
        """
        delay = 0.01
        attempt = 1
        while True:
            async with self._lock:
                if self._db_closed:
                    raise Unavailable("the event bus is closed")
                try:
                    if not write:
                        return await body(self._db)
                    async with self._write_lock or nullcontext():
                        await self._db.execute("BEGIN IMMEDIATE")
                        try:
                            result = await body(self._db)
                            await self._db.execute("COMMIT")
                        except BaseException:
                            # Shielded: a cancelled caller must not leave the transaction open
                            # for the next user of the connection.
                            await asyncio.shield(self._rollback())
                            raise
                    return result
                except BaseException as exc:
                    if not _is_busy(exc) or attempt >= _BUSY_ATTEMPTS:
                        raise
            logger.debug("event bus database busy (attempt %d); retrying", attempt)
            await asyncio.sleep(delay)
            delay *= 4
            attempt += 1

    async def _rollback(self) -> None:
        # Errors mean no transaction was open (BEGIN failed or COMMIT went through) or the
        # connection is gone; either way nothing is left to undo.
        with suppress(sqlite3.Error, ValueError):
            await self._db.execute("ROLLBACK")

    async def _watch(self) -> None:
        """Wakes consumers when another connection commits, and runs the janitor."""
        last_version: int | None = None
        next_janitor = self._clock.monotonic() + self._janitor_interval
        next_flush = self._clock.monotonic() + self._cursor_flush_interval
        failures = 0
        # Nothing to poll for in single-process mode: only the flushes and the janitor.
        interval = self._cursor_flush_interval if self._single_process else self._poll_interval
        while True:
            await asyncio.sleep(interval)
            try:
                if self._single_process and self._clock.monotonic() >= next_flush:
                    await self.flush_cursors()
                    next_flush = self._clock.monotonic() + self._cursor_flush_interval
                if self._consumers and self._watch_db is not None:
                    # Cheap: WAL keeps the change counter in shared memory.
                    version = self._data_version(self._watch_db)
                    if version is None or version != last_version:
                        last_version = version
                        self._wake_changed_consumers(self._watch_db)
                if self._clock.monotonic() >= next_janitor:
                    await self._janitor_pass()
                    next_janitor = self._clock.monotonic() + self._janitor_interval
                failures = 0
            except Exception:
                failures += 1
                logger.exception("event bus watcher failed; retrying")
                await asyncio.sleep(min(0.05 * 2**failures, _MAX_ERROR_BACKOFF_SECONDS))

    @staticmethod
    def _data_version(db: sqlite3.Connection) -> int | None:
        """The file's change counter as `db` sees it; None when a lock was in the way."""
        try:
            row = db.execute("PRAGMA data_version").fetchone()
        except sqlite3.OperationalError as error:
            if _is_busy(error):
                return None
            raise
        return int(row[0])

    def _wake_changed_consumers(self, db: sqlite3.Connection) -> None:
        """After another connection's commit: wakes the consumers it may concern."""
        consumers = list(self._consumers)
        topics = sorted({c.topic for c in consumers})
        # One row per topic: its last seq, one seek in the (topic, seq) index each. A WAL read
        # takes no lock that a writer holds; should it still meet one, everyone is woken.
        sql = " UNION ALL ".join(
            ["SELECT ?, (SELECT max(seq) FROM bus_messages WHERE topic = ?)"] * len(topics)
        )
        try:
            rows = db.execute(sql, [t for topic in topics for t in (topic, topic)]).fetchall()
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise
            self._wake_consumers()
            return
        heads = {topic: head or 0 for topic, head in rows}
        for consumer in consumers:
            consumer.log_changed(heads.get(consumer.topic, 0))

    async def _janitor_pass(self) -> None:
        """Deletes ephemeral subscriptions of dead processes and expired settled messages."""
        now = self._clock.now_ns()
        cutoff = now - self._retention_ns

        async def inspect(db: aiosqlite.Connection) -> bool:
            stale = await _fetch_one(db, _STALE_EPHEMERAL_SQL, {"now": now})
            # seq order is publish order, so the first message is the oldest.
            oldest = await _fetch_one(
                db, "SELECT publish_time_ns FROM bus_messages ORDER BY seq LIMIT 1"
            )
            return stale is not None or (oldest is not None and oldest[0] < cutoff)

        async def clean(db: aiosqlite.Connection) -> None:
            stale = [r[0] for r in await db.execute_fetchall(_STALE_EPHEMERAL_SQL, {"now": now})]
            for name in stale:
                await db.execute("DELETE FROM bus_deliveries WHERE subscription = ?", (name,))
                await db.execute("DELETE FROM bus_subscriptions WHERE name = ?", (name,))
            if stale:
                logger.info("deleted abandoned ephemeral subscriptions %s", stale)
            for (topic,) in list(await db.execute_fetchall(_TOPICS_SQL)):
                pin = await _fetch_one(
                    db, "SELECT min(cursor) FROM bus_subscriptions WHERE topic = ?", (topic,)
                )
                limit = _SEQ_MAX if pin is None or pin[0] is None else pin[0]
                await db.execute(
                    _EXPIRE_SQL,
                    {"topic": topic, "limit": limit, "batch": _RETENTION_BATCH, "cutoff": cutoff},
                )

        # Look first without the write lock: most passes find nothing to do.
        if await self._run(inspect, write=False):
            await self._run(clean, write=True)


class _SharedLog:
    """`SqliteBus.event_log`: the statement a store transaction appends messages with, and
    the wake-up of this process's consumers once it has committed (other processes' notice
    the commit through `data_version`)."""

    def __init__(self, bus: SqliteBus) -> None:
        self._bus = bus

    def append_statement(
        self, messages: Sequence[OutgoingMessage]
    ) -> tuple[str, list[tuple[Any, ...]]]:
        _check_topics(messages)
        ids = [self._bus._ids.new_id("msg") for _ in messages]
        return _INSERT_MESSAGE_SQL, self._bus._rows(messages, ids)

    def appended(self, topics: set[str]) -> None:
        self._bus._wake_consumers(topics)


async def _create_schema(db: aiosqlite.Connection) -> None:
    for statement in _SCHEMA:
        await db.execute(statement)


class _Consumer:
    """One running consumer of a subscription: claims messages and runs the handler on them."""

    def __init__(
        self, bus: SqliteBus, spec: SubscriptionSpec, handler: Handler, owner: str
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._owner = owner
        self._clock = bus._clock
        self._wake = asyncio.Event()
        # Set when `close` begins: no more claims.
        self._closed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._inflight: dict[_Claimed, asyncio.Task[None]] = {}
        # Handler outcomes not yet written; flushed with the next claim.
        self._settlements: list[_Settlement] = []
        self._next_heartbeat_ns = 0
        # The topic's last seq when this consumer was last woken for it, and whether its last
        # scan saw messages in other hands: what decides if another process's commit concerns
        # it (`log_changed`).
        self._head_seen = 0
        self._saw_pending = True
        # Whether the last step read every message there was to take: only then does a batch
        # delay apply.
        self._caught_up = True
        # Set once the subscription row exists; a row missing after that was deleted under us.
        self._registered = False
        self._ttl_ns = bus._ephemeral_ttl_ns

    @property
    def topic(self) -> str:
        return self._spec.topic

    @property
    def _closing(self) -> bool:
        return self._closed.is_set()

    def wake(self) -> None:
        self._wake.set()

    def log_changed(self, head: int) -> None:
        """Another connection committed; `head` is the topic's last seq now."""
        if head > self._head_seen or self._saw_pending:
            self._head_seen = max(head, self._head_seen)
            self._wake.set()

    def _touched(self, now: int) -> None:
        """Notes a committed `_touch` (never inside the transaction: it may roll back)."""
        # Four refreshes per time-to-live, so a janitor never mistakes a live one for dead.
        self._next_heartbeat_ns = now + self._ttl_ns // 4
        self._registered = True

    def start(self, registered_at: int) -> None:
        """Starts the claim loop once `register` committed at `registered_at` (ns)."""
        self._touched(registered_at)
        self._loop_task = asyncio.create_task(
            self._loop(), name=f"sqlite-bus-consumer-{self._spec.name}"
        )

    async def close(self) -> None:
        """Stops claiming, waits for in-flight handlers (at most one ack deadline, after which
        their leases have lapsed anyway; handlers still running then are cancelled and their
        messages given back without counting the attempt), records the outcomes and, for an
        ephemeral subscription, deletes it with its state (an ephemeral subscription belongs to
        one consumer)."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._shutdown())
        # Shielded so a cancelled caller cannot leave leases and rows half cleaned up.
        await asyncio.shield(self._close_task)

    async def register(self, db: aiosqlite.Connection) -> int:
        """Creates the subscription row, or checks that an existing one is for our topic.

        Returns:
            The time of the registration (ns).
        """
        row = await _fetch_one(
            db, "SELECT topic FROM bus_subscriptions WHERE name = ?", (self._spec.name,)
        )
        if row is not None and row[0] != self._spec.topic:
            raise FailedPrecondition(
                f"subscription {self._spec.name!r} exists for topic {row[0]!r}, "
                f"not {self._spec.topic!r}"
            )
        now = self._clock.now_ns()
        await self._touch(db, now)
        return now

    async def _touch(self, db: aiosqlite.Connection, now: int) -> None:
        """Refreshes `last_seen_ns`, recreating the subscription if it is missing (new, or an
        ephemeral one a janitor removed while this process was stalled)."""
        cursor = await db.execute(
            "UPDATE bus_subscriptions SET last_seen_ns = ? WHERE name = ?", (now, self._spec.name)
        )
        if cursor.rowcount == 0:
            start = 0
            if self._spec.start_at_latest or self._registered:
                # The log's end: every message published from now on is past it.
                row = await _fetch_one(db, "SELECT coalesce(max(seq), 0) FROM bus_messages")
                start = row[0]
            if self._registered:
                logger.warning(
                    "subscription %r disappeared while consuming; recreated at the log's end",
                    self._spec.name,
                )
            await db.execute(
                """
                INSERT INTO bus_subscriptions
                    (name, topic, cursor, ephemeral, ttl_ns, last_seen_ns, created_ns)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    self._spec.name,
                    self._spec.topic,
                    start,
                    int(self._spec.ephemeral),
                    self._ttl_ns,
                    now,
                    now,
                ),
            )

    async def _loop(self) -> None:
        """The claim loop: settle finished deliveries, claim more, sleep until woken."""
        failures = 0
        while not self._closing:
            if self._spec.batch_delay_seconds > 0 and self._caught_up:
                # More messages and handlers' outcomes gather for the next transaction; a
                # close cuts the wait short. Never while behind: a backlog is taken as fast as
                # the handlers allow.
                await wait_event(self._closed, self._spec.batch_delay_seconds)
                if self._closing:
                    break
            self._wake.clear()
            due = self._next_heartbeat_ns
            try:
                next_due_ns = await self._step()
                failures = 0
                # A lease or backoff ending only matters when a handler slot is free to take
                # the message; otherwise a finishing handler wakes the loop.
                if next_due_ns is not None and self._capacity() > 0:
                    due = min(self._next_heartbeat_ns, next_due_ns)
            except Exception:
                failures += 1
                logger.exception("event bus consumer %r failed; retrying", self._spec.name)
                due = self._clock.now_ns() + int(
                    min(0.05 * 2**failures, _MAX_ERROR_BACKOFF_SECONDS) * NS_PER_SECOND
                )
            if self._closing:
                break
            # +1 ms so the timer fires after, not just before, the lease or backoff ends.
            timeout = max(due - self._clock.now_ns(), 0) / NS_PER_SECOND + 0.001
            await wait_event(self._wake, timeout)

    def _capacity(self) -> int:
        return self._spec.max_concurrency - len(self._inflight)

    async def _step(self) -> int | None:
        """One pass of the loop; returns when the next lease or backoff ends (ns), if known."""
        capacity = self._capacity()
        must_write = bool(self._settlements) or self._clock.now_ns() >= self._next_heartbeat_ns
        if not must_write:
            if capacity <= 0:
                return None
            # Look before taking the write lock: most wake-ups (another subscription's commit,
            # a message someone else claimed) leave nothing to claim.
            plan = await self._bus._run(
                lambda db: self._scan(db, self._clock.now_ns(), capacity, probe=True), write=False
            )
            if not plan.has_work:
                self._saw_pending = plan.next_due_ns is not None
                self._caught_up = True
                return plan.next_due_ns
        settlements, self._settlements = self._settlements, []
        try:
            result = await self._bus._run(
                lambda db: self._settle_and_claim(db, settlements, capacity), write=True
            )
        except BaseException:
            self._settlements[:0] = settlements
            raise
        if result.touched_at is not None:
            self._touched(result.touched_at)
        self._saw_pending = result.next_due_ns is not None
        self._caught_up = result.caught_up
        if result.freed:
            self._bus._wake_consumers([self.topic], exclude=self)
            if not result.caught_up:
                # It settled what it read and there is more: no handler's outcome or new
                # message would wake it for the rest (left-out events, a long dead-letter run).
                self._wake.set()
        if result.dead_letter_topic is not None:
            self._bus._wake_consumers([result.dead_letter_topic])
        for claimed in result.claimed:
            self._inflight[claimed] = asyncio.create_task(self._deliver(claimed))
        return result.next_due_ns

    async def _scan(
        self, db: aiosqlite.Connection, now: int, capacity: int, *, probe: bool = False
    ) -> _Plan:
        """Finds what to claim (at most `capacity`) and what to dead-letter.

        Args:
            db: The connection, inside the claim transaction unless `probe`.
            now: The current time (ns).
            capacity: Handlers this consumer can start.
            probe: Stop at the first claimable message (only asking whether to claim).
        """
        # Each window in one hop to SQLite's thread (a cursor costs one per chunk and one to
        # close). The join runs lazily, so a small first window spares reading a whole backlog
        # when its first messages decide the plan, as they almost always do.
        for window in (_FIRST_SCAN_WINDOW, _SCAN_WINDOW):
            params = {"name": self._spec.name, "topic": self.topic, "window": window}
            rows = list(await db.execute_fetchall(_SCAN_SQL, params))
            plan, decided = self._plan(rows, now, capacity, probe=probe)
            if decided or len(rows) < window:
                break
        plan.more = decided or len(rows) >= window
        return plan

    def _plan(
        self, rows: Iterable[Any], now: int, capacity: int, *, probe: bool
    ) -> tuple[_Plan, bool]:
        """`_scan`'s plan from the rows of a window, and whether they decided it (the plan
        stopped before the window's end, so later messages cannot change it)."""
        plan = _Plan()
        # Keys with an earlier unsettled message: their later messages must wait.
        blocked: set[str] = set()
        wanted = self._spec.event_types
        for seq, key, attempts, visible_at, event_type in rows:
            if wanted and event_type not in wanted:
                # Never delivered, so it holds up nothing: settled in the claim transaction.
                plan.unwanted.append(_Pending(seq, key, attempts, visible_at))
                if probe:
                    return plan, True
                continue
            if key and key in blocked:
                continue
            pending = _Pending(seq, key, attempts, visible_at)
            if visible_at > now:
                # Leased (by anyone, this consumer included) or backing off after a nack.
                plan.due_at(visible_at)
                blocked.add(key)
                continue
            if attempts >= self._spec.max_delivery_attempts:
                # Settled in the same transaction, so the key's next message may follow.
                plan.dead.append(pending)
            elif len(plan.claims) < capacity:
                plan.claims.append(pending)
                blocked.add(key)
            else:
                return plan, True
            if probe:
                return plan, True
        return plan, False

    async def _settle_and_claim(
        self, db: aiosqlite.Connection, settlements: list[_Settlement], capacity: int
    ) -> _StepResult:
        """The write transaction of a step: record outcomes, dead-letter, claim, move the
        cursor."""
        now = self._clock.now_ns()
        # Only when the heartbeat is due: a subscription is only ever removed (by a janitor)
        # after a time-to-live without one, so until then the row is there.
        touched_at = None
        if now >= self._next_heartbeat_ns:
            await self._touch(db, now)
            touched_at = now
        freed = await self._apply(db, settlements, now)
        # Not read while every handler is busy: there may be more, as far as the loop knows.
        plan = (
            await self._scan(db, now, capacity)
            if capacity > 0 and not self._closing
            else _Plan(more=True)
        )
        claimed: list[_Claimed] = []
        dead_letter_topic: str | None = None
        if plan.unwanted:
            await self._settle_undelivered(db, plan.unwanted)
            freed = True
        if plan.claims or plan.dead:
            contents = await self._load(db, [p.seq for p in plan.claims + plan.dead])
            if plan.dead:
                await self._dead_letter(db, plan.dead, contents, now)
                dead_letter_topic = self._spec.dead_letter
                freed = True
            lease_expiry = now + int(self._spec.ack_deadline_seconds * NS_PER_SECOND)
            await db.executemany(
                _LEASE_SQL,
                [
                    {
                        "name": self._spec.name,
                        "seq": p.seq,
                        "attempt": p.attempts + 1,
                        "visible_at": lease_expiry,
                        "owner": self._owner,
                    }
                    for p in plan.claims
                ],
            )
            for p in plan.claims:
                message_id, key, attributes, data, publish_time_ns = contents[p.seq]
                message = Message(
                    message_id=message_id,
                    topic=self.topic,
                    data=data,
                    ordering_key=key,
                    attributes=json.loads(attributes),
                    publish_time_ns=publish_time_ns,
                    delivery_attempt=p.attempts + 1,
                )
                claimed.append(_Claimed(message, p.seq, lease_expiry))
        if freed:
            await self._advance_cursor(db)
        return _StepResult(
            touched_at, claimed, plan.next_due_ns, freed, dead_letter_topic, not plan.more
        )

    async def _apply(
        self, db: aiosqlite.Connection, settlements: list[_Settlement], now: int
    ) -> bool:
        """Writes handler outcomes; True when a message was settled or given back."""
        by_outcome: dict[_Outcome, list[dict[str, Any]]] = {outcome: [] for outcome in _Outcome}
        for s in settlements:
            params: dict[str, Any] = {
                "name": self._spec.name,
                "seq": s.seq,
                "attempt": s.attempt,
                "owner": self._owner,
            }
            if s.outcome is _Outcome.NACK:
                if s.attempt >= self._spec.max_delivery_attempts:
                    # Next stop is the dead-letter topic: no point waiting for a backoff.
                    delay = 0.0
                else:
                    delay = min(
                        self._spec.min_backoff_seconds * 2 ** (s.attempt - 1),
                        self._spec.max_backoff_seconds,
                    )
                params["visible_at"] = now + int(delay * NS_PER_SECOND)
            elif s.outcome is _Outcome.RELEASE:
                params["now"] = now
            by_outcome[s.outcome].append(params)
        freed = False
        # One statement per outcome, each one hop; its rowcount sums over the rows.
        for outcome, sql in (
            (_Outcome.ACK, _ACK_SQL),
            (_Outcome.NACK, _NACK_SQL),
            (_Outcome.RELEASE, _RELEASE_SQL),
        ):
            if by_outcome[outcome]:
                cursor = await db.executemany(sql, by_outcome[outcome])
                freed = freed or (cursor.rowcount > 0 and outcome is not _Outcome.NACK)
        return freed

    async def _load(
        self, db: aiosqlite.Connection, seqs: list[int]
    ) -> dict[int, tuple[str, str, str, bytes, int]]:
        marks = ",".join("?" * len(seqs))
        rows = await db.execute_fetchall(
            "SELECT seq, message_id, ordering_key, attributes, data, publish_time_ns"
            f" FROM bus_messages WHERE seq IN ({marks})",
            seqs,
        )
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    async def _dead_letter(
        self,
        db: aiosqlite.Connection,
        dead: list[_Pending],
        contents: dict[int, tuple[str, str, str, bytes, int]],
        now: int,
    ) -> None:
        rows = []
        for p in dead:
            message_id, key, attributes, data, _ = contents[p.seq]
            attrs = json.loads(attributes) | {
                DEAD_LETTER_SOURCE_SUBSCRIPTION: self._spec.name,
                DEAD_LETTER_SOURCE_MESSAGE_ID: message_id,
                DEAD_LETTER_DELIVERY_ATTEMPTS: str(p.attempts),
            }
            rows.append(
                (
                    self._spec.dead_letter,
                    self._bus._ids.new_id("msg"),
                    key,
                    json.dumps(attrs),
                    data,
                    now,
                )
            )
            logger.warning(
                "message %s of subscription %r failed %d deliveries; sent to %r",
                message_id,
                self._spec.name,
                p.attempts,
                self._spec.dead_letter,
            )
        await db.executemany(_INSERT_MESSAGE_SQL, rows)
        await self._settle_undelivered(db, dead)

    async def _settle_undelivered(self, db: aiosqlite.Connection, pending: list[_Pending]) -> None:
        """Marks messages settled for this subscription without (further) delivery."""
        await db.executemany(
            _SETTLE_SQL,
            [{"name": self._spec.name, "seq": p.seq, "attempts": p.attempts} for p in pending],
        )

    async def _advance_cursor(self, db: aiosqlite.Connection) -> None:
        """Moves the cursor over the settled prefix and forgets its delivery rows."""
        name = self._spec.name
        row = await _fetch_one(db, "SELECT cursor FROM bus_subscriptions WHERE name = ?", (name,))
        if row is None:
            return
        cursor: int = row[0]
        first = await _fetch_one(
            db, _FIRST_UNSETTLED_SQL, {"name": name, "topic": self.topic, "cursor": cursor}
        )
        if first is not None:
            new_cursor = first[0] - 1
        else:
            last = await _fetch_one(
                db, "SELECT max(seq) FROM bus_messages WHERE topic = ?", (self.topic,)
            )
            new_cursor = cursor if last is None or last[0] is None else last[0]
        if new_cursor > cursor:
            await db.execute(
                "UPDATE bus_subscriptions SET cursor = ? WHERE name = ?", (new_cursor, name)
            )
            await db.execute(
                "DELETE FROM bus_deliveries WHERE subscription = ? AND seq <= ?",
                (name, new_cursor),
            )

    async def _deliver(self, claimed: _Claimed) -> None:
        """Runs the handler on one delivery and queues its outcome."""
        message = claimed.message
        # Stays None only for exits like KeyboardInterrupt: the lease then simply lapses.
        outcome: _Outcome | None = None
        try:
            await self._handler(message)
            outcome = _Outcome.ACK
        except asyncio.CancelledError:
            outcome = _Outcome.RELEASE
            raise
        except Exception:
            # The port's contract: a handler that raises nacks the message.
            outcome = _Outcome.NACK
            logger.warning(
                "handler of subscription %r failed on message %s (attempt %d)",
                self._spec.name,
                message.message_id,
                message.delivery_attempt,
                exc_info=True,
            )
        finally:
            if outcome is not None:
                self._settlements.append(
                    _Settlement(claimed.seq, message.delivery_attempt, outcome)
                )
            # Freed before the loop wakes, so its next claim sees the capacity.
            del self._inflight[claimed]
            self._wake.set()

    async def _shutdown(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        await finish_or_cancel(self._inflight.values(), self._spec.ack_deadline_seconds)

        settlements, self._settlements = self._settlements, []

        async def finish(db: aiosqlite.Connection) -> None:
            if await self._apply(db, settlements, self._clock.now_ns()):
                await self._advance_cursor(db)
            if self._spec.ephemeral:
                await db.execute(
                    "DELETE FROM bus_deliveries WHERE subscription = ?", (self._spec.name,)
                )
                await db.execute("DELETE FROM bus_subscriptions WHERE name = ?", (self._spec.name,))

        try:
            await self._bus._run(finish, write=True)
        except Exception:
            # The outcomes are lost: those messages are delivered again once their leases end.
            logger.exception("closing consumer of %r failed", self._spec.name)
        finally:
            self._bus._consumers.discard(self)
            self._bus._wake_consumers([self.topic])


if TYPE_CHECKING:
    # Keeps the log honest about what the store expects of it (checked by mypy only).
    _log_conforms: type[SqliteEventLog] = _SharedLog
