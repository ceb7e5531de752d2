"""Silences: maintenance windows that hold back the actions of matching signals.

A silence matches a policy's decision when every matcher field it sets matches: its CEL
condition over the signal, the policy's target service, the policy's id. Between its start and
its end (or until someone expires it), a matching enforced policy creates no action; the
signal's decision record names the silence (`HOLD_REASON_SILENCE`).

Every replica keeps the silences that have not ended in a `SilenceBook` per namespace (a
silence holds back the actions of its own namespace only), read from the store every
`refresh_seconds` and updated at once by the changes this replica makes, so a silence created on
one replica holds on the others within that interval, with no store read per signal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from tai_common.core import (
    AlreadyExists,
    Bindings,
    Clock,
    Condition,
    IdFactory,
    InvalidArgument,
    NotFound,
    TaiError,
    compile_condition,
    decode_page_token,
    encode_page_token,
    page_size,
)
from tai_common.core.namespace import current_namespace
from tai_common.core.units import seconds_to_ns
from tai_common.core.validation import require_id
from tai_common.messaging import AuditTrail
from tai_common.ports import (
    Cursor,
    DocumentStore,
    Filter,
    IndexSpec,
    Op,
    Order,
    Query,
    Transaction,
)

from tai_coordinator import metrics
from tai_coordinator.decisions import Hold, HoldReason
from tai_coordinator.model import MAX_MESSAGE_LENGTH, check_id, check_length, check_service_name
from tai_coordinator.policy_book import ActivePolicy

log = logging.getLogger(__name__)

MAX_SILENCE_NS = seconds_to_ns(30 * 24 * 3600)
# `silences/{id}`, kept this long after they end (ListSilences with include_expired).
SILENCES = "silences"
ENDED_SILENCE_RETENTION_NS = seconds_to_ns(30 * 24 * 3600)
INDEXES = (
    IndexSpec(SILENCES, ("ends_at_ns",)),
    IndexSpec(SILENCES, ("created_at_ns",)),
)


class SilenceState(StrEnum):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Silence:
    id: str
    starts_at_ns: int
    ends_at_ns: int
    comment: str
    created_by: str
    created_at_ns: int
    condition: str = ""
    target_service: str = ""
    policy_id: str = ""
    expired_by: str = ""
    expired_at_ns: int = 0

    def state(self, now_ns: int) -> SilenceState:
        if now_ns >= self.ends_at_ns:
            return SilenceState.EXPIRED
        return SilenceState.ACTIVE if now_ns >= self.starts_at_ns else SilenceState.PENDING

    def same_request(self, other: Silence) -> bool:
        """Whether `other` asks for the same silence (a retry of the same create)."""
        fields = ("condition", "target_service", "policy_id", "ends_at_ns", "comment")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "starts_at_ns": self.starts_at_ns,
            "ends_at_ns": self.ends_at_ns,
            "comment": self.comment,
            "created_by": self.created_by,
            "created_at_ns": self.created_at_ns,
            "condition": self.condition,
            "target_service": self.target_service,
            "policy_id": self.policy_id,
            "expired_by": self.expired_by,
            "expired_at_ns": self.expired_at_ns,
            "expires_at_ns": self.ends_at_ns + ENDED_SILENCE_RETENTION_NS,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> Silence:
        return cls(
            id=data["id"],
            starts_at_ns=int(data["starts_at_ns"]),
            ends_at_ns=int(data["ends_at_ns"]),
            comment=data.get("comment", ""),
            created_by=data.get("created_by", ""),
            created_at_ns=int(data.get("created_at_ns", 0)),
            condition=data.get("condition", ""),
            target_service=data.get("target_service", ""),
            policy_id=data.get("policy_id", ""),
            expired_by=data.get("expired_by", ""),
            expired_at_ns=int(data.get("expired_at_ns", 0)),
        )


@dataclass(frozen=True)
class SilenceRequest:
    """A CreateSilence call: `starts_at_ns` 0 is now."""

    silence_id: str
    condition: str
    target_service: str
    policy_id: str
    starts_at_ns: int
    ends_at_ns: int
    comment: str

    def validate(self, now_ns: int) -> None:
        """Raises `InvalidArgument` naming the first field to fix."""
        if self.silence_id:
            check_id(self.silence_id, "id")
        if not (self.condition or self.target_service or self.policy_id):
            raise InvalidArgument(
                "matcher", "set at least one of condition, target_service, policy_id"
            )
        if self.condition:
            compile_condition(self.condition, "matcher.condition")
        if self.target_service:
            check_service_name(self.target_service, "matcher.target_service")
        if self.policy_id:
            check_id(self.policy_id, "matcher.policy_id")
        if not self.comment.strip():
            raise InvalidArgument("comment", "is required: say why the actions are held back")
        check_length("comment", self.comment, MAX_MESSAGE_LENGTH)
        if self.starts_at_ns < 0:
            raise InvalidArgument("starts_at_ns", "must not be negative")
        start = self.starts_at_ns or now_ns
        if self.ends_at_ns <= max(start, now_ns):
            raise InvalidArgument("ends_at_ns", "must be after the start, and in the future")
        if self.ends_at_ns - start > MAX_SILENCE_NS:
            raise InvalidArgument("ends_at_ns", "a silence lasts at most 30 days")


@dataclass(frozen=True)
class _Entry:
    silence: Silence
    condition: Condition | None


class SilenceBook:
    """The silences that have not ended, as this replica knows them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def put(self, silence: Silence) -> None:
        """Takes a silence (new, changed, or ended) into account."""
        condition = compile_condition(silence.condition) if silence.condition else None
        self._entries[silence.id] = _Entry(silence, condition)

    def replace_all(self, silences: Iterable[Silence]) -> None:
        """The silences that have not ended, as read from the store."""
        self._entries = {}
        for silence in silences:
            try:
                self.put(silence)
            except InvalidArgument as error:  # refused at creation; one here is from elsewhere
                log.error("silence %s: %s; ignoring it", silence.id, error)

    def hold_for(self, active: ActivePolicy, bindings: Bindings, now_ns: int) -> Hold | None:
        """The hold of the first active silence matching `active`'s decision on the signal of
        `bindings`, if any."""
        policy = active.policy
        for entry in self._entries.values():
            silence = entry.silence
            if silence.state(now_ns) is not SilenceState.ACTIVE:
                continue
            if silence.policy_id and silence.policy_id != policy.id:
                continue
            if silence.target_service and silence.target_service != policy.action.target_service:
                continue
            if entry.condition is not None and not entry.condition.matches(bindings):
                continue
            return Hold(HoldReason.SILENCE, silence.ends_at_ns, silence.id)
        return None

    def count(self, state: SilenceState, now_ns: int) -> int:
        return sum(1 for e in self._entries.values() if e.silence.state(now_ns) is state)


class SilenceBooks:
    """This replica's `SilenceBook` of each namespace."""

    def __init__(self) -> None:
        self._books: dict[str, SilenceBook] = {}

    def get(self, namespace: str) -> SilenceBook | None:
        """The namespace's book, if this replica has read it."""
        return self._books.get(namespace)

    def set(self, namespace: str, book: SilenceBook) -> None:
        self._books[namespace] = book

    def retain(self, namespaces: Iterable[str]) -> None:
        """Forgets the books of every namespace not in `namespaces` (deleted ones)."""
        kept = set(namespaces)
        for namespace in [n for n in self._books if n not in kept]:
            del self._books[namespace]

    def count(self, state: SilenceState, now_ns: int) -> int:
        """Silences in `state` over every namespace (the replica's gauge)."""
        return sum(book.count(state, now_ns) for book in self._books.values())


class SilenceRepository:
    """Where silences are kept in the DocumentStore."""

    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    async def silence_in(self, tx: Transaction, silence_id: str) -> Silence | None:
        doc = await tx.get(SILENCES, silence_id)
        return Silence.from_doc(doc.data) if doc else None

    def put_silence_in(self, tx: Transaction, silence: Silence) -> None:
        tx.set(SILENCES, silence.id, silence.to_doc())

    async def silence(self, silence_id: str) -> Silence | None:
        doc = await self._store.get(SILENCES, silence_id)
        return Silence.from_doc(doc.data) if doc else None

    async def not_ended(self, now_ns: int, limit: int = 10_000) -> list[Silence]:
        page = await self._store.query(
            Query(
                SILENCES,
                filters=(Filter("ends_at_ns", Op.GT, now_ns),),
                order_by=(Order("ends_at_ns"),),
                limit=limit,
            )
        )
        return [Silence.from_doc(d.data) for d in page.documents]

    async def list(
        self, *, not_ended_at_ns: int, limit: int, start_after: Cursor | None
    ) -> tuple[list[Silence], Cursor | None]:
        """Newest first; with `not_ended_at_ns`, only those ending after it (soonest first)."""
        if not_ended_at_ns:
            query = Query(
                SILENCES,
                filters=(Filter("ends_at_ns", Op.GT, not_ended_at_ns),),
                order_by=(Order("ends_at_ns"),),
                limit=limit,
                start_after=start_after,
            )
        else:
            query = Query(
                SILENCES,
                order_by=(Order("created_at_ns", descending=True),),
                limit=limit,
                start_after=start_after,
            )
        page = await self._store.query(query)
        return [Silence.from_doc(d.data) for d in page.documents], page.next_cursor


class SilenceService:
    """CreateSilence, ListSilences, GetSilence, ExpireSilence, and keeping the book current."""

    def __init__(
        self,
        store: DocumentStore,
        books: SilenceBooks,
        clock: Clock,
        ids: IdFactory,
        audit: AuditTrail,
    ) -> None:
        self._store = store
        self._repo = SilenceRepository(store)
        self._books = books
        self._clock = clock
        self._ids = ids
        self._audit = audit
        metrics.SILENCES.labels(state="active").set_function(
            lambda: books.count(SilenceState.ACTIVE, clock.now_ns())
        )
        metrics.SILENCES.labels(state="pending").set_function(
            lambda: books.count(SilenceState.PENDING, clock.now_ns())
        )

    async def create(self, request: SilenceRequest, principal: str) -> Silence:
        now = self._clock.now_ns()
        request.validate(now)
        silence = Silence(
            id=request.silence_id or self._ids.new_id("sil"),
            starts_at_ns=request.starts_at_ns or now,
            ends_at_ns=request.ends_at_ns,
            comment=request.comment,
            created_by=principal,
            created_at_ns=now,
            condition=request.condition,
            target_service=request.target_service,
            policy_id=request.policy_id,
        )

        async def apply(tx: Transaction) -> Silence:
            existing = await self._repo.silence_in(tx, silence.id)
            if existing is not None:
                if not existing.same_request(silence):
                    raise AlreadyExists(
                        "silence",
                        silence.id,
                        f"silence id {silence.id!r} was already used for another silence; "
                        "use a new id",
                    )
                return existing
            self._repo.put_silence_in(tx, silence)
            self._audit.record_in(tx, f"silence/{silence.id}", None, silence.to_doc())
            return silence

        stored = await self._store.run_transaction(apply)
        (await self.book()).put(stored)
        return stored

    async def expire(self, silence_id: str, comment: str, principal: str) -> Silence:
        _check_silence_id(silence_id)
        check_length("comment", comment, MAX_MESSAGE_LENGTH)

        async def apply(tx: Transaction) -> Silence:
            silence = await self._repo.silence_in(tx, silence_id)
            if silence is None:
                raise NotFound("silence", silence_id)
            now = self._clock.now_ns()
            if silence.state(now) is SilenceState.EXPIRED:
                return silence  # already ended: nothing changes
            expired = replace(silence, ends_at_ns=now, expired_by=principal, expired_at_ns=now)
            self._repo.put_silence_in(tx, expired)
            after = {**expired.to_doc(), "expire_comment": comment}
            self._audit.record_in(tx, f"silence/{silence_id}", silence.to_doc(), after)
            return expired

        silence = await self._store.run_transaction(apply)
        (await self.book()).put(silence)
        return silence

    async def get(self, silence_id: str) -> Silence:
        _check_silence_id(silence_id)
        silence = await self._repo.silence(silence_id)
        if silence is None:
            raise NotFound("silence", silence_id)
        return silence

    async def list(
        self, *, include_expired: bool, requested_page_size: int, page_token: str
    ) -> tuple[list[Silence], str]:
        """Newest first with `include_expired`; otherwise those not ended, soonest end first."""
        scope = f"silences|{include_expired}"
        silences, cursor = await self._repo.list(
            not_ended_at_ns=0 if include_expired else self._clock.now_ns(),
            limit=page_size(requested_page_size),
            start_after=decode_page_token(page_token, scope),
        )
        return silences, encode_page_token(cursor, scope)

    async def book(self) -> SilenceBook:
        """The current namespace's book, read from the store first when this replica has not
        read it yet (a namespace's first signal after start, before the refresh pass)."""
        book = self._books.get(current_namespace())
        if book is None:
            book = await self.refresh()
        return book

    async def refresh(self) -> SilenceBook:
        """Reads the current namespace's silences that have not ended into its book."""
        namespace = current_namespace()
        book = self._books.get(namespace)
        if book is None:
            book = SilenceBook()
        book.replace_all(await self._repo.not_ended(self._clock.now_ns()))
        self._books.set(namespace, book)
        return book

    async def refresh_pass(self, namespace: str) -> None:
        """A namespace's refresh (run inside it every few seconds by a namespace pass); a store
        outage keeps the silences known."""
        try:
            await self.refresh()
        except TaiError as error:
            log.warning(
                "cannot read the silences of namespace %s (%s); keeping those known",
                namespace,
                error.message,
            )


def _check_silence_id(silence_id: str) -> None:
    require_id(silence_id, "silence_id")
