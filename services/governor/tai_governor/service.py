"""The Governor's use cases: propose, enforce, revoke, read and stream policies.

Each change is one store transaction that writes the new version, its change-log revision, the
idempotency record of the request and the policy event (through the outbox), so either all of
it happens or none of it does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Gauge
from tai.v1 import events_pb2
from tai_common.core import (
    Aborted,
    Clock,
    IdFactory,
    InvalidArgument,
    NotFound,
    PageRequest,
    ResourceExhausted,
    page_scope,
)
from tai_common.core.namespace import current_namespace, in_namespace
from tai_common.messaging import (
    AuditTrail,
    Broadcaster,
    ListenerLagged,
    events,
    idempotency,
    topics,
)
from tai_common.namespacing import NamespaceDirectory
from tai_common.ports import Cache, DocumentStore, Filter, Transaction

from tai_governor import metrics
from tai_governor.convert import policy_from_proto, policy_to_proto
from tai_governor.feed import PolicyFeed
from tai_governor.policy import (
    EVALUATED_STATES,
    PolicyContent,
    PolicyState,
    PolicyVersion,
    check_policy_id,
    check_transition,
    validate_content,
)
from tai_governor.policy_cache import PolicyCache
from tai_governor.repository import POLICIES, PolicyRepository

T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    """Who asks for a change, and how to recognise its retries."""

    principal: str
    request_id: str = ""
    # Digest of the request without its request id (see tai_common.messaging.idempotency).
    fingerprint: str = ""


@dataclass(frozen=True)
class Outcome:
    """The result of a change, as recorded for idempotent replays."""

    receipt_id: str
    timestamp_ns: int
    policy: PolicyVersion
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        return {
            "receipt_id": self.receipt_id,
            "timestamp_ns": self.timestamp_ns,
            "policy": self.policy.to_doc(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Outcome:
        return cls(
            receipt_id=record["receipt_id"],
            timestamp_ns=int(record["timestamp_ns"]),
            policy=PolicyVersion.from_doc(record["policy"]),
            replayed=True,
        )


class PolicyService:
    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        ids: IdFactory,
        event_factory: events.EventFactory,
        on_committed: Callable[[], None],
        until_stopping: Callable[[Awaitable[Any]], Awaitable[Any]],
        cache: Cache,
        audit: AuditTrail,
        namespaces: NamespaceDirectory,
    ) -> None:
        """`on_committed` is called after every committed change (it wakes the outbox relay);
        `until_stopping` wraps every wait of a stream so streams end on shutdown; `namespaces`
        gives each namespace's quotas."""
        self._store = store
        self._repo = PolicyRepository(store)
        self.cache = PolicyCache(cache, self._repo)
        self._audit = audit
        self._clock = clock
        self._ids = ids
        self._events = event_factory
        self._on_committed = on_committed
        self._until_stopping = until_stopping
        self._namespaces = namespaces
        # Per namespace (each has its own revisions): streams listen to the namespace's
        # broadcaster, which its feed fills in revision order.
        self._feeds: dict[str, tuple[PolicyFeed, Broadcaster[PolicyVersion]]] = {}

    async def feed(self) -> tuple[PolicyFeed, Broadcaster[PolicyVersion]]:
        """The current namespace's feed and the broadcaster it fills (started on first use)."""
        namespace = current_namespace()
        found = self._feeds.get(namespace)
        if found is None:
            changes: Broadcaster[PolicyVersion] = Broadcaster()
            feed = PolicyFeed(self._repo, changes.publish, self.cache.changed)
            await feed.start()
            found = self._feeds.setdefault(namespace, (feed, changes))
        return found

    async def catch_up_feed(self, namespace: str) -> None:
        """One pass of the current namespace's feed: reads the changes the bus did not bring
        (a worker runs it in every namespace)."""
        feed, _ = await self.feed()
        await feed.catch_up_if_behind()

    async def revision(self) -> int:
        """The current namespace's last policy revision this replica knows of (from its own
        changes and the bus; read from the store on the namespace's first use): a listing
        made after this call reflects at least every change up to it, with no store read."""
        return await self.cache.known_revision()

    def feed_revision(self, namespace: str) -> int:
        """The last revision the namespace's feed published (0 before it started)."""
        found = self._feeds.get(namespace)
        return found[0].revision if found else 0

    # --- changes ---

    async def propose(
        self,
        change: Change,
        *,
        policy_id: str,
        expected_version: int,
        content: PolicyContent | None,
        rollback_to_version: int = 0,
    ) -> Outcome:
        """A new policy, or a new version of `policy_id` with `content` (or, with
        `rollback_to_version`, with that version's content). The new version is PROPOSED."""
        if policy_id:
            check_policy_id(policy_id)
        if expected_version < 0:
            raise InvalidArgument("version", "must not be negative")
        if rollback_to_version < 0:
            raise InvalidArgument("rollback_to_version", "must not be negative")
        if rollback_to_version and not policy_id:
            raise InvalidArgument("id", "is required to roll a policy back")
        if not rollback_to_version:
            if content is None:
                raise InvalidArgument("policy", "content is required")
            validate_content(content)
        new_id = policy_id or self._ids.new_id("pol")

        async def apply(tx: Transaction) -> Outcome:
            now = self._clock.now_ns()
            current = await self._repo.current_in(tx, new_id)
            if current is not None:
                _check_expected(current, expected_version)
            proposed_content = content
            if rollback_to_version:
                if current is None:
                    raise NotFound("policy", new_id)
                source = await self._repo.version_in(tx, new_id, rollback_to_version)
                if source is None:
                    raise NotFound("policy version", f"{new_id} v{rollback_to_version}")
                proposed_content = source.content
            assert proposed_content is not None
            revision = await self._repo.last_revision_in(tx) + 1
            if current is None:
                policy = PolicyVersion(
                    id=new_id,
                    version=1,
                    state=PolicyState.PROPOSED,
                    content=proposed_content,
                    created_at_ns=now,
                    updated_at_ns=now,
                    created_by=change.principal,
                    last_modified_by=change.principal,
                    revision=revision,
                )
            else:
                policy = current.successor(
                    state=PolicyState.PROPOSED,
                    now_ns=now,
                    principal=change.principal,
                    revision=revision,
                    content=proposed_content,
                    rolled_back_from_version=rollback_to_version,
                )
            return self._commit(tx, change, "ProposePolicy", policy, current, now)

        return await self._change(change, "ProposePolicy", apply)

    async def enforce(
        self, change: Change, *, policy_id: str, expected_version: int, dry_run: bool, reason: str
    ) -> Outcome:
        """Moves the policy to ENFORCED (or DRY_RUN)."""
        target = PolicyState.DRY_RUN if dry_run else PolicyState.ENFORCED
        return await self._transition(
            change, "EnforcePolicy", policy_id, expected_version, target, reason
        )

    async def revoke(
        self, change: Change, *, policy_id: str, expected_version: int, reason: str
    ) -> Outcome:
        return await self._transition(
            change, "RevokePolicy", policy_id, expected_version, PolicyState.REVOKED, reason
        )

    async def _transition(
        self,
        change: Change,
        scope: str,
        policy_id: str,
        expected_version: int,
        target: PolicyState,
        reason: str,
    ) -> Outcome:
        if not policy_id:
            raise InvalidArgument("id", "is required")
        check_policy_id(policy_id)
        if expected_version < 0:
            raise InvalidArgument("version", "must not be negative")
        if len(reason) > 1000:
            raise InvalidArgument("reason", "must be at most 1000 characters")

        quota = (await self._namespaces.quotas(current_namespace())).max_enforced_policies

        async def apply(tx: Transaction) -> Outcome:
            now = self._clock.now_ns()
            current = await self._repo.current_in(tx, policy_id)
            if current is None:
                raise NotFound("policy", policy_id)
            _check_expected(current, expected_version)
            check_transition(current, target)
            revision = await self._repo.last_revision_in(tx) + 1
            if quota and target in _EVALUATED and current.state not in _EVALUATED:
                # Exact under concurrency: every change of the namespace's policies writes its
                # revision document, read above, so two enforcements cannot both pass.
                evaluated = await self._repo.count_in_states(tx, _EVALUATED, limit=quota)
                if evaluated >= quota:
                    raise ResourceExhausted(
                        f"namespace {current_namespace()!r} quota max_enforced_policies="
                        f"{quota} reached: revoke a policy first, or ask a platform admin to "
                        "raise the quota"
                    )
            policy = current.successor(
                state=target,
                now_ns=now,
                principal=change.principal,
                revision=revision,
                reason=reason,
            )
            return self._commit(tx, change, scope, policy, current, now)

        return await self._change(change, scope, apply)

    async def _change(
        self, change: Change, scope: str, apply: Callable[[Transaction], Awaitable[Outcome]]
    ) -> Outcome:
        idempotency.check_request_id(change.request_id)

        async def run(tx: Transaction) -> Outcome:
            if change.request_id:
                record = await idempotency.recall(tx, scope, change.request_id, change.fingerprint)
                if record is not None:
                    return Outcome.from_record(record)
            return await apply(tx)

        outcome = await self._store.run_transaction(run)
        if not outcome.replayed:
            metrics.POLICY_CHANGES.labels(state=outcome.policy.state.value).inc()
            self._on_committed()
            await self.cache.changed(outcome.policy)
        return outcome

    def _commit(
        self,
        tx: Transaction,
        change: Change,
        scope: str,
        policy: PolicyVersion,
        previous: PolicyVersion | None,
        now: int,
    ) -> Outcome:
        self._repo.write_in(tx, policy)
        self._audit.record_in(
            tx,
            f"policy/{policy.id}",
            previous.to_doc() if previous is not None else None,
            policy.to_doc(),
        )
        event = self._events.build(
            event_type=f"policy.{policy.state.value.lower()}",
            aggregate_type="policy",
            aggregate_id=policy.id,
            aggregate_version=policy.version,
            payload=events_pb2.PolicyEvent(
                policy=policy_to_proto(policy),
                previous_state=(
                    policy_to_proto(previous).state if previous is not None else 0  # type: ignore[arg-type]
                ),
            ),
        )
        tx.publish(topics.POLICIES, event)
        outcome = Outcome(receipt_id=self._ids.new_id("rcpt"), timestamp_ns=now, policy=policy)
        if change.request_id:
            idempotency.remember(
                tx, scope, change.request_id, change.fingerprint, outcome.to_record(), now
            )
        return outcome

    # --- reads ---

    async def get(self, policy_id: str, version: int = 0) -> PolicyVersion:
        if not policy_id:
            raise InvalidArgument("id", "is required")
        check_policy_id(policy_id)
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        policy = (
            await self._repo.version(policy_id, version)
            if version
            else await self.cache.current(policy_id)
        )
        if policy is None:
            if version and await self._repo.current(policy_id) is not None:
                raise NotFound("policy version", f"{policy_id} v{version}")
            raise NotFound("policy", policy_id)
        return policy

    async def list_policies(
        self,
        *,
        policy_type: str,
        enabled_only: bool,
        states: Sequence[PolicyState],
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[PolicyVersion], str]:
        """The current versions matching every filter given: `policy_type`, `states` (any of
        them; repeats are ignored) and `enabled_only` (the enabled policies that are evaluated
        against signals: ENFORCED or DRY_RUN)."""
        wanted = sorted(set(states))
        if enabled_only:
            wanted = sorted((set(wanted) or set(PolicyState)) & EVALUATED_STATES)
        page = PageRequest.parse(
            requested_page_size,
            page_token,
            page_scope("policies", policy_type, enabled_only, ",".join(wanted)),
        )
        if enabled_only and not wanted:
            return [], ""  # e.g. enabled_only with states=[PROPOSED]: nothing can match
        policies, cursor = await self.cache.list_current(
            policy_type=policy_type,
            enabled_only=enabled_only,
            states=wanted,
            limit=page.size,
            start_after=page.start_after,
        )
        return policies, page.next_token(cursor)

    async def list_versions(
        self, policy_id: str, *, requested_page_size: int, page_token: str
    ) -> tuple[list[PolicyVersion], str]:
        await self.get(policy_id)  # NOT_FOUND for an unknown policy, not an empty list
        page = PageRequest.parse(requested_page_size, page_token, page_scope("versions", policy_id))
        versions, cursor = await self._repo.list_versions(
            policy_id, limit=page.size, start_after=page.start_after
        )
        return versions, page.next_token(cursor)

    async def stream(self, *, policy_type: str, from_revision: int) -> AsyncIterator[PolicyVersion]:
        """The current policies (from_revision 0) or the changes after `from_revision`, then
        every change as it is published on the bus, each policy's versions in order and none
        twice."""
        if from_revision < 0:
            raise InvalidArgument("from_revision", "must not be negative")
        _, changes = await self.feed()
        # Listen before reading, so that no change falls between the read and the listening.
        with changes.listen() as listener, _counted(metrics.STREAMS):
            last_sent: dict[str, int] = {}
            history = (
                self._repo.iter_changes_after(from_revision)
                if from_revision
                else self._repo.iter_current(policy_type)
            )
            async for policy in history:
                if policy_type and policy.content.policy_type != policy_type:
                    continue
                last_sent[policy.id] = policy.revision
                yield policy
            while True:
                try:
                    policy = await self._until_stopping(listener.get())
                except ListenerLagged:
                    raise Aborted(
                        "the stream fell behind the policy changes; reconnect with "
                        f"from_revision={max(last_sent.values(), default=from_revision)}"
                    ) from None
                if policy_type and policy.content.policy_type != policy_type:
                    continue
                if policy.revision <= max(from_revision, last_sent.get(policy.id, 0)):
                    continue
                last_sent[policy.id] = policy.revision
                yield policy

    async def on_policy_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to policy events: feeds the streams."""
        payload = events.unpack(event, events_pb2.PolicyEvent)
        policy = policy_from_proto(payload.policy)
        await self.cache.changed(policy)
        feed, _ = await self.feed()
        feed.offer(policy)


@contextlib.contextmanager
def _counted(gauge: Gauge) -> Iterator[None]:
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


async def refresh_policy_gauge(
    store: DocumentStore, namespaces: NamespaceDirectory, labelled: int
) -> None:
    """Counts policies by state and namespace into `tai_policies` (a worker runs this
    periodically); the namespaces past the first `labelled` are summed as "other"."""
    counts: dict[tuple[str, str], int] = {}
    for namespace in await namespaces.serving():
        label = namespaces.metric_label(namespace, labelled)
        with in_namespace(namespace):
            for state in PolicyState:
                count = await store.count(POLICIES, [Filter.eq("state", state.value)])
                key = (state.value, label)
                counts[key] = counts.get(key, 0) + count
    for (state_value, label), count in counts.items():
        metrics.POLICIES.labels(state=state_value, namespace=label).set(count)


# The states in which a policy is evaluated against signals: what the enforced-policies quota
# counts.
_EVALUATED = (PolicyState.ENFORCED, PolicyState.DRY_RUN)


def _check_expected(current: PolicyVersion, expected_version: int) -> None:
    if expected_version and expected_version != current.version:
        raise Aborted(
            f"policy {current.id!r} is at version {current.version}, not {expected_version}: "
            "it changed since you read it; read it again and retry"
        )
