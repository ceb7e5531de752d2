"""The Coordinator's use cases: signals in, actions out, acknowledgements, status.

Every change is one store transaction that writes the documents and their events (through the
outbox), so a signal is never stored without its actions, nor an action without its event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from tai.v1 import events_pb2, governor_pb2
from tai_common.caching import ReadThrough
from tai_common.core import (
    AlreadyExists,
    Bindings,
    Clock,
    Evaluation,
    IdFactory,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    current_context_carrier,
    decode_page_token,
    encode_page_token,
    page_size,
)
from tai_common.core.namespace import current_namespace, namespaced_key
from tai_common.core.units import seconds_to_ns
from tai_common.core.validation import MAX_KEY_LENGTH, require_id
from tai_common.messaging import AuditTrail, events, topics
from tai_common.namespacing import NamespaceDirectory
from tai_common.ports import AdmissionRequest, Cache, DocumentStore, Transaction, WindowLimiter

from tai_coordinator import metrics
from tai_coordinator.convert import signal_to_proto
from tai_coordinator.decisions import (
    DecisionOutcome,
    DecisionRecord,
    Hold,
    HoldReason,
    PolicyDecision,
    PolicyMode,
    decide,
    held,
)
from tai_coordinator.limits import describe_limit, limit_key
from tai_coordinator.model import (
    ACKNOWLEDGEMENTS,
    DEFAULT_ACK_DEADLINE_SECONDS,
    DEFAULT_ACTION_PRIORITY,
    DEFAULT_MAX_DELIVERIES,
    MAX_MESSAGE_LENGTH,
    OPEN_STATUSES,
    SIGNAL_TYPES,
    Action,
    ActionRequest,
    ActionStatus,
    SignalInput,
    StoredSignal,
    check_id,
    check_length,
    check_service_name,
)
from tai_coordinator.policy_book import ActivePolicy, PolicyBook
from tai_coordinator.repository import CoordinatorRepository
from tai_coordinator.silences import SilenceBook

# A RequestAction whose not-before time is further away than this is handed to the Scheduler
# (an `action.deferred` event) instead of being stored now.
DEFER_THRESHOLD_NS = seconds_to_ns(1)
HISTORY_WINDOW_NS = seconds_to_ns(3600)
# WatchActions reads the store every this often, and again this far back each time: a change
# whose transaction committed after a later-stamped one is still seen (duplicates are skipped).
WATCH_POLL_SECONDS = 0.5
WATCH_LAG_NS = seconds_to_ns(2)
WATCH_PAGE = 500
SIGNAL_TTL_SECONDS = 60.0
# The window of a namespace's `max_signals_per_second` quota.
QUOTA_WINDOW_NS = seconds_to_ns(1)


@dataclass(frozen=True)
class SignalOutcome:
    signal: StoredSignal
    created: list[Action] = field(default_factory=list)
    replayed: bool = False
    # Of `created`, as written: already DELIVERED, for a stream connected to this replica.
    delivered_now: list[Action] = field(default_factory=list)
    # Every policy's decision, unbounded (the stored record keeps a bounded copy).
    decisions: list[PolicyDecision] = field(default_factory=list)


class PolicySource(Protocol):
    """Where a signal's policies come from: the current namespace's book (`PolicySync`)."""

    async def book(self) -> PolicyBook:
        """The current namespace's policy book, loaded (`Unavailable` if it cannot be)."""
        ...


class SilenceSource(Protocol):
    """Where a signal's silences come from: the current namespace's (`SilenceService`)."""

    async def book(self) -> SilenceBook:
        """The current namespace's silences that have not ended."""
        ...


class LocalDispatch(Protocol):
    """This replica's delivery of actions to the `StreamActions` streams connected to it (the
    `ActionDispatcher`)."""

    def notify(self, actions: Sequence[Action]) -> None:
        """Actions were created or changed here: deliver those now due."""

    def has_stream_for(self, service_name: str) -> bool:
        """Whether a stream of `service_name` is connected to this replica."""

    def deliver_in(
        self, tx: Transaction, action: Action, now_ns: int, *, create: bool = False
    ) -> Action:
        """Writes in `tx` that `action` is delivered now, with its event; returns it so."""

    def hand_out(self, actions: Sequence[Action]) -> None:
        """Sends actions their committed transaction already marked DELIVERED."""


@dataclass(frozen=True)
class ActionOutcome:
    action_id: str
    version: int
    status: ActionStatus | None
    timestamp_ns: int
    replayed: bool = False
    deferred_until_ns: int = 0
    # The action as written by this call (None when replayed or deferred).
    action: Action | None = None
    # The same, delivered by the commit to a stream on this replica (`_create_action_in`).
    delivered_now: Action | None = None


@dataclass(frozen=True)
class ServiceStatus:
    service_name: str
    pending_signals: int
    pending_actions: int
    delivered_actions: int
    accepted_actions: int
    awaiting_approval_actions: int
    signals_last_minute: int
    last_signal_ns: int
    timestamp_ns: int


class CoordinatorService:
    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        ids: IdFactory,
        event_factory: events.EventFactory,
        policies: PolicySource,
        on_committed: Callable[[], None],
        dispatch: LocalDispatch,
        cache: Cache,
        audit: AuditTrail,
        *,
        silences: SilenceSource,
        limiter: WindowLimiter,
        namespaces: NamespaceDirectory,
        namespace_metric_labels: int,
        replica_id: str,
        signal_retention_seconds: float,
        approval_timeout_seconds: float,
    ) -> None:
        """`on_committed` wakes the outbox relay; `dispatch` is told about actions this replica
        just created or changed (other replicas learn it from the bus). `replica_id` names
        this replica in decision records; signals are stored to expire after
        `signal_retention_seconds`. `namespaces` gives each namespace's quotas and its label in
        the metrics (the first `namespace_metric_labels` namespaces labelled by name)."""
        self._store = store
        self._repo = CoordinatorRepository(
            store, event_factory, signal_retention_ns=seconds_to_ns(signal_retention_seconds)
        )
        self._replica_id = replica_id
        self._silences = silences
        self._limiter = limiter
        self._namespaces = namespaces
        self._namespace_metric_labels = namespace_metric_labels
        self._approval_timeout_seconds = approval_timeout_seconds
        self._clock = clock
        self._ids = ids
        self._events = event_factory
        self._policies = policies
        self._on_committed = on_committed
        self._dispatch = dispatch
        self._audit = audit
        # Signals never change once stored, so their cache needs no invalidation.
        self._signals = ReadThrough(cache, "signal", SIGNAL_TTL_SECONDS)

    # --- signals ---

    async def submit_signal(self, signal: SignalInput, principal: str) -> SignalOutcome:
        signal.validate()
        namespace = current_namespace()
        # The namespace's own policies and silences only: another namespace's never apply.
        book = await self._policies.book()
        silence_book = await self._silences.book()
        quota = (await self._namespaces.quotas(namespace)).max_signals_per_second
        if not signal.signal_id:
            signal = _with_id(signal, self._ids.new_id("sig"))
        fingerprint = signal.fingerprint()
        received_at = self._clock.now_ns()
        # Evaluated once, outside the transaction: the transaction may run again on contention.
        bindings = Bindings(signal.variables(received_at))
        evaluations = book.evaluate(bindings)
        policy_revision = book.revision
        enforced = [p for p, e in evaluations if e.matched and not p.dry_run]
        action_ids = {p.id: self._ids.new_id("act") for p in enforced}

        async def apply(tx: Transaction) -> SignalOutcome:
            existing = await self._repo.signal_in(tx, signal.signal_id)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    raise AlreadyExists(
                        "signal",
                        signal.signal_id,
                        f"signal id {signal.signal_id!r} was already used for a different "
                        "signal; use a new id",
                    )
                return SignalOutcome(existing, replayed=True)
            cooldowns = {
                p.id: await self._repo.cooldown_in(tx, p.id, fingerprint)
                for p in enforced
                if p.policy.action.cooldown_seconds > 0
            }
            now = self._clock.now_ns()
            decisions = [
                decide(
                    policy,
                    evaluation,
                    now_ns=now,
                    silence=(
                        silence_book.hold_for(policy, bindings, now)
                        if policy.id in action_ids
                        else None
                    ),
                    cooldown=cooldowns.get(policy.id),
                    action_id=action_ids.get(policy.id, ""),
                )
                for policy, evaluation in evaluations
            ]
            # The limits last: their windows are the transaction's last reads, and only the
            # matches nothing else held back count in them. The namespace's signal quota is
            # admitted with them (the same reads-then-writes), so it holds across replicas: a
            # signal over it is refused, and its transaction writes nothing.
            admitted = (
                AdmissionRequest(
                    namespaced_key(namespace, "quota/signals-per-second"),
                    signal.signal_id,
                    quota,
                    QUOTA_WINDOW_NS,
                )
                if quota
                else None
            )
            decisions = await self._limit(tx, evaluations, decisions, now, admitted)
            created: list[Action] = []
            delivered_now: list[Action] = []
            for index, (policy, _) in enumerate(evaluations):
                decision = decisions[index]
                if not decision.creates_action:
                    continue
                approval_deadline = 0
                if policy.policy.action.require_approval:
                    timeout = (
                        policy.policy.action.approval_timeout_seconds
                        or self._approval_timeout_seconds
                    )
                    approval_deadline = now + seconds_to_ns(timeout)
                    decision = held(
                        decision, Hold(HoldReason.APPROVAL, approval_deadline, decision.action_id)
                    )
                    decisions[index] = decision
                action = self._action_from_policy(
                    policy,
                    decision.action_id,
                    signal,
                    received_at,
                    principal,
                    now,
                    approval_deadline_ns=approval_deadline,
                )
                created.append(action)
                delivered = self._create_action_in(tx, action, now)
                if delivered is not None:
                    delivered_now.append(delivered)
                cooldown = policy.policy.action.cooldown_seconds
                if cooldown > 0:
                    self._repo.start_cooldown_in(
                        tx, policy.id, fingerprint, action.id, now + seconds_to_ns(cooldown)
                    )
            # Held back with no action created (an action awaiting approval is created).
            suppressed = [
                d.policy_id
                for d in decisions
                if d.outcome is DecisionOutcome.HELD and not d.creates_action
            ]
            dry_run = [
                d.policy_id
                for d in decisions
                if d.mode is PolicyMode.DRY_RUN and d.outcome is DecisionOutcome.MATCHED
            ]
            stored = StoredSignal(
                signal=signal,
                fingerprint=fingerprint,
                received_at_ns=received_at,
                matched_policy_ids=tuple(p.id for p in enforced),
                action_ids=tuple(a.id for a in created),
                dry_run_policy_ids=tuple(dry_run),
                suppressed_policy_ids=tuple(suppressed),
                created_by=principal,
                decision=DecisionRecord.bounded(
                    decisions,
                    evaluated_at_ns=now,
                    policy_revision=policy_revision,
                    replica_id=self._replica_id,
                ),
            )
            # No audit record: signals are data, and this document is their record (see
            # docs/security.md, "Signals are not audited one by one").
            self._repo.put_signal_in(tx, stored)
            tx.publish(
                topics.SIGNALS,
                self._events.build(
                    event_type="signal.received",
                    aggregate_type="signal",
                    aggregate_id=stored.id,
                    aggregate_version=1,
                    payload=events_pb2.SignalEvent(signal=signal_to_proto(stored)),
                ),
            )
            return SignalOutcome(stored, created, delivered_now=delivered_now, decisions=decisions)

        outcome = await self._store.run_transaction(apply)
        if not outcome.replayed:
            self._on_committed()
            self._dispatch.hand_out(outcome.delivered_now)
            sent = {a.id for a in outcome.delivered_now}
            self._dispatch.notify([a for a in outcome.created if a.id not in sent])
            metrics.SIGNALS.labels(
                signal_type=signal.signal_type,
                namespace=self._namespaces.metric_label(namespace, self._namespace_metric_labels),
            ).inc()
            metrics.EVALUATIONS.inc(len(outcome.decisions))
            metrics.count_decisions(outcome.decisions)
            for action in outcome.created:
                metrics.ACTION_TRANSITIONS.labels(status=action.status.value).inc()
        return outcome

    async def _limit(
        self,
        tx: Transaction,
        evaluations: Sequence[tuple[ActivePolicy, Evaluation]],
        decisions: list[PolicyDecision],
        now: int,
        quota: AdmissionRequest | None = None,
    ) -> list[PolicyDecision]:
        """`decisions`, with the matches past one of their policy's blast-radius limits held
        back. Each action about to be created is admitted in each of its policy's windows;
        refused by one, it is held (slots it took in the others stay taken until they leave
        their window: the limits err on the side of fewer actions). `quota`, the signal's
        admission in its namespace's signals-per-second window, is admitted first; refused, it
        raises `ResourceExhausted`."""
        namespace = current_namespace()
        requests: list[AdmissionRequest] = [quota] if quota is not None else []
        owners: list[tuple[int, governor_pb2.ActionLimit]] = []
        for index, ((policy, _), decision) in enumerate(zip(evaluations, decisions, strict=True)):
            if not decision.creates_action:
                continue
            for limit in policy.policy.action.limits:
                requests.append(
                    AdmissionRequest(
                        namespaced_key(namespace, limit_key(policy, limit)),
                        decision.action_id,
                        limit.max_actions,
                        seconds_to_ns(limit.window_seconds),
                    )
                )
                owners.append((index, limit))
        if not requests:
            return decisions
        admissions = await self._limiter.admit_all(tx, requests, now)
        if quota is not None:
            if not admissions[0].allowed:
                raise ResourceExhausted(
                    f"namespace {namespace!r} quota max_signals_per_second={quota.limit} "
                    "exceeded; retry in a second"
                )
            admissions = admissions[1:]
        limited = list(decisions)
        for (index, limit), admission in zip(owners, admissions, strict=True):
            if not admission.allowed and limited[index].creates_action:
                hold = Hold(
                    HoldReason.LIMIT,
                    admission.retry_at_ns,
                    describe_limit(evaluations[index][0], limit),
                )
                limited[index] = held(limited[index], hold)
        return limited

    def _create_action_in(self, tx: Transaction, action: Action, now: int) -> Action | None:
        """Writes a new action in `tx`. When a stream of its target is connected here and the
        action is due, it is created delivered and returned, to be handed to that stream once
        `tx` commits (`dispatch.hand_out`), with no claim transaction of its own (if that
        stream is gone by then, the action is released, or falls due again at its ack deadline
        after a crash). Stored once, delivered; its created version has its event all the
        same."""
        if action.next_delivery_ns <= now and self._dispatch.has_stream_for(action.target_service):
            self._repo.publish_action_event_in(tx, "action.created", action, None)
            return self._dispatch.deliver_in(tx, action, now, create=True)
        self._repo.write_action_in(tx, "action.created", action, None, create=True)
        return None

    def _action_from_policy(
        self,
        active: ActivePolicy,
        action_id: str,
        signal: SignalInput,
        received_at: int,
        principal: str,
        now: int,
        *,
        approval_deadline_ns: int = 0,
    ) -> Action:
        """The action `active` creates for `signal`; with an approval deadline, it waits for
        approval until then (the deadline is also when the expiry looks at it)."""
        template = active.policy.action
        return Action(
            id=action_id,
            action_type=template.action_type,
            target_service=template.target_service,
            status=(
                ActionStatus.AWAITING_APPROVAL if approval_deadline_ns else ActionStatus.PENDING
            ),
            created_at_ns=now,
            updated_at_ns=now,
            next_delivery_ns=approval_deadline_ns or now,
            approval_deadline_ns=approval_deadline_ns,
            parameters=dict(template.parameters),
            payload=signal.payload,
            source_service="coordinator",
            timestamp_ns=now,
            policy_id=active.id,
            policy_version=active.policy.version,
            signal_id=signal.signal_id,
            signal_received_at_ns=received_at,
            max_deliveries=template.max_deliveries or DEFAULT_MAX_DELIVERIES,
            ack_deadline_seconds=template.ack_deadline_seconds or DEFAULT_ACK_DEADLINE_SECONDS,
            priority=signal.priority,
            created_by=principal,
            trace_context=current_context_carrier(),
        )

    async def get_signal(self, signal_id: str) -> StoredSignal:
        require_id(signal_id, "id")

        async def load() -> tuple[bytes, int] | None:
            signal = await self._repo.signal(signal_id)
            return (json.dumps(signal.to_doc(0)).encode(), 1) if signal else None

        raw = await self._signals.get(signal_id, load)
        if raw is None:
            raise NotFound("signal", signal_id)
        return StoredSignal.from_doc(json.loads(raw))

    async def explain_signal(self, signal_id: str) -> StoredSignal:
        """The stored signal with its decision record (`NotFound` once retention removed it)."""
        require_id(signal_id, "signal_id")
        signal = await self._repo.signal(signal_id)
        if signal is None:
            raise NotFound("signal", signal_id)
        return signal

    async def list_signals(
        self,
        *,
        signal_type: str,
        source: str,
        min_priority: int,
        metadata: Sequence[str],
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[StoredSignal], str]:
        """Signals newest first; type and source are filtered by the store, priority and
        metadata over each page (so a page may come back short)."""
        if signal_type and signal_type not in SIGNAL_TYPES:
            raise InvalidArgument(
                "signal_type",
                f"must be one of {', '.join(SIGNAL_TYPES)} (got {signal_type[:64]!r})",
            )
        check_length("source", source, MAX_KEY_LENGTH)
        if not 0 <= min_priority <= 10:
            raise InvalidArgument("min_priority", "must be between 0 and 10")
        wanted: dict[str, str] = {}
        for entry in metadata:
            key, sep, value = entry.partition("=")
            if not sep or not key:
                raise InvalidArgument("metadata", f"entries are key=value (got {entry[:64]!r})")
            wanted[key] = value
        scope = f"signals|{signal_type}|{source}|{min_priority}|{sorted(wanted.items())}"
        signals, cursor = await self._repo.list_signals(
            signal_type=signal_type,
            source=source,
            limit=page_size(requested_page_size),
            start_after=decode_page_token(page_token, scope),
        )
        kept = [
            s
            for s in signals
            if s.signal.priority >= min_priority
            and all(s.signal.metadata.get(k) == v for k, v in wanted.items())
        ]
        return kept, encode_page_token(cursor, scope)

    # --- actions ---

    async def request_action(
        self, request: ActionRequest, principal: str, request_fingerprint: str
    ) -> ActionOutcome:
        request.validate()
        action_id = request.action_id or self._ids.new_id("act")
        now = self._clock.now_ns()
        if request.not_before_ns > now + DEFER_THRESHOLD_NS:
            return await self._defer_action(request, action_id, principal, now)

        async def apply(tx: Transaction) -> ActionOutcome:
            existing = await self._repo.action_in(tx, action_id)
            if existing is not None:
                if existing.request_fingerprint != request_fingerprint:
                    raise AlreadyExists(
                        "action",
                        action_id,
                        f"action id {action_id!r} was already used for a different action; "
                        "use a new id",
                    )
                return ActionOutcome(
                    existing.id,
                    existing.version,
                    existing.status,
                    existing.created_at_ns,
                    replayed=True,
                )
            created = self._clock.now_ns()
            action = Action(
                id=action_id,
                action_type=request.action_type,
                target_service=request.target_service,
                status=ActionStatus.PENDING,
                created_at_ns=created,
                updated_at_ns=created,
                next_delivery_ns=max(created, request.not_before_ns),
                parameters=dict(request.parameters),
                payload=request.payload,
                source_service=request.source_service,
                timestamp_ns=request.timestamp_ns or created,
                max_deliveries=request.max_deliveries or DEFAULT_MAX_DELIVERIES,
                ack_deadline_seconds=request.ack_deadline_seconds or DEFAULT_ACK_DEADLINE_SECONDS,
                priority=request.priority or DEFAULT_ACTION_PRIORITY,
                created_by=principal,
                request_fingerprint=request_fingerprint,
                trace_context=current_context_carrier(),
            )
            delivered = self._create_action_in(tx, action, created)
            self._audit.record_in(tx, f"action/{action.id}", None, action.to_doc(0))
            return ActionOutcome(
                action.id,
                action.version,
                action.status,
                created,
                action=action,
                delivered_now=delivered,
            )

        outcome = await self._store.run_transaction(apply)
        if outcome.action is not None:
            self._on_committed()
            if outcome.delivered_now is not None:
                self._dispatch.hand_out([outcome.delivered_now])
            else:
                self._dispatch.notify([outcome.action])
            metrics.ACTION_TRANSITIONS.labels(status="PENDING").inc()
        return outcome

    async def _defer_action(
        self, request: ActionRequest, action_id: str, principal: str, now: int
    ) -> ActionOutcome:
        """Hands the request to the Scheduler (through an `action.deferred` event), which asks
        again at the not-before time; the action exists from then on."""
        deferred = Action(
            id=action_id,
            action_type=request.action_type,
            target_service=request.target_service,
            status=ActionStatus.PENDING,
            created_at_ns=now,
            updated_at_ns=now,
            next_delivery_ns=request.not_before_ns,
            parameters=dict(request.parameters),
            payload=request.payload,
            source_service=request.source_service,
            timestamp_ns=request.timestamp_ns or now,
            max_deliveries=request.max_deliveries,
            ack_deadline_seconds=request.ack_deadline_seconds,
            priority=request.priority,
            created_by=principal,
        )

        async def apply(tx: Transaction) -> None:
            self._audit.record_in(tx, f"action/{deferred.id}", None, deferred.to_doc(0))
            self._repo.publish_action_event_in(tx, "action.deferred", deferred, None)

        await self._store.run_transaction(apply)
        self._on_committed()
        return ActionOutcome(action_id, 0, None, now, deferred_until_ns=request.not_before_ns)

    async def acknowledge(
        self, action_id: str, status: str, message: str, principal: str
    ) -> ActionOutcome:
        require_id(action_id, "action_id")
        target = ACKNOWLEDGEMENTS.get(status.lower())
        if target is None:
            raise InvalidArgument(
                "status", f"must be one of {', '.join(ACKNOWLEDGEMENTS)} (got {status[:32]!r})"
            )
        check_length("message", message, MAX_MESSAGE_LENGTH)

        async def apply(tx: Transaction) -> ActionOutcome:
            action = await self._repo.action_in(tx, action_id)
            if action is None:
                raise NotFound("action", action_id)
            if action.status is target and action.status_message == message:
                # The same acknowledgement again (a retry): nothing changes.
                return ActionOutcome(
                    action.id, action.version, action.status, action.updated_at_ns, replayed=True
                )
            now = self._clock.now_ns()
            changed = action.acknowledged(target, message, now)
            event_type = f"action.{target.value.lower()}"
            self._repo.write_action_in(tx, event_type, changed, action.status)
            self._audit.record_in(tx, f"action/{action.id}", action.to_doc(0), changed.to_doc(0))
            return ActionOutcome(changed.id, changed.version, changed.status, now)

        outcome = await self._store.run_transaction(apply)
        if not outcome.replayed:
            self._on_committed()
        return outcome

    async def review(self, action_id: str, approved: bool, comment: str, principal: str) -> Action:
        """Approves (PENDING, delivered from now on) or rejects (REJECTED) an action awaiting
        approval; who, when and why are on the action and in the audit trail."""
        require_id(action_id, "action_id")
        if not comment.strip():
            raise InvalidArgument("comment", "is required: say why")
        check_length("comment", comment, MAX_MESSAGE_LENGTH)

        async def apply(tx: Transaction) -> Action:
            action = await self._repo.action_in(tx, action_id)
            if action is None:
                raise NotFound("action", action_id)
            changed = action.reviewed(approved, principal, comment, self._clock.now_ns())
            event_type = "action.approved" if approved else "action.rejected"
            self._repo.write_action_in(tx, event_type, changed, action.status)
            self._audit.record_in(tx, f"action/{action.id}", action.to_doc(0), changed.to_doc(0))
            return changed

        reviewed = await self._store.run_transaction(apply)
        self._on_committed()
        if approved:
            self._dispatch.notify([reviewed])
        metrics.ACTION_TRANSITIONS.labels(status=reviewed.status.value).inc()
        return reviewed

    async def expire_approvals(self, limit: int = 100) -> int:
        """Expires the actions whose approval deadline passed; returns how many."""
        now = self._clock.now_ns()
        expired = 0
        for candidate in await self._repo.approvals_due(now, limit):

            async def apply(tx: Transaction, action_id: str = candidate.id) -> bool:
                action = await self._repo.action_in(tx, action_id)
                if action is None or action.status is not ActionStatus.AWAITING_APPROVAL:
                    return False  # reviewed, or expired by another replica, meanwhile
                changed = action.approval_expired(self._clock.now_ns())
                self._repo.write_action_in(tx, "action.expired", changed, action.status)
                self._audit.record_in(
                    tx, f"action/{action.id}", action.to_doc(0), changed.to_doc(0)
                )
                return True

            if await self._store.run_transaction(apply):
                expired += 1
                metrics.ACTION_TRANSITIONS.labels(status=ActionStatus.EXPIRED.value).inc()
        if expired:
            self._on_committed()
        return expired

    async def get_action(self, action_id: str) -> Action:
        require_id(action_id, "action_id")
        action = await self._repo.action(action_id)
        if action is None:
            raise NotFound("action", action_id)
        return action

    async def list_actions(
        self,
        *,
        target_service: str,
        status: ActionStatus | None,
        policy_id: str,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[Action], str]:
        if target_service:
            check_service_name(target_service, "target_service")
        if policy_id:
            check_id(policy_id, "policy_id")
        scope = f"actions|{target_service}|{status or ''}|{policy_id}"
        actions, cursor = await self._repo.list_actions(
            target_service=target_service,
            status=status,
            policy_id=policy_id,
            limit=page_size(requested_page_size),
            start_after=decode_page_token(page_token, scope),
        )
        return actions, encode_page_token(cursor, scope)

    async def watch_actions(
        self, service: str, after_ns: int, pause: Callable[[float], Awaitable[None]]
    ) -> AsyncIterator[Action]:
        """Each change of an action (of `service`, or all) after `after_ns` (0: from now on),
        in order of change, read from the store every `WATCH_POLL_SECONDS` (`pause` waits; the
        caller's ends the stream at shutdown). Reading never takes delivery, so any number of
        viewers may watch."""
        if service:
            check_service_name(service, "target_service")
        if after_ns < 0:
            raise InvalidArgument("after_ns", "must not be negative")
        floor = after_ns or self._clock.now_ns()
        since = floor
        sent: dict[tuple[str, int], int] = {}
        while True:
            changed = await self._repo.changed_since(service, since - WATCH_LAG_NS, WATCH_PAGE)
            for action in changed:
                key = (action.id, action.version)
                if action.updated_at_ns <= floor or key in sent:
                    continue
                sent[key] = action.updated_at_ns
                yield action
            if changed:
                since = max(since, changed[-1].updated_at_ns)
                sent = {k: t for k, t in sent.items() if t >= since - WATCH_LAG_NS}
            if len(changed) < WATCH_PAGE:
                await pause(WATCH_POLL_SECONDS)

    async def history(self, service: str) -> list[Action]:
        """Actions the service accepted in the last hour and has not finished."""
        since = self._clock.now_ns() - HISTORY_WINDOW_NS
        return await self._repo.accepted_since(service, since, limit=1000)

    # --- status ---

    async def status(self, service_name: str) -> ServiceStatus:
        if service_name:
            check_service_name(service_name, "service_name")
        open_actions = await self._repo.open_actions(service_name, limit=10_000)
        latest = await (
            self._repo.latest_action(service_name) if service_name else self._repo.latest_signal()
        )
        if latest is None:
            last_signal_ns = 0
        elif isinstance(latest, Action):
            last_signal_ns = latest.signal_received_at_ns
        else:
            last_signal_ns = latest.received_at_ns
        counts = {status: 0 for status in OPEN_STATUSES}
        for action in open_actions:
            counts[action.status] += 1
        now = self._clock.now_ns()
        signals_last_minute = await self._repo.signals_since(now - seconds_to_ns(60))
        return ServiceStatus(
            service_name=service_name,
            pending_signals=len({a.signal_id for a in open_actions if a.signal_id}),
            pending_actions=len(open_actions),
            delivered_actions=counts[ActionStatus.DELIVERED],
            accepted_actions=counts[ActionStatus.ACCEPTED],
            awaiting_approval_actions=counts[ActionStatus.AWAITING_APPROVAL],
            signals_last_minute=signals_last_minute,
            last_signal_ns=last_signal_ns,
            timestamp_ns=now,
        )


def _with_id(signal: SignalInput, signal_id: str) -> SignalInput:
    return replace(signal, signal_id=signal_id)
