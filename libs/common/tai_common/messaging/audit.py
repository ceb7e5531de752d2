"""The audit trail: who changed what, and which calls were refused — tamper-evident.

Services record an `AuditRecord` in the same store transaction as each change made through the
API (through the outbox, on `tai-audit-events`), and one for each refused call. The audit log
consumer appends every record to `audit_logs`, each carrying the hash of the previous one, so
that editing, removing or reordering a stored record breaks the chain, and `verify` finds the
first broken link.

The hash of a record is SHA-256 over the previous hash and the record's canonical JSON (its
fields but `hash`, keys sorted).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from tai.v1 import common_pb2

from tai_common.auth import current_principal
from tai_common.core import Clock, IdFactory
from tai_common.core.namespace import namespace_or_none
from tai_common.messaging import events, topics
from tai_common.ports import DocumentStore, Filter, IndexSpec, Op, Order, Query, Transaction

AUDIT_LOGS = "audit_logs"
AUDIT_META = "audit_meta"
HEAD = "head"
INDEXES = (IndexSpec(AUDIT_LOGS, ("seq",)), IndexSpec(AUDIT_LOGS, ("principal", "seq")))

_current_method: contextvars.ContextVar[str] = contextvars.ContextVar("tai_method", default="")


def set_current_method(method: str) -> None:
    """Set by the server for each call: the `action` of the audit records it causes."""
    _current_method.set(method)


def current_method() -> str:
    return _current_method.get()


def digest(document: Mapping[str, Any] | None) -> str:
    """SHA-256 of a document's canonical JSON ("" for no document)."""
    if document is None:
        return ""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def chain_hash(prev_hash: str, record: common_pb2.AuditRecord) -> str:
    fields = MessageToDict(record, preserving_proto_field_name=True)
    fields.pop("hash", None)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditTrail:
    """What a service uses to record audit entries."""

    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        ids: IdFactory,
        event_factory: events.EventFactory,
        on_committed: Callable[[], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids
        self._events = event_factory
        self._on_committed = on_committed

    def record_in(
        self,
        tx: Transaction,
        resource: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
        *,
        principal: str = "",
        action: str = "",
    ) -> None:
        """Records a change as part of the change's transaction: by the current caller in the
        current call, unless `principal` / `action` say otherwise (work a service does on its
        own, e.g. in an event consumer)."""
        self._add(
            tx,
            common_pb2.AuditRecord(
                principal=principal or current_principal().name,
                action=action or _current_method.get(),
                resource=resource,
                old_digest=digest(old),
                new_digest=digest(new),
                outcome="ok",
            ),
        )

    async def record_refusal(self, method: str, caller: str, code: str, reason: str) -> None:
        """Records a refused call (its own transaction: there is no change to join)."""

        async def write(tx: Transaction) -> None:
            self._add(
                tx,
                common_pb2.AuditRecord(
                    principal=caller, action=method, outcome=code, reason=reason
                ),
            )

        await self._store.run_transaction(write)
        self._on_committed()

    def _add(self, tx: Transaction, record: common_pb2.AuditRecord) -> None:
        record.record_id = self._ids.new_id("aud")
        record.time_ns = self._clock.now_ns()
        record.service = self._events.producer
        tx.publish(
            topics.AUDIT_EVENTS,
            self._events.build(
                event_type=f"audit.{record.outcome.lower()}",
                aggregate_type="audit",
                # The record's own id, so its ordering key: the chain's order is the order the
                # log appends in (it assigns `seq`), which needs no help from the bus. One key
                # for every record made the bus hand them out one at a time (as Pub/Sub does
                # per key), which held the log to about 60 appends a second.
                aggregate_id=record.record_id,
                aggregate_version=0,
                payload=record,
            ),
        )


@dataclass(frozen=True)
class Verification:
    intact: bool
    checked: int
    first_broken_seq: int = 0
    reason: str = ""


class AuditLog:
    """The appended, hash-chained log (`audit_logs`, document id = record id)."""

    def __init__(self, store: DocumentStore) -> None:
        self._store = store
        # Per namespace (each has its own chain): records waiting for the next append
        # transaction, with what their callers await, and the task writing them.
        # (None: a store used outside namespaces, as in tests of the log alone.)
        self._pending: dict[
            str | None, list[tuple[common_pb2.AuditRecord, asyncio.Future[None]]]
        ] = {}
        self._writers: dict[str | None, asyncio.Task[None]] = {}

    async def append(self, event_payload: common_pb2.AuditRecord) -> None:
        """Appends a record at the end of the current namespace's chain; a record already
        there is skipped (the bus delivers at least once). Returns once it is stored.

        Every append moves the chain's head, so appends cannot run side by side: those that
        arrive while a transaction is under way go together in the next one (one head read
        and write for the lot, instead of one transaction each queued behind the last).
        """
        namespace = namespace_or_none()
        record = common_pb2.AuditRecord()
        record.CopyFrom(event_payload)
        stored = asyncio.get_running_loop().create_future()
        self._pending.setdefault(namespace, []).append((record, stored))
        if namespace not in self._writers:
            # Created here, so the task works in this namespace.
            self._writers[namespace] = asyncio.create_task(
                self._write_pending(namespace), name=f"audit-log-append-{namespace}"
            )
        await stored

    async def _write_pending(self, namespace: str | None) -> None:
        try:
            while self._pending.get(namespace):
                batch = self._pending.pop(namespace)
                records = [record for record, _ in batch]
                try:
                    await self._store.run_transaction(functools.partial(_append, records=records))
                except Exception as error:
                    for _, stored in batch:
                        if not stored.done():
                            stored.set_exception(error)
                else:
                    for _, stored in batch:
                        if not stored.done():
                            stored.set_result(None)
        finally:
            del self._writers[namespace]

    async def records(
        self, after_seq: int, limit: int, principal: str = ""
    ) -> list[common_pb2.AuditRecord]:
        filters: tuple[Filter, ...] = (Filter.eq("principal", principal),) if principal else ()
        page = await self._store.query(
            Query(
                AUDIT_LOGS,
                filters=(*filters, Filter("seq", Op.GT, after_seq)),
                order_by=(Order("seq"),),
                limit=limit,
            )
        )
        return [_from_doc(d.data) for d in page.documents]

    async def verify(self, page_size: int = 500) -> Verification:
        """Walks the chain in order, recomputing each link."""
        checked = 0
        prev_hash = ""
        expected_seq = 1
        after = 0
        while True:
            batch = await self.records(after, page_size)
            for record in batch:
                checked += 1
                if record.seq != expected_seq:
                    return Verification(
                        False, checked, expected_seq, f"record {expected_seq} is missing"
                    )
                if record.prev_hash != prev_hash:
                    return Verification(
                        False, checked, record.seq, "its link to the previous record is broken"
                    )
                if chain_hash(prev_hash, record) != record.hash:
                    return Verification(
                        False, checked, record.seq, "its content does not match its hash"
                    )
                prev_hash = record.hash
                expected_seq += 1
                after = record.seq
            if len(batch) < page_size:
                break
        head = await self._store.get(AUDIT_META, HEAD)
        if head is not None and int(head.data["seq"]) != expected_seq - 1:
            return Verification(
                False, checked, expected_seq, "records at the end of the chain are missing"
            )
        return Verification(True, checked)


async def _append(tx: Transaction, records: list[common_pb2.AuditRecord]) -> None:
    """Chains `records` after the head, in order, skipping those already stored."""
    ids = [record.record_id for record in records]
    stored = {doc.id for doc in await tx.get_many(AUDIT_LOGS, ids)}
    head = await tx.get(AUDIT_META, HEAD)
    seq = head_seq = int(head.data["seq"]) if head else 0
    prev_hash = str(head.data["hash"]) if head else ""
    for record in records:
        if record.record_id in stored:
            continue
        stored.add(record.record_id)  # a record delivered twice into one batch
        seq += 1
        record.seq = seq
        record.prev_hash = prev_hash
        record.hash = chain_hash(prev_hash, record)
        prev_hash = record.hash
        tx.create(AUDIT_LOGS, record.record_id, _to_doc(record))
    if seq != head_seq:
        tx.set(AUDIT_META, HEAD, {"seq": seq, "hash": prev_hash})


def _to_doc(record: common_pb2.AuditRecord) -> dict[str, Any]:
    doc = MessageToDict(
        record, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # int64 fields travel as strings in proto JSON; the store orders them as numbers.
    doc["seq"] = record.seq
    doc["time_ns"] = record.time_ns
    return doc


def _from_doc(data: Mapping[str, Any]) -> common_pb2.AuditRecord:
    return ParseDict(dict(data), common_pb2.AuditRecord(), ignore_unknown_fields=True)
