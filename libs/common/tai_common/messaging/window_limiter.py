"""The WindowLimiter kept in the DocumentStore (the embedded default, and Firestore when the cache
is not Redis): each key's window is one document, read and written in the caller's transaction,
so an admission commits or rolls back with the change it admits.

Concurrent admissions under one key are correct because both stores serialise transactions that
write the same document: SQLite has one writer at a time (across processes too), and Firestore
runs optimistic transactions again when a document they read was changed meanwhile. Admissions
under one key therefore queue behind each other; different keys do not contend.

The document (collection `limit_windows`, id the SHA-256 of the key, so any key makes a valid id
on every store):

    {"key": "policy:p1",
     "admitted": [{"member": "action-1", "at_ns": 1700000000000000000}, ...],  # oldest first
     "expires_at_ns": <newest at_ns + window_ns>}

`admitted` holds the members the window counts, pruned of those outside the window whenever the
document is written, so it never holds more than `limit` of them. `expires_at_ns` lets the
store's TTL remove a key that is no longer used once its last member has left the window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from tai_common.ports import (
    Admission,
    AdmissionRequest,
    IndexSpec,
    Transaction,
    check_collection,
)

WINDOWS = check_collection("limit_windows")
# Windows are read by id only: no index; they expire (scripts/firestore_indexes.py's TTL policy).
INDEXES: tuple[IndexSpec, ...] = ()

# One admitted member: {"member": str, "at_ns": int}.
Entry = dict[str, Any]


def window_document_id(key: str) -> str:
    """The id of the document that holds `key`'s window."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_window(limit: int, window_ns: int) -> None:
    """Raises ValueError unless `limit` and `window_ns` are positive."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if window_ns < 1:
        raise ValueError(f"window_ns must be positive, not {window_ns}")


class StoreWindowLimiter:
    """Sliding windows kept in the store, one document per key, written in the caller's
    transaction (see the module docstring)."""

    async def admit(
        self,
        tx: Transaction,
        key: str,
        member: str,
        *,
        limit: int,
        window_ns: int,
        now_ns: int,
    ) -> Admission:
        """Admits `member` under `key` when fewer than `limit` other members were admitted in
        (now_ns - window_ns, now_ns]; a member already counted is admitted again without a
        write. Reads, then (when it admits a new member) writes `key`'s document in `tx`."""
        [admission] = await self.admit_all(
            tx, [AdmissionRequest(key, member, limit, window_ns)], now_ns
        )
        return admission

    async def admit_all(
        self, tx: Transaction, requests: Sequence[AdmissionRequest], now_ns: int
    ) -> list[Admission]:
        """`admit` for each request, in order, each admitted or refused on its own (a request
        sees the admissions of the requests before it). Reads every window in one `get_many`,
        then writes once each window that admitted a new member."""
        for request in requests:
            check_window(request.limit, request.window_ns)
        if not requests:
            return []
        doc_ids = {request.key: window_document_id(request.key) for request in requests}
        documents = {d.id: d for d in await tx.get_many(WINDOWS, list(doc_ids.values()))}
        windows: dict[str, list[Entry]] = {
            key: list(documents[doc_id].data["admitted"]) if doc_id in documents else []
            for key, doc_id in doc_ids.items()
        }
        # A key named with several windows keeps its members for the longest.
        longest: dict[str, int] = {}
        changed: set[str] = set()
        admissions: list[Admission] = []
        for request in requests:
            key = request.key
            longest[key] = max(longest.get(key, 0), request.window_ns)
            admission, admitted = _admit(windows[key], request, now_ns)
            admissions.append(admission)
            if admitted is not None:
                windows[key] = admitted
                changed.add(key)
        for key in changed:
            # Written pruned of the members every window has left, oldest first.
            kept = _counted(windows[key], longest[key], now_ns)
            tx.set(
                WINDOWS,
                doc_ids[key],
                {
                    "key": key,
                    "admitted": kept,
                    "expires_at_ns": _admitted_at(kept[-1]) + longest[key],
                },
            )
        return admissions

    async def close(self) -> None:
        """Nothing to release: the store belongs to the caller."""


def _admit(
    entries: list[Entry], request: AdmissionRequest, now_ns: int
) -> tuple[Admission, list[Entry] | None]:
    """The admission of `request` against a window's `entries`, and the entries after it (None
    when they do not change)."""
    counted = _counted(entries, request.window_ns, now_ns)
    if any(entry["member"] == request.member for entry in counted):
        return Admission(True, len(counted)), None
    if len(counted) >= request.limit:
        return Admission(False, len(counted), _admitted_at(counted[0]) + request.window_ns), None
    # A member that left the window comes back as a new event, in place of its old entry.
    others = [entry for entry in entries if entry["member"] != request.member]
    return Admission(True, len(counted) + 1), [
        *others,
        {"member": request.member, "at_ns": now_ns},
    ]


def _counted(entries: list[Entry], window_ns: int, now_ns: int) -> list[Entry]:
    """The entries in (now_ns - window_ns, now_ns] and after (another replica's clock may run
    ahead), oldest first."""
    return sorted((e for e in entries if _admitted_at(e) > now_ns - window_ns), key=_admitted_at)


def _admitted_at(entry: Entry) -> int:
    return int(entry["at_ns"])
