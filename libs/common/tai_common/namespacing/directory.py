"""`NamespaceDirectory`: the installation's namespaces (the root collection `namespaces`, one
document per namespace), as every replica sees them: read again every
`namespace_refresh_seconds`, and read through at once for a name it does not know yet, so a
namespace is usable on every replica as soon as its creation returns.

A document: `name`, `description`, `quotas` (the four `tai.v1.NamespaceQuotas` fields),
`state` ("ACTIVE" | "DELETING"), `created_at_ns`, `created_by`, `updated_at_ns`. The default
namespace exists whether or not it has a document (it gets one when its quotas are set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from tai_common.core import AlreadyExists, Clock, FailedPrecondition, NotFound, ResourceExhausted
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace
from tai_common.namespacing.store import NAMESPACES
from tai_common.ports import DocumentStore, Query, Transaction

log = logging.getLogger(__name__)

ACTIVE: Final = "ACTIVE"
DELETING: Final = "DELETING"
# The collections whose documents are a namespace's resources: a namespace holding any is not
# deleted unless forced. They are the services' own collections (policies: the Governor;
# signals, actions, silences: the Coordinator; tasks: the Scheduler), named here because the
# Governor, which deletes namespaces, imports no other service.
RESOURCE_COLLECTIONS: Final = ("policies", "signals", "actions", "silences", "tasks")


@dataclass(frozen=True)
class Quotas:
    """A namespace's limits; 0 = the installation's default (0 there: unlimited)."""

    max_enforced_policies: int = 0
    max_signals_per_second: int = 0
    max_open_tasks: int = 0
    rate_limit_per_second: int = 0

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> Quotas:
        data = data or {}
        return cls(**{k: int(data.get(k, 0) or 0) for k in cls.__dataclass_fields__})

    def over(self, defaults: Quotas) -> Quotas:
        """These quotas, with the defaults where they set none."""
        return Quotas(
            **{k: getattr(self, k) or getattr(defaults, k) for k in self.__dataclass_fields__}
        )


@dataclass(frozen=True)
class NamespaceRecord:
    name: str
    description: str = ""
    quotas: Quotas = field(default_factory=Quotas)
    state: str = ACTIVE
    created_at_ns: int = 0
    created_by: str = ""
    updated_at_ns: int = 0

    @classmethod
    def from_data(cls, name: str, data: Mapping[str, Any]) -> NamespaceRecord:
        return cls(
            name=name,
            description=str(data.get("description", "")),
            quotas=Quotas.from_data(data.get("quotas")),
            state=str(data.get("state", ACTIVE)),
            created_at_ns=int(data.get("created_at_ns", 0)),
            created_by=str(data.get("created_by", "")),
            updated_at_ns=int(data.get("updated_at_ns", 0)),
        )

    def to_data(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("name")
        return data

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


class NamespaceDirectory:
    """The namespaces of the installation (see the module)."""

    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        *,
        refresh_seconds: float = 1.0,
        max_namespaces: int = 100,
        default_quotas: Quotas | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self.max_namespaces = max_namespaces
        self.default_quotas = default_quotas or Quotas()
        self._known: dict[str, NamespaceRecord] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    # --- reading ---

    async def all(self) -> list[NamespaceRecord]:
        """Every namespace, "default" first, then in order of creation."""
        await self._refresh_if_stale()
        return list(self._known.values())

    async def serving(self) -> list[str]:
        """The namespaces background passes serve: the active ones."""
        return [r.name for r in await self.all() if r.active]

    async def get(self, name: str) -> NamespaceRecord | None:
        """The namespace, read through when this replica does not know it yet."""
        await self._refresh_if_stale()
        record = self._known.get(name)
        if record is None:
            document = await self._store.get(NAMESPACES, name)
            if document is not None:
                record = NamespaceRecord.from_data(name, document.data)
                self._known[name] = record
        return record

    @property
    def sets_rate_limits(self) -> bool:
        """Whether any namespace this replica knows sets its own rate limit (when none does,
        the rate-limit interceptor needs no lookup per call)."""
        return any(r.quotas.rate_limit_per_second for r in self._known.values())

    def metric_label(self, name: str, labelled: int) -> str:
        """The `namespace` label of `name`'s metrics: its own for the first `labelled`
        namespaces ("default" first, then by creation), "other" for the rest, so that the
        number of series stays bounded however many namespaces there are."""
        for index, known in enumerate(self._known):
            if index >= labelled:
                break
            if known == name:
                return name
        return "other"

    async def quotas(self, name: str) -> Quotas:
        """The namespace's effective quotas (its own over the installation's defaults)."""
        record = await self.get(name)
        own = record.quotas if record is not None else Quotas()
        return own.over(self.default_quotas)

    async def _refresh_if_stale(self) -> None:
        if time.monotonic() - self._loaded_at < self._refresh_seconds:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at < self._refresh_seconds:
                return
            await self.refresh()

    async def refresh(self) -> None:
        """Reads every namespace again."""
        page = await self._store.query(Query(NAMESPACES, limit=self.max_namespaces + 1))
        records = {d.id: NamespaceRecord.from_data(d.id, d.data) for d in page.documents}
        default = records.pop(DEFAULT_NAMESPACE, NamespaceRecord(DEFAULT_NAMESPACE))
        ordered = sorted(records.values(), key=lambda r: (r.created_at_ns, r.name))
        self._known = {DEFAULT_NAMESPACE: default, **{r.name: r for r in ordered}}
        self._loaded_at = time.monotonic()

    # --- changing ---

    async def create(
        self, name: str, *, description: str, quotas: Quotas, created_by: str
    ) -> NamespaceRecord:
        """Creates the namespace: `AlreadyExists` if it exists (the default always does),
        `ResourceExhausted` past `max_namespaces`."""
        if name == DEFAULT_NAMESPACE:
            raise AlreadyExists("namespace", name)
        now = self._clock.now_ns()
        record = NamespaceRecord(
            name,
            description,
            quotas,
            ACTIVE,
            created_at_ns=now,
            created_by=created_by,
            updated_at_ns=now,
        )

        async def create(tx: Transaction) -> None:
            existing = await tx.query(Query(NAMESPACES, limit=self.max_namespaces))
            if len([d for d in existing.documents if d.id != DEFAULT_NAMESPACE]) + 1 >= (
                self.max_namespaces
            ):
                raise ResourceExhausted(
                    f"the installation holds its maximum of {self.max_namespaces} namespaces "
                    "(TAI_MAX_NAMESPACES)"
                )
            tx.create(NAMESPACES, name, record.to_data())

        await self._store.run_transaction(create)
        self._known[name] = record
        return record

    async def set_quotas(self, name: str, quotas: Quotas) -> NamespaceRecord:
        """Replaces the namespace's quotas."""
        return await self._update(name, lambda current: replace(current, quotas=quotas))

    async def mark_deleting(self, name: str) -> NamespaceRecord:
        """Marks the namespace DELETING: from now on it refuses calls, and `purge` empties
        it."""
        return await self._update(name, lambda current: replace(current, state=DELETING))

    async def _update(
        self, name: str, change: Callable[[NamespaceRecord], NamespaceRecord]
    ) -> NamespaceRecord:
        """Applies `change` to an active namespace (`NotFound`, or `FailedPrecondition` when
        it is being deleted)."""

        async def update(tx: Transaction) -> NamespaceRecord:
            document = await tx.get(NAMESPACES, name)
            if document is None and name != DEFAULT_NAMESPACE:
                raise NotFound("namespace", name)
            current = (
                NamespaceRecord.from_data(name, document.data)
                if document is not None
                else NamespaceRecord(name)
            )
            if not current.active:
                raise FailedPrecondition(f"namespace {name!r} is being deleted")
            changed = replace(change(current), updated_at_ns=self._clock.now_ns())
            tx.set(NAMESPACES, name, changed.to_data())
            return changed

        record = await self._store.run_transaction(update)
        self._known[name] = record
        return record

    async def resources(self, name: str) -> list[str]:
        """The resource collections of the namespace that hold any document (one read each:
        a check, not a count)."""
        held: list[str] = []
        with in_namespace(name):
            for collection in RESOURCE_COLLECTIONS:
                if (await self._store.query(Query(collection, limit=1))).documents:
                    held.append(collection)
        return held

    async def remove(self, name: str) -> None:
        """Forgets an empty namespace."""
        await self._store.delete(NAMESPACES, name)
        self._known.pop(name, None)

    async def purge(self, *, batch: int = 500) -> int:
        """One pass over the namespaces being deleted: deletes up to `batch` of their
        documents each, and forgets those left empty. Returns the documents deleted."""
        deleted = 0
        for record in await self.all():
            if record.active:
                continue
            gone = await self._store.drop_namespace(record.name, batch=batch)
            deleted += gone
            if gone < batch:
                await self.remove(record.name)
                log.info("namespace %s is deleted", record.name)
        return deleted


async def for_each_namespace(
    directory: NamespaceDirectory, work: Callable[[str], Awaitable[Any]]
) -> None:
    """Runs `work(name)` inside each active namespace in turn."""
    for name in await directory.serving():
        with in_namespace(name):
            await work(name)
