"""What chaos checks once the load has stopped: every accepted write exists, every task ran
to completion exactly once, every event reached its consumers, every stream client resumed.

The audit trail is the one consumer of a durable subscription whose every event can be
checked from outside: each audited write (a policy change, a task, an acknowledgement; signals
are not audited one by one) published its audit record in its own transaction, and the
Governor's audit-log subscription appends it to the chain. A record missing there is an event
the bus (or the outbox relay) lost across a fault. (The other consumers' work is also done by
a sweep of the store, so their checks would pass with events lost.)

On the Pub/Sub emulator that check alone would fail for the emulator's sake: cloud-pubsub-
emulator 0.8.20 keeps the streaming pull of a subscriber that was killed or cut off as a
consumer of its subscription, hands it part of every later message and never redelivers them
(seen with Google's own client and no TAI code: after one SIGKILLed subscriber, a new one got
about half of the next 200 messages). There, the records missing from the trail are looked
for on the audit topic itself, which a new subscription replays: those published there do not
fail the check (the report counts them), those never published do.

The checks that wait on asynchronous work (deliveries, task runs, catch-up) poll until they
pass or the drain time is up; the report shows what was still missing then.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.api_core.exceptions import DeadlineExceeded
from google.pubsub_v1 import SubscriberClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from tai.v1 import common_pb2, coordinator_pb2, events_pb2
from tai_client import CoordinatorClient, NotFound, Unavailable, open_channel
from tai_common.messaging import topics
from tai_test_executors import ledger as test_ledger

from bench.scenarios import health_detail
from chaos.cluster import Cluster
from chaos.workload import Workload

T = TypeVar("T")
# Concurrent reads while checking (the emulators answer slower than the embedded store).
READ_CONCURRENCY = 16
POLL_INTERVAL_S = 1.0
AUDIT_PAGE = 1000
# On the Pub/Sub emulator: how long the audit trail must have stopped changing, every other
# check passing, before the records it misses are looked for on the bus.
AUDIT_SETTLE_S = 20.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


async def _each(items: Iterable[T], read: Callable[[T], Awaitable[bool]]) -> list[T]:
    """The items for which `read` returned False (reads run READ_CONCURRENCY at a time)."""
    semaphore = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(item: T) -> bool:
        async with semaphore:
            return await read(item)

    items = list(items)
    results = await asyncio.gather(*(one(item) for item in items))
    return [item for item, ok in zip(items, results, strict=True) if not ok]


class Checker:
    def __init__(self, cluster: Cluster, workload: Workload, ledger: Path) -> None:
        self.cluster = cluster
        self.workload = workload
        self.ledger = ledger
        # Action ids of every accepted signal (read once: a signal's actions are written with
        # it, in one transaction).
        self.expected_actions: set[str] = set()
        self._completed_actions: set[str] = set()
        self._completed_tasks: set[str] = set()
        # The audit trail read so far: records per resource ("signal/<id>"), the last seq.
        self._audited: collections.Counter[str] = collections.Counter()
        self._audit_seq = 0

    async def writes_exist(self) -> Check:
        """Every receipt's object can be read back (a signal with its decision record)."""
        w = self.workload

        async def signal(signal_id: str) -> bool:
            """The signal exists with its decision record, whose actions are the signal's."""
            try:
                record = await w.coordinator.explain_signal(signal_id)
            except NotFound:
                return False
            decided = {d.action_id for d in record.decisions if d.action_id}
            self.expected_actions.update(record.signal.action_ids)
            return record.evaluated_at_ns > 0 and decided == set(record.signal.action_ids)

        async def task(task_id: str) -> bool:
            try:
                await w.scheduler.get(task_id)
            except NotFound:
                return False
            return True

        async def policy(receipt_index: int) -> bool:
            receipt = w.policies[receipt_index]
            try:
                await w.governor.get(receipt.policy_id, version=receipt.version)
            except NotFound:
                return False
            return True

        lost_signals = await _each(w.signals, signal)
        lost_tasks = await _each(w.tasks, task)
        lost_policies = await _each(range(len(w.policies)), policy)
        lost = len(lost_signals) + len(lost_tasks) + len(lost_policies)
        detail = (
            f"{len(w.signals)} signals, {len(w.tasks)} tasks, {len(w.policies)} policy versions "
            f"accepted; missing: {len(lost_signals)} signals, {len(lost_tasks)} tasks, "
            f"{len(lost_policies)} policy versions"
        )
        if lost_signals or lost_tasks:
            detail += f" (e.g. {(lost_signals + lost_tasks)[0]})"
        return Check("every accepted write exists", lost == 0 and bool(w.signals), detail)

    async def tasks_completed(self) -> Check:
        async def completed(task_id: str) -> bool:
            task = await self.workload.scheduler.get(task_id)
            if task.status == "completed":
                self._completed_tasks.add(task_id)
            return task.status == "completed"

        pending = set(self.workload.tasks) - self._completed_tasks
        left = await _each(sorted(pending), completed)
        return Check(
            "every accepted task completed",
            not left and bool(self.workload.tasks),
            f"{len(self.workload.tasks) - len(left)} of {len(self.workload.tasks)} completed"
            + (f"; e.g. {left[0]} is not" if left else ""),
        )

    def tasks_ran_once(self) -> Check:
        """The executor's ledger: one completion per idempotency key, and one first run (a run
        that is not a replay of a recorded completion) per key."""
        completions = test_ledger.completions(self.ledger)
        first_runs = collections.Counter(
            r.key for r in test_ledger.executions(self.ledger) if not r.replay
        )
        keys = {f"tai-task:{task_id}" for task_id in self.workload.tasks}
        twice = sorted(key for key, count in first_runs.items() if count > 1)
        missing = sorted(keys - set(completions))
        runs = sum(first_runs.values())
        replays = len(test_ledger.executions(self.ledger)) - runs
        return Check(
            "no task executed twice",
            not twice and not missing and bool(keys),
            f"{len(completions)} keys completed, {runs} first runs, {replays} replays of a "
            f"recorded completion; twice: {len(twice)}, never: {len(missing)}"
            + (f" (e.g. {(twice + missing)[0]})" if twice or missing else ""),
        )

    async def actions_delivered(self) -> Check:
        """Every action of every accepted signal reached a StreamActions client and was
        acknowledged (its status is COMPLETED)."""
        received = set(self.workload.actions_received)

        async def completed(action_id: str) -> bool:
            action = await self.workload.coordinator.get_action(action_id)
            if action.status == coordinator_pb2.ACTION_STATUS_COMPLETED:
                self._completed_actions.add(action_id)
                return True
            return False

        pending = (self.expected_actions & received) - self._completed_actions
        await _each(sorted(pending), completed)
        undelivered = self.expected_actions - received
        unacknowledged = self.expected_actions - self._completed_actions - undelivered
        redelivered = sum(1 for count in self.workload.actions_received.values() if count > 1)
        return Check(
            "every action delivered and acknowledged",
            not undelivered and not unacknowledged and bool(self.expected_actions),
            f"{len(self.expected_actions)} actions from the accepted signals; not received: "
            f"{len(undelivered)}, not completed: {len(unacknowledged)}; "
            f"{redelivered} received more than once (redelivered after a broken stream)",
        )

    async def writes_audited(self, replay: bool = False) -> Check:
        """Every accepted task, every acknowledged action and every accepted policy version
        has its audit record (a policy at version n has had n changes, each recorded), and
        the chain is intact.

        `replay`, on the Pub/Sub emulator: the records missing from the trail are looked for
        on the audit topic, and those found there do not fail the check (see
        `published_audit_records`)."""
        w = self.workload
        while True:
            page = await w.governor.audit_page(after_seq=self._audit_seq, page_size=AUDIT_PAGE)
            for record in page.records:
                self._audited[record.resource] += 1
                self._audit_seq = record.seq
            if len(page.records) < AUDIT_PAGE:
                break
        expected = self._expected_audit()
        missing = sorted(r for r, count in expected.items() if self._audited[r] < count)
        published: list[str] = []
        if replay and missing and self.cluster.bus_emulator is not None:
            on_topic = await self.published_audit_records()
            published = [r for r in missing if len(on_topic.get(r, ())) >= expected[r]]
        verified = await self.workload.governor.verify_audit()
        lost = sorted(set(missing) - set(published))
        kinds = collections.Counter(r.split("/")[0] for r in expected)
        detail = (
            f"{self._audit_seq} records for {kinds['task']} tasks, {kinds['action']} "
            f"acknowledgements, {kinds['policy']} policies' changes; missing: {len(missing)}"
            + (f" (e.g. {missing[0]})" if missing else "")
        )
        if published:
            detail += (
                f", of which {len(published)} published on the bus but not delivered to the "
                "audit log by the Pub/Sub emulator (0.8.20 keeps a killed or cut subscriber's "
                "stream as a consumer, gives it part of the later messages and never "
                "redelivers them; Pub/Sub does)"
                + (f", and {len(lost)} never published (e.g. {lost[0]})" if lost else "")
            )
        detail += (
            f"; chain intact ({verified.checked} checked)"
            if verified.intact
            else f"; chain BROKEN at {verified.first_broken_seq}: {verified.reason}"
        )
        return Check(
            "every accepted write is in the audit trail",
            not lost and verified.intact and kinds["task"] > 0 and kinds["action"] > 0,
            detail,
        )

    def _expected_audit(self) -> dict[str, int]:
        """How many audit records each resource must have at least: one per accepted task,
        one per acknowledgement (an action's COMPLETED status says it was accepted;
        actions_delivered reads it), and per policy as many as its last accepted version."""
        expected = {f"task/{t}": 1 for t in self.workload.tasks}
        expected.update({f"action/{a}": 1 for a in self._completed_actions})
        for p in self.workload.policies:
            key = f"policy/{p.policy_id}"
            expected[key] = max(expected.get(key, 0), p.version)
        return expected

    async def published_audit_records(self) -> dict[str, set[str]]:
        """The audit records published on the bus's audit topic (resource -> record ids),
        read through a new subscription, to which the Pub/Sub emulator replays every message
        the topic retains."""
        assert self.cluster.bus_emulator is not None
        host, project = self.cluster.bus_emulator
        return await asyncio.to_thread(replay_audit_topic, host, project)

    def policy_changes_streamed(self) -> Check:
        # The changes after the stream clients began.
        revisions = {
            p.revision for p in self.workload.policies if p.revision > self.workload.setup_revision
        }
        missing = {
            name: sorted(revisions - seen) for name, seen in self.workload.revisions_seen.items()
        }
        worst = max((len(m) for m in missing.values()), default=0)
        return Check(
            "every policy change reached every StreamPolicies client",
            worst == 0 and bool(revisions) and bool(missing),
            f"{len(revisions)} revisions; missing per client: "
            + ", ".join(
                f"{name} {len(m)}" + (f" (e.g. {m[0]})" if m else "") for name, m in missing.items()
            ),
        )

    async def coordinators_caught_up(self) -> Check:
        latest = max(p.revision for p in self.workload.policies)
        reached = []
        for target in self.cluster.targets["coordinator"]:
            async with open_channel(target) as channel:
                try:
                    status = await CoordinatorClient(channel).health()
                    reached.append(int(health_detail(status, "policy_revision")))
                except Unavailable:
                    reached.append(-1)
        return Check(
            "every Coordinator replica caught up with the last policy change",
            all(r >= latest for r in reached),
            f"latest revision {latest}; replicas at {reached}",
        )

    def streams_resumed(self, last_heal_at: float) -> Check:
        """Every stream client reconnected after the faults that broke it and received
        something after the last fault was healed."""
        stale = [
            s.name for s in self.workload.streams.values() if s.last_received_at <= last_heal_at
        ]
        parts = [
            f"{s.name}: {s.connects} connections, ended by "
            f"{dict(collections.Counter(s.breaks)) or 'nothing'}"
            for s in self.workload.streams.values()
        ]
        return Check(
            "every stream client resumed",
            not stale and bool(self.workload.streams),
            "; ".join(parts) + (f"; silent since the last fault: {stale}" if stale else ""),
        )

    async def run(self, drain_s: float, last_heal_at: float) -> list[Check]:
        """Every check; the asynchronous ones are polled for up to `drain_s`. On the Pub/Sub
        emulator, once the audit trail alone has been short for AUDIT_SETTLE_S, the records
        it misses are looked for on the bus (see `writes_audited`)."""
        written = await self.writes_exist()
        deadline = time.monotonic() + drain_s
        audit_detail, audit_since = "", time.monotonic()
        while True:
            waiting = [
                await self.tasks_completed(),
                await self.actions_delivered(),
                await self.writes_audited(),
                self.policy_changes_streamed(),
                await self.coordinators_caught_up(),
            ]
            if all(c.passed for c in waiting) or time.monotonic() > deadline:
                break
            audit = waiting[2]
            if audit.detail != audit_detail:
                audit_detail, audit_since = audit.detail, time.monotonic()
            others_passed = all(c.passed for c in waiting if c is not audit)
            if (
                self.cluster.bus_emulator is not None
                and others_passed
                and time.monotonic() - audit_since >= AUDIT_SETTLE_S
            ):
                waiting[2] = await self.writes_audited(replay=True)
                break
            await asyncio.sleep(POLL_INTERVAL_S)
        return [written, *waiting, self.tasks_ran_once(), self.streams_resumed(last_heal_at)]


def replay_audit_topic(host: str, project: str) -> dict[str, set[str]]:
    """Reads every message the emulator retains on the audit topic through a subscription of
    its own, deleted afterwards."""
    path = SubscriberClient.subscription_path(project, f"chaos-audit-{uuid.uuid4().hex[:8]}")
    records: dict[str, set[str]] = collections.defaultdict(set)
    channel = grpc.insecure_channel(host)
    with SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)) as subscriber:
        subscriber.create_subscription(
            name=path, topic=f"projects/{project}/topics/{topics.AUDIT_EVENTS}"
        )
        # Done after two pulls in a row found nothing (the replay may take a moment to start).
        idle = 0
        while idle < 2:
            try:
                reply = subscriber.pull(subscription=path, max_messages=1000, retry=None, timeout=5)
            except DeadlineExceeded:
                idle += 1
                continue
            if not reply.received_messages:
                idle += 1
                continue
            idle = 0
            for received in reply.received_messages:
                event = events_pb2.Event.FromString(received.message.data)
                record = common_pb2.AuditRecord()
                event.payload.Unpack(record)
                records[record.resource].add(record.record_id)
            subscriber.acknowledge(
                subscription=path, ack_ids=[r.ack_id for r in reply.received_messages]
            )
        subscriber.delete_subscription(subscription=path)
    return records
