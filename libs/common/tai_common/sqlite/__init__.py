"""The embedded backend: one SQLite file holds the documents (`SqliteStore`) and the event log
(`SqliteBus`), and a store on the bus's file appends events in its own transactions
(`SqliteEventLog`). `sql` compiles the store's queries; `write_lock` hands the file's write lock
from process to process."""

from tai_common.sqlite.bus import SqliteBus
from tai_common.sqlite.event_log import SqliteEventLog
from tai_common.sqlite.store import SqliteStore

__all__ = ["SqliteBus", "SqliteEventLog", "SqliteStore"]
