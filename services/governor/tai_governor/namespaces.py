"""The Governor's namespace calls: a platform admin creates namespaces, sets their quotas and
deletes them; every caller lists the namespaces it holds. The namespaces themselves are
`tai_common.namespacing.NamespaceDirectory`'s; this checks requests, audits the changes (in
the default namespace's trail, the platform's own) and answers in protobuf."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tai.v1 import governor_pb2
from tai_common.auth import Principal
from tai_common.core import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tai_common.core.namespace import (
    ALL_NAMESPACES,
    DEFAULT_NAMESPACE,
    in_namespace,
    namespace_name_problem,
)
from tai_common.messaging import AuditTrail
from tai_common.namespacing import ACTIVE, NamespaceDirectory, NamespaceRecord, Quotas
from tai_common.ports import DocumentStore, Transaction

_STATES = {
    ACTIVE: governor_pb2.NAMESPACE_STATE_ACTIVE,
    "DELETING": governor_pb2.NAMESPACE_STATE_DELETING,
}
_MAX_DESCRIPTION = 1000


def namespace_message(record: NamespaceRecord) -> governor_pb2.Namespace:
    """The API's view of a namespace."""
    q = record.quotas
    return governor_pb2.Namespace(
        name=record.name,
        description=record.description,
        quotas=governor_pb2.NamespaceQuotas(
            max_enforced_policies=q.max_enforced_policies,
            max_signals_per_second=q.max_signals_per_second,
            max_open_tasks=q.max_open_tasks,
            rate_limit_per_second=q.rate_limit_per_second,
        ),
        state=_STATES.get(record.state, governor_pb2.NAMESPACE_STATE_UNSPECIFIED),
        created_at_ns=record.created_at_ns,
        created_by=record.created_by,
        updated_at_ns=record.updated_at_ns,
    )


def quotas_from(message: governor_pb2.NamespaceQuotas, field: str) -> Quotas:
    """The quotas a request sets; each must be 0 (the installation's default) or more."""
    for name in Quotas.__dataclass_fields__:
        if getattr(message, name) < 0:
            raise InvalidArgument(f"{field}.{name}", "must be 0 (the default) or more")
    return Quotas(
        max_enforced_policies=message.max_enforced_policies,
        max_signals_per_second=message.max_signals_per_second,
        max_open_tasks=message.max_open_tasks,
        rate_limit_per_second=message.rate_limit_per_second,
    )


def _checked_name(name: str, field: str = "name") -> str:
    if not name:
        raise InvalidArgument(field, "is required")
    problem = namespace_name_problem(name)
    if problem is not None:
        raise InvalidArgument(field, problem)
    return name


class NamespaceAdmin:
    """The namespace calls' domain."""

    def __init__(
        self,
        directory: NamespaceDirectory,
        store: DocumentStore,
        audit: AuditTrail,
        on_committed: Callable[[], None],
    ) -> None:
        """`on_committed` wakes the outbox relay after an audited change."""
        self._directory = directory
        self._store = store
        self._audit = audit
        self._on_committed = on_committed

    async def create(
        self, principal: Principal, name: str, description: str, quotas: Quotas
    ) -> NamespaceRecord:
        _checked_name(name)
        if len(description) > _MAX_DESCRIPTION:
            raise InvalidArgument("description", f"must be at most {_MAX_DESCRIPTION} characters")
        record = await self._directory.create(
            name, description=description, quotas=quotas, created_by=principal.name
        )
        await self._record(f"namespace/{name}", None, record.to_data())
        return record

    async def list(self, principal: Principal) -> list[NamespaceRecord]:
        """The namespaces `principal` holds a role in (every one, for a role in "*")."""
        records = await self._directory.all()
        held = principal.held_namespaces()
        if ALL_NAMESPACES in held:
            return records
        return [r for r in records if r.name in held]

    async def get(self, principal: Principal, name: str) -> NamespaceRecord:
        _checked_name(name)
        if principal.role_in(name) is None:
            raise PermissionDenied(f"{principal.name} has no role in namespace {name!r}")
        record = await self._directory.get(name)
        if record is None:
            raise NotFound("namespace", name)
        return record

    async def set_quotas(self, name: str, quotas: Quotas) -> NamespaceRecord:
        _checked_name(name)
        before = await self._directory.get(name)
        record = await self._directory.set_quotas(name, quotas)
        await self._record(
            f"namespace/{name}", before.to_data() if before else None, record.to_data()
        )
        return record

    async def delete(self, name: str, *, force: bool) -> NamespaceRecord:
        """Refuses while the namespace holds resources, unless `force`: then marks it
        DELETING, and the Governor's purge worker deletes its data in the background."""
        _checked_name(name)
        if name == DEFAULT_NAMESPACE:
            raise FailedPrecondition("the default namespace cannot be deleted")
        record = await self._directory.get(name)
        if record is None:
            raise NotFound("namespace", name)
        if not force:
            held = await self._directory.resources(name)
            if held:
                raise FailedPrecondition(
                    f"namespace {name!r} still holds {', '.join(sorted(held))}: delete them "
                    "first, or delete with force=true to delete everything it holds"
                )
        deleting = await self._directory.mark_deleting(name)
        await self._record(f"namespace/{name}", record.to_data(), deleting.to_data())
        return deleting

    async def _record(
        self, resource: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]
    ) -> None:
        async def write(tx: Transaction) -> None:
            self._audit.record_in(tx, resource, old, new)

        with in_namespace(DEFAULT_NAMESPACE):
            await self._store.run_transaction(write)
        self._on_committed()
