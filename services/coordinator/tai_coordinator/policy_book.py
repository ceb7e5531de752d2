"""The Coordinator's in-memory view of the policies that can match signals.

Each policy's condition is compiled once per version. The book is filled from the Governor
(GetPolicies, at start and as a periodic safety net) and kept current by the Governor's policy
events on the bus — no call to the Governor per signal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tai.v1 import governor_pb2
from tai_common.core import Bindings, Condition, Evaluation, InvalidArgument, compile_condition

log = logging.getLogger(__name__)

LIVE_STATES = (governor_pb2.POLICY_STATE_ENFORCED, governor_pb2.POLICY_STATE_DRY_RUN)


@dataclass(frozen=True)
class ActivePolicy:
    """A policy whose condition is evaluated against every signal."""

    policy: governor_pb2.Policy
    condition: Condition

    @property
    def id(self) -> str:
        return self.policy.id

    @property
    def dry_run(self) -> bool:
        return self.policy.state == governor_pb2.POLICY_STATE_DRY_RUN


class PolicyBook:
    def __init__(self) -> None:
        self._active: dict[str, ActivePolicy] = {}
        # The highest version seen per policy, active or not, so a late event cannot bring back
        # an older version.
        self._versions: dict[str, int] = {}
        self.loaded = False
        # The Governor revision up to which every change is known (revisions have no gaps;
        # events may come out of order or not at all): how far this replica has caught up.
        self.revision = 0
        # Revisions applied above `revision`, waiting for the ones before them.
        self._ahead: set[int] = set()

    def apply(self, policy: governor_pb2.Policy) -> bool:
        """Takes a policy version into account; returns False when it is older than known."""
        self._advance(policy.revision)
        if policy.version <= self._versions.get(policy.id, 0):
            return False
        self._versions[policy.id] = policy.version
        if not _is_active(policy):
            self._active.pop(policy.id, None)
            return True
        try:
            condition = compile_condition(policy.condition)
        except InvalidArgument as error:
            # The Governor refuses such conditions; one here means a newer rule than ours.
            log.error("policy %s v%d: %s; ignoring it", policy.id, policy.version, error)
            self._active.pop(policy.id, None)
            return True
        self._active[policy.id] = ActivePolicy(policy, condition)
        return True

    def replace_all(self, live: Iterable[governor_pb2.Policy], as_of_revision: int = 0) -> None:
        """A full listing of the live policies (ENFORCED or DRY_RUN), taken after the Governor
        had reached `as_of_revision`: applies each, and drops active policies missing from it
        (revoked while we were not listening)."""
        listed = set()
        for policy in live:
            listed.add(policy.id)
            self.apply(policy)
        for policy_id in set(self._active) - listed:
            # Not dropped when this replica knows a change newer than the listing.
            if not as_of_revision or self._active[policy_id].policy.revision <= as_of_revision:
                del self._active[policy_id]
        if as_of_revision > self.revision:
            self.revision = as_of_revision
            self._ahead = {r for r in self._ahead if r > as_of_revision}
            self._advance(as_of_revision)
        self.loaded = True

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self._ahead.add(revision)
        while self.revision + 1 in self._ahead:
            self.revision += 1
            self._ahead.remove(self.revision)

    def evaluate(
        self, signal: Mapping[str, Any] | Bindings
    ) -> list[tuple[ActivePolicy, Evaluation]]:
        """Every active policy, ENFORCED and DRY_RUN, with its condition's evaluation against
        `signal`."""
        bindings = signal if isinstance(signal, Bindings) else Bindings(signal)
        return [(active, active.condition.evaluate(bindings)) for active in self._active.values()]

    def __len__(self) -> int:
        return len(self._active)


def _is_active(policy: governor_pb2.Policy) -> bool:
    return (
        policy.state in LIVE_STATES
        and policy.enabled
        and bool(policy.condition)
        and bool(policy.action.target_service)
    )


class PolicyBooks:
    """This replica's policy book of each namespace: a signal is evaluated against its own
    namespace's policies only. A namespace's book is made on first sight (a signal or a policy
    event in it) and loaded from the Governor then (`PolicySync.book`)."""

    def __init__(self) -> None:
        self._books: dict[str, PolicyBook] = {}

    def get(self, namespace: str) -> PolicyBook | None:
        """The namespace's book, if this replica has one."""
        return self._books.get(namespace)

    def of(self, namespace: str) -> PolicyBook:
        """The namespace's book, made empty (not loaded) when this replica has none yet."""
        book = self._books.get(namespace)
        if book is None:
            book = self._books[namespace] = PolicyBook()
        return book

    def namespaces(self) -> list[str]:
        """The namespaces this replica holds a book for."""
        return list(self._books)

    def retain(self, namespaces: Iterable[str]) -> None:
        """Forgets the books of every namespace not in `namespaces` (deleted ones)."""
        kept = set(namespaces)
        for namespace in [n for n in self._books if n not in kept]:
            del self._books[namespace]

    def revision(self, namespace: str) -> int:
        """How far the namespace's book has caught up with the Governor (0 without a book)."""
        book = self._books.get(namespace)
        return book.revision if book is not None else 0

    def __len__(self) -> int:
        """Active policies over every namespace (the replica's gauge)."""
        return sum(len(book) for book in self._books.values())
