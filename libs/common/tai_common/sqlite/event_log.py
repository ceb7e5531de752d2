"""The seam between the two SQLite adapters in one file: the embedded event bus keeps its message
log in the file, and a store on the same file appends to that log in its transactions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tai_common.ports import OutgoingMessage


class SqliteEventLog(Protocol):
    """A message log that another adapter keeps in the store's file (the embedded event bus:
    `SqliteBus.event_log`). Transactions append to it with their writes, so an event and the
    change it describes commit together (`Transaction.publish`)."""

    def append_statement(
        self, messages: Sequence[OutgoingMessage]
    ) -> tuple[str, list[tuple[Any, ...]]]:
        """The statement, and its rows, that append `messages` to the log."""

    def appended(self, topics: set[str]) -> None:
        """Called once a transaction that appended messages of `topics` has committed."""
