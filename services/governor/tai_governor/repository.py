"""Where the Governor keeps policies in the DocumentStore.

- `policies/{id}`: the current version of each policy (what lists and filters read);
- `policy_versions/{id}:{version}`: every version, immutable, with its change-log revision;
- `governor_meta/revision`: the last revision handed out. Every change takes the next one in the
  same transaction, so revisions order all policy changes without gaps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from tai_common.ports import (
    DOC_ID,
    Cursor,
    DocumentStore,
    Filter,
    IndexSpec,
    Op,
    Order,
    Query,
    Transaction,
)

from tai_governor.policy import PolicyState, PolicyVersion

POLICIES = "policies"
VERSIONS = "policy_versions"
META = "governor_meta"
REVISION_DOC = "revision"

INDEXES = (
    IndexSpec(POLICIES, ("policy_type",)),
    IndexSpec(POLICIES, ("state",)),
    IndexSpec(VERSIONS, ("revision",)),
    IndexSpec(VERSIONS, ("id", "version"), descending=(False, True)),
)


def version_key(policy_id: str, version: int) -> str:
    # Zero-padded so that document ids sort in version order.
    return f"{policy_id}:{version:012d}"


class PolicyRepository:
    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    # --- inside a transaction ---

    async def current_in(self, tx: Transaction, policy_id: str) -> PolicyVersion | None:
        doc = await tx.get(POLICIES, policy_id)
        return PolicyVersion.from_doc(doc.data) if doc else None

    async def version_in(
        self, tx: Transaction, policy_id: str, version: int
    ) -> PolicyVersion | None:
        doc = await tx.get(VERSIONS, version_key(policy_id, version))
        return PolicyVersion.from_doc(doc.data) if doc else None

    async def last_revision_in(self, tx: Transaction) -> int:
        doc = await tx.get(META, REVISION_DOC)
        return int(doc.data["value"]) if doc else 0

    async def count_in_states(
        self, tx: Transaction, states: Sequence[PolicyState], *, limit: int
    ) -> int:
        """How many policies are in one of `states`, counted up to `limit`."""
        page = await tx.query(
            Query(
                POLICIES,
                filters=(Filter.is_in("state", [s.value for s in states]),),
                limit=limit,
            )
        )
        return len(page.documents)

    def write_in(self, tx: Transaction, policy: PolicyVersion) -> None:
        """Writes a new version: the version record, the current pointer and the revision."""
        doc = policy.to_doc()
        tx.create(VERSIONS, version_key(policy.id, policy.version), doc)
        tx.set(POLICIES, policy.id, doc)
        tx.set(META, REVISION_DOC, {"value": policy.revision})

    # --- reads ---

    async def last_revision(self) -> int:
        doc = await self._store.get(META, REVISION_DOC)
        return int(doc.data["value"]) if doc else 0

    async def current(self, policy_id: str) -> PolicyVersion | None:
        doc = await self._store.get(POLICIES, policy_id)
        return PolicyVersion.from_doc(doc.data) if doc else None

    async def version(self, policy_id: str, version: int) -> PolicyVersion | None:
        doc = await self._store.get(VERSIONS, version_key(policy_id, version))
        return PolicyVersion.from_doc(doc.data) if doc else None

    async def list_current(
        self,
        *,
        policy_type: str,
        enabled_only: bool,
        states: Sequence[PolicyState],
        limit: int,
        start_after: Cursor | None,
    ) -> tuple[list[PolicyVersion], Cursor | None]:
        filters: list[Filter] = []
        if policy_type:
            filters.append(Filter.eq("policy_type", policy_type))
        if enabled_only:
            filters.append(Filter.eq("enabled", True))
        if states:
            filters.append(Filter.is_in("state", [s.value for s in states]))
        page = await self._store.query(
            Query(
                POLICIES,
                filters=tuple(filters),
                order_by=(Order(DOC_ID),),
                limit=limit,
                start_after=start_after,
            )
        )
        return [PolicyVersion.from_doc(d.data) for d in page.documents], page.next_cursor

    async def list_versions(
        self, policy_id: str, *, limit: int, start_after: Cursor | None
    ) -> tuple[list[PolicyVersion], Cursor | None]:
        page = await self._store.query(
            Query(
                VERSIONS,
                filters=(Filter.eq("id", policy_id),),
                order_by=(Order("version", descending=True),),
                limit=limit,
                start_after=start_after,
            )
        )
        return [PolicyVersion.from_doc(d.data) for d in page.documents], page.next_cursor

    async def iter_current(
        self, policy_type: str, page_size: int = 500
    ) -> AsyncIterator[PolicyVersion]:
        """Every current policy (of one type, if given), in id order."""
        cursor: Cursor | None = None
        while True:
            policies, cursor = await self.list_current(
                policy_type=policy_type,
                enabled_only=False,
                states=(),
                limit=page_size,
                start_after=cursor,
            )
            for policy in policies:
                yield policy
            if cursor is None:
                return

    async def iter_changes_after(
        self, revision: int, page_size: int = 500
    ) -> AsyncIterator[PolicyVersion]:
        """Every version with a revision above `revision`, in revision order."""
        cursor: Cursor | None = None
        while True:
            page = await self._store.query(
                Query(
                    VERSIONS,
                    filters=(Filter("revision", Op.GT, revision),),
                    order_by=(Order("revision"),),
                    limit=page_size,
                    start_after=cursor,
                )
            )
            for doc in page.documents:
                yield PolicyVersion.from_doc(doc.data)
            cursor = page.next_cursor
            if cursor is None:
                return
