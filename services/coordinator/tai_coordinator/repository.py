"""Where the Coordinator keeps signals and actions in the DocumentStore.

- `signals/{id}`: each signal with its decision record: what every policy came to, the actions
  created (kept `TAI_SIGNAL_RETENTION_SECONDS`, 7 days by default, and bounded in count);
- `actions/{id}`: each action and its delivery state (TTL 30 days);
- `action_dedup/{policy}:{fingerprint}`: the cooldown window of a (policy, signal) pair.

Every write of an action goes through `write_action_in`, which adds the change's event (on
`tai-actions`, at the action's new version) to the same transaction: every version of an
action has its event, and no action is stored without it.
"""

from __future__ import annotations

from tai.v1 import events_pb2
from tai_common.core.units import seconds_to_ns
from tai_common.messaging import events, topics
from tai_common.ports import Cursor, DocumentStore, Filter, IndexSpec, Op, Order, Query, Transaction

from tai_coordinator.convert import STATUS_TO_PROTO, action_to_proto
from tai_coordinator.decisions import Cooldown
from tai_coordinator.model import OPEN_STATUSES, Action, ActionStatus, StoredSignal

SIGNALS = "signals"
ACTIONS = "actions"
DEDUP = "action_dedup"

DEFAULT_SIGNAL_RETENTION_NS = seconds_to_ns(7 * 24 * 3600)
ACTION_RETENTION_NS = seconds_to_ns(30 * 24 * 3600)

INDEXES = (
    # Delivery: a service's due actions, earliest first.
    IndexSpec(ACTIONS, ("target_service", "status", "next_delivery_ns")),
    # Listing and status, newest first.
    IndexSpec(ACTIONS, ("target_service", "status", "created_at_ns"), (False, False, True)),
    IndexSpec(ACTIONS, ("target_service", "created_at_ns"), (False, True)),
    IndexSpec(ACTIONS, ("status", "created_at_ns"), (False, True)),
    IndexSpec(ACTIONS, ("policy_id", "created_at_ns"), (False, True)),
    # History on reconnect: a service's accepted actions of the last hour.
    IndexSpec(ACTIONS, ("target_service", "status", "created_at_ns")),
    IndexSpec(ACTIONS, ("created_at_ns",)),
    # WatchActions: changes in order, a service's or every service's.
    IndexSpec(ACTIONS, ("target_service", "updated_at_ns")),
    IndexSpec(ACTIONS, ("updated_at_ns",)),
    # Approvals past their deadline, to expire them.
    IndexSpec(ACTIONS, ("status", "next_delivery_ns")),
    IndexSpec(SIGNALS, ("received_at_ns",)),
    # ListSignals: newest first, by type and/or source.
    IndexSpec(SIGNALS, ("signal_type", "received_at_ns"), (False, True)),
    IndexSpec(SIGNALS, ("source", "received_at_ns"), (False, True)),
    IndexSpec(SIGNALS, ("signal_type", "source", "received_at_ns"), (False, False, True)),
)


def dedup_key(policy_id: str, fingerprint: str) -> str:
    return f"{policy_id}:{fingerprint}"


class CoordinatorRepository:
    def __init__(
        self,
        store: DocumentStore,
        event_factory: events.EventFactory,
        signal_retention_ns: int = DEFAULT_SIGNAL_RETENTION_NS,
    ) -> None:
        self._store = store
        self._events = event_factory
        self._signal_retention_ns = signal_retention_ns

    # --- inside a transaction ---

    async def signal_in(self, tx: Transaction, signal_id: str) -> StoredSignal | None:
        doc = await tx.get(SIGNALS, signal_id)
        return StoredSignal.from_doc(doc.data) if doc else None

    async def action_in(self, tx: Transaction, action_id: str) -> Action | None:
        doc = await tx.get(ACTIONS, action_id)
        return Action.from_doc(doc.data) if doc else None

    async def cooldown_in(
        self, tx: Transaction, policy_id: str, fingerprint: str
    ) -> Cooldown | None:
        """The last cooldown the (policy, fingerprint) pair started, ended or not."""
        doc = await tx.get(DEDUP, dedup_key(policy_id, fingerprint))
        return Cooldown(int(doc.data["until_ns"]), doc.data.get("action_id", "")) if doc else None

    def put_signal_in(self, tx: Transaction, signal: StoredSignal) -> None:
        tx.create(
            SIGNALS, signal.id, signal.to_doc(signal.received_at_ns + self._signal_retention_ns)
        )

    def write_action_in(
        self,
        tx: Transaction,
        event_type: str,
        action: Action,
        previous: ActionStatus | None,
        *,
        create: bool = False,
    ) -> None:
        """Writes `action` (`create`: one not stored yet) and, in the same transaction `tx`,
        its `event_type` event; `previous` is its status before this change (None if new)."""
        doc = action.to_doc(action.created_at_ns + ACTION_RETENTION_NS)
        if create:
            tx.create(ACTIONS, action.id, doc)
        else:
            tx.set(ACTIONS, action.id, doc)
        self.publish_action_event_in(tx, event_type, action, previous)

    def publish_action_event_in(
        self, tx: Transaction, event_type: str, action: Action, previous: ActionStatus | None
    ) -> None:
        """Adds the event of an action version that is not written itself to `tx`: a deferred
        action (stored only when the Scheduler asks again), or a new action whose next version
        the same transaction writes (one delivered with the signal's commit)."""
        payload = events_pb2.ActionEvent(action=action_to_proto(action))
        if previous is not None:
            payload.previous_status = STATUS_TO_PROTO[previous]
        event = self._events.build(
            event_type=event_type,
            aggregate_type="action",
            aggregate_id=action.id,
            aggregate_version=action.version,
            payload=payload,
        )
        tx.publish(topics.ACTIONS, event)

    def start_cooldown_in(
        self, tx: Transaction, policy_id: str, fingerprint: str, action_id: str, until_ns: int
    ) -> None:
        tx.set(
            DEDUP,
            dedup_key(policy_id, fingerprint),
            {"action_id": action_id, "until_ns": until_ns, "expires_at_ns": until_ns},
        )

    # --- reads ---

    async def signal(self, signal_id: str) -> StoredSignal | None:
        doc = await self._store.get(SIGNALS, signal_id)
        return StoredSignal.from_doc(doc.data) if doc else None

    async def action(self, action_id: str) -> Action | None:
        doc = await self._store.get(ACTIONS, action_id)
        return Action.from_doc(doc.data) if doc else None

    async def due_actions(self, service: str, now_ns: int, limit: int) -> list[Action]:
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=(
                    Filter.eq("target_service", service),
                    Filter.is_in("status", [ActionStatus.PENDING, ActionStatus.DELIVERED]),
                    Filter("next_delivery_ns", Op.LE, now_ns),
                ),
                order_by=(Order("next_delivery_ns"),),
                limit=limit,
            )
        )
        return [Action.from_doc(d.data) for d in page.documents]

    async def next_delivery_ns(self, service: str) -> int | None:
        """When the earliest undelivered or unacknowledged action of `service` falls due."""
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=(
                    Filter.eq("target_service", service),
                    Filter.is_in("status", [ActionStatus.PENDING, ActionStatus.DELIVERED]),
                ),
                order_by=(Order("next_delivery_ns"),),
                limit=1,
            )
        )
        return int(page.documents[0].data["next_delivery_ns"]) if page.documents else None

    async def changed_since(self, service: str, since_ns: int, limit: int) -> list[Action]:
        """Actions (of `service`, or all) last changed at or after `since_ns`, oldest change
        first."""
        filters = [Filter("updated_at_ns", Op.GE, since_ns)]
        if service:
            filters.insert(0, Filter.eq("target_service", service))
        page = await self._store.query(
            Query(ACTIONS, filters=tuple(filters), order_by=(Order("updated_at_ns"),), limit=limit)
        )
        return [Action.from_doc(d.data) for d in page.documents]

    async def approvals_due(self, now_ns: int, limit: int) -> list[Action]:
        """Actions awaiting approval whose deadline (their `next_delivery_ns`) has passed."""
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=(
                    Filter.eq("status", ActionStatus.AWAITING_APPROVAL),
                    Filter("next_delivery_ns", Op.LE, now_ns),
                ),
                order_by=(Order("next_delivery_ns"),),
                limit=limit,
            )
        )
        return [Action.from_doc(d.data) for d in page.documents]

    async def accepted_since(self, service: str, since_ns: int, limit: int) -> list[Action]:
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=(
                    Filter.eq("target_service", service),
                    Filter.eq("status", ActionStatus.ACCEPTED),
                    Filter("created_at_ns", Op.GE, since_ns),
                ),
                order_by=(Order("created_at_ns"),),
                limit=limit,
            )
        )
        return [Action.from_doc(d.data) for d in page.documents]

    async def list_actions(
        self,
        *,
        target_service: str,
        status: ActionStatus | None,
        policy_id: str,
        limit: int,
        start_after: Cursor | None,
    ) -> tuple[list[Action], Cursor | None]:
        filters: list[Filter] = []
        if target_service:
            filters.append(Filter.eq("target_service", target_service))
        if status is not None:
            filters.append(Filter.eq("status", status))
        if policy_id:
            filters.append(Filter.eq("policy_id", policy_id))
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=tuple(filters),
                order_by=(Order("created_at_ns", descending=True),),
                limit=limit,
                start_after=start_after,
            )
        )
        return [Action.from_doc(d.data) for d in page.documents], page.next_cursor

    async def open_actions(self, service: str, limit: int) -> list[Action]:
        filters = [Filter.is_in("status", list(OPEN_STATUSES))]
        if service:
            filters.append(Filter.eq("target_service", service))
        page = await self._store.query(Query(ACTIONS, filters=tuple(filters), limit=limit))
        return [Action.from_doc(d.data) for d in page.documents]

    async def latest_action(self, service: str) -> Action | None:
        filters = (Filter.eq("target_service", service),) if service else ()
        page = await self._store.query(
            Query(
                ACTIONS,
                filters=filters,
                order_by=(Order("created_at_ns", descending=True),),
                limit=1,
            )
        )
        return Action.from_doc(page.documents[0].data) if page.documents else None

    async def signals_received(
        self,
        *,
        since_ns: int,
        until_ns: int,
        limit: int,
        start_after: Cursor | None,
        with_decisions: bool = False,
    ) -> tuple[list[StoredSignal], Cursor | None]:
        """A page of the signals received in [since_ns, until_ns), oldest first; with their
        decision records only when `with_decisions` (decoding them is a quarter of a
        rehearsal's time, and a rehearsal reads none)."""
        page = await self._store.query(
            self._received_between(since_ns, until_ns, limit, start_after)
        )
        signals = [
            StoredSignal.from_doc(d.data, with_decision=with_decisions) for d in page.documents
        ]
        return signals, page.next_cursor

    async def receipts_before(
        self, until_ns: int, limit: int, start_after: Cursor | None
    ) -> tuple[list[tuple[int, str]], Cursor | None]:
        """A page of (received_at_ns, id) of the signals received before `until_ns`, newest
        first: where a window of the last N signals starts, without decoding them."""
        page = await self._store.query(
            self._received_between(0, until_ns, limit, start_after, newest_first=True)
        )
        receipts = [(int(d.data["received_at_ns"]), d.id) for d in page.documents]
        return receipts, page.next_cursor

    @staticmethod
    def _received_between(
        since_ns: int,
        until_ns: int,
        limit: int,
        start_after: Cursor | None,
        *,
        newest_first: bool = False,
    ) -> Query:
        return Query(
            SIGNALS,
            filters=(
                Filter("received_at_ns", Op.GE, since_ns),
                Filter("received_at_ns", Op.LT, until_ns),
            ),
            order_by=(Order("received_at_ns", descending=newest_first),),
            limit=limit,
            start_after=start_after,
        )

    async def list_signals(
        self, *, signal_type: str, source: str, limit: int, start_after: Cursor | None
    ) -> tuple[list[StoredSignal], Cursor | None]:
        """A page of signals, newest first, of `signal_type` and from `source` when set."""
        filters: list[Filter] = []
        if signal_type:
            filters.append(Filter.eq("signal_type", signal_type))
        if source:
            filters.append(Filter.eq("source", source))
        page = await self._store.query(
            Query(
                SIGNALS,
                filters=tuple(filters),
                order_by=(Order("received_at_ns", descending=True),),
                limit=limit,
                start_after=start_after,
            )
        )
        signals = [StoredSignal.from_doc(d.data, with_decision=False) for d in page.documents]
        return signals, page.next_cursor

    async def signals_since(self, since_ns: int) -> int:
        """How many signals were received at or after `since_ns`."""
        return await self._store.count(SIGNALS, (Filter("received_at_ns", Op.GE, since_ns),))

    async def latest_signal(self) -> StoredSignal | None:
        page = await self._store.query(
            Query(SIGNALS, order_by=(Order("received_at_ns", descending=True),), limit=1)
        )
        return StoredSignal.from_doc(page.documents[0].data) if page.documents else None
