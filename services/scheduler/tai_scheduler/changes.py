"""Writing task changes: each transaction collects its changed tasks in a `ChangeSet`, which
writes every document once and adds one `TaskEvent` per state change to the outbox (topic
`tai-tasks`), in the same transaction.

Also what a recurring task's runs need inside a transaction, shared by the API and the worker:
offering an occurrence to the schedule under an overlap policy (`offer_occurrence`), the
bookkeeping when a run ends (`settle_parent`: the parent forgets it, and the run waiting behind
it is released, or a backfill's next run is made), and the backfill's steps (`step_backfill`).
Every read goes through `TaskReads` before the `ChangeSet` writes anything, so each
transaction reads first and writes last (as Firestore requires).

The `ChangeSet` also keeps the namespace's count of open (not final) tasks, one counter
document (`task_counters/open`) updated in the same transaction as the tasks it counts, so
the quota `max_open_tasks` holds exactly however many replicas submit at once. Only in
namespaces that have had the quota: the counter starts at their first submission under it
(from the open tasks there are), so namespaces without it never write that one document, which
every task transition would otherwise contend for (on Firestore, a burst from three replicas
ran out of transaction attempts on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tai.v1 import events_pb2
from tai_common.core import ResourceExhausted
from tai_common.core.namespace import current_namespace
from tai_common.messaging import events, topics
from tai_common.ports import Transaction

from tai_scheduler.convert import task_to_proto
from tai_scheduler.repository import TaskRepository
from tai_scheduler.task import (
    FINAL_STATES,
    Backfill,
    FireDecision,
    OverlapPolicy,
    RunOrigin,
    Task,
    TaskState,
    child_task_id,
    decide_fire,
)

EVENT_PREFIX = "task."
# Occurrence ids a backfill step reads at once while looking for one without a run.
_BACKFILL_READ_BATCH = 16
# The namespace's count of open tasks (the store keeps the collection per namespace).
COUNTERS = "task_counters"
OPEN_COUNTER = "open"


def _open(task: Task | None) -> int:
    return 0 if task is None or task.is_final else 1


def event_type(previous: Task | None, task: Task) -> str | None:
    """The event a change publishes: task.submitted|running|completed|failed|retrying|
    cancelled, task.paused|resumed for a schedule, or None for changes nobody needs to hear
    about (a recurring task moving to its next fire, a waiting run released)."""
    if previous is None:
        return EVENT_PREFIX + "submitted"
    if task.paused != previous.paused and not task.is_final:
        return EVENT_PREFIX + ("paused" if task.paused else "resumed")
    if task.status is previous.status and task.status is not TaskState.RUNNING:
        return None
    if task.status is TaskState.RUNNING:
        # A new attempt (a re-claim after a lapsed lease included), never a lease renewal.
        if previous.status is TaskState.RUNNING and previous.attempts == task.attempts:
            return None
        return EVENT_PREFIX + "running"
    if task.status is TaskState.PENDING:
        return EVENT_PREFIX + "retrying"
    return EVENT_PREFIX + task.status.value


@dataclass
class ChangeSet:
    """The tasks one transaction changes, in order, and the events of those changes."""

    _tasks: dict[str, Task] = field(default_factory=dict)
    _created: set[str] = field(default_factory=set)
    _events: list[tuple[Task | None, Task]] = field(default_factory=list)

    def add(self, task: Task, previous: Task | None) -> Task:
        """Records `task` (the next state of `previous`, or a new task when None)."""
        if previous is None:
            self._created.add(task.id)
        self._tasks[task.id] = task
        self._events.append((previous, task))
        return task

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def created(self) -> list[Task]:
        """The tasks this transaction creates, in their last state."""
        return [self._tasks[task_id] for task_id in self._created]

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def open_delta(self) -> int:
        """How many more tasks are open (not final) once this set is written."""
        first: dict[str, Task | None] = {}
        for previous, task in self._events:
            first.setdefault(task.id, previous)
        return sum(_open(task) - _open(first.get(task_id)) for task_id, task in self._tasks.items())

    async def write(
        self,
        tx: Transaction,
        repo: TaskRepository,
        event_factory: events.EventFactory,
        *,
        max_open: int = 0,
    ) -> None:
        """Buffers the documents (each once, in its last state), the events, and the
        namespace's open-task counter when it changes (read here: call before any other
        write of the transaction).

        Raises:
            ResourceExhausted: the set opens tasks beyond `max_open` (0: no limit).
        """
        delta = self.open_delta()
        if delta:
            counter = await tx.get(COUNTERS, OPEN_COUNTER)
            count: int | None = None
            if counter is not None:
                count = int(counter.data.get("count", 0))
            elif max_open and delta > 0:
                # The namespace's first submission under the quota starts the counter from
                # the open tasks there are (reading the counter's absence serialises it with
                # any other first submission).
                count = await repo.count_open_in(tx, limit=max_open + 1)
            if count is not None:
                if max_open and delta > 0 and count + delta > max_open:
                    raise ResourceExhausted(
                        f"namespace {current_namespace()!r} quota max_open_tasks={max_open} reached"
                    )
                tx.set(COUNTERS, OPEN_COUNTER, {"count": max(0, count + delta)})
        for task_id, task in self._tasks.items():
            if task_id in self._created:
                repo.create_in(tx, task)
            else:
                repo.write_in(tx, task)
        for previous, task in self._events:
            kind = event_type(previous, task)
            if kind is None:
                continue
            event = event_factory.build(
                event_type=kind,
                aggregate_type="task",
                aggregate_id=task.id,
                aggregate_version=task.version,
                payload=events_pb2.TaskEvent(
                    task=task_to_proto(task),
                    previous_status=previous.status.value if previous else "",
                ),
            )
            tx.publish(topics.TASKS, event)


class TaskReads:
    """The tasks one transaction reads, each once, seen with the changes it made so far."""

    def __init__(self, tx: Transaction, repo: TaskRepository, changes: ChangeSet) -> None:
        self._tx = tx
        self._repo = repo
        self._changes = changes
        self._read: dict[str, Task | None] = {}

    @property
    def changes(self) -> ChangeSet:
        return self._changes

    def seed(self, tasks: Sequence[Task]) -> None:
        """Tasks the transaction has read already (no second read)."""
        for task in tasks:
            self._read.setdefault(task.id, task)

    async def get(self, task_id: str) -> Task | None:
        if not task_id:
            return None
        changed = self._changes.get(task_id)
        if changed is not None:
            return changed
        if task_id not in self._read:
            self._read[task_id] = await self._repo.get_in(self._tx, task_id)
        return self._read[task_id]

    async def existing(self, task_ids: Sequence[str]) -> set[str]:
        """The ids among `task_ids` that name a task (one read for those not seen yet)."""
        unseen = [i for i in task_ids if i not in self._read and self._changes.get(i) is None]
        if unseen:
            found = await self._repo.get_many_in(self._tx, unseen)
            for task_id in unseen:
                self._read[task_id] = found.get(task_id)
        return {
            i for i in task_ids if self._changes.get(i) is not None or self._read.get(i) is not None
        }


@dataclass(frozen=True)
class Offer:
    """What an occurrence offered to a schedule came to."""

    # FireDecision.SKIP: dropped by the overlap policy; None: the occurrence has a run already.
    decision: FireDecision | None
    # The run made (started or waiting), or the waiting run released in its stead.
    run: Task | None = None
    # The task that became due now, for the worker to claim.
    due: Task | None = None


async def offer_occurrence(
    reads: TaskReads,
    parent_id: str,
    fire_ns: int,
    now_ns: int,
    *,
    policy: OverlapPolicy,
    origin: RunOrigin = RunOrigin.SCHEDULE,
    run_id: str = "",
) -> Offer:
    """Offers the occurrence at `fire_ns` to the recurring task `parent_id`, as if it had just
    come due: it runs now, waits behind the unfinished run (BUFFER_ONE), or is dropped (SKIP,
    or BUFFER_ONE with a run already waiting). Its run is `run_id`, or the occurrence's own id
    (then an occurrence that already has a run makes none: each runs once)."""
    changes = reads.changes
    parent = await reads.get(parent_id)
    if parent is None:
        raise LookupError(f"recurring task {parent_id!r} vanished")
    active = await reads.get(parent.active_child_id)
    buffered = await reads.get(parent.buffered_child_id)
    decision = decide_fire(
        policy, active.status if active else None, buffered.status if buffered else None
    )
    creates = decision in (FireDecision.RUN, FireDecision.BUFFER)
    if creates and await reads.get(run_id or child_task_id(parent.id, fire_ns)) is not None:
        return Offer(None)
    if decision is FireDecision.RUN:
        run = changes.add(
            parent.child(now_ns, fire_ns, held=False, origin=origin, run_id=run_id), None
        )
        changes.add(parent.fired(now_ns, active_child_id=run.id, buffered_child_id=""), parent)
        return Offer(decision, run, run)
    if decision is FireDecision.BUFFER:
        run = changes.add(
            parent.child(now_ns, fire_ns, held=True, origin=origin, run_id=run_id), None
        )
        changes.add(
            parent.fired(now_ns, active_child_id=parent.active_child_id, buffered_child_id=run.id),
            parent,
        )
        return Offer(decision, run)
    if decision is FireDecision.RELEASE_BUFFERED and buffered is not None:
        released = changes.add(buffered.released_from_hold(now_ns), buffered)
        changes.add(parent.fired(now_ns, active_child_id=buffered.id, buffered_child_id=""), parent)
        return Offer(decision, released, released)
    return Offer(FireDecision.SKIP)


async def has_unfinished_run(reads: TaskReads, parent: Task) -> bool:
    """A run of `parent` is running, or due, or waiting to start."""
    for task_id in (parent.active_child_id, parent.buffered_child_id):
        run = await reads.get(task_id)
        if run is not None and run.status not in FINAL_STATES:
            return True
    return False


async def step_backfill(reads: TaskReads, parent_id: str, now_ns: int) -> Task | None:
    """With a backfill in progress and no run of the schedule unfinished: makes the backfill's
    next run, due now, skipping the occurrences that already have one; returns it (None: the
    backfill waits for the unfinished run, or it is over)."""
    changes = reads.changes
    parent = await reads.get(parent_id)
    if parent is None or parent.backfill is None or parent.is_final:
        return None
    if await has_unfinished_run(reads, parent):
        return None
    backfill = parent.backfill
    fires = parent.schedule.fires_after(backfill.next_ns - 1)
    remaining = backfill.remaining
    upcoming = next(fires)
    while remaining > 0 and upcoming < backfill.end_ns:
        batch: list[int] = []
        while upcoming < backfill.end_ns and len(batch) < min(remaining, _BACKFILL_READ_BATCH):
            batch.append(upcoming)
            upcoming = next(fires)
        taken = await reads.existing([child_task_id(parent.id, fire) for fire in batch])
        for fire in batch:
            remaining -= 1
            if child_task_id(parent.id, fire) in taken:
                continue  # it ran already (the cadence, or an earlier backfill)
            run = changes.add(
                parent.child(now_ns, fire, held=False, origin=RunOrigin.BACKFILL), None
            )
            following = batch[batch.index(fire) + 1] if fire != batch[-1] else upcoming
            rest = (
                Backfill(
                    next_ns=following,
                    end_ns=backfill.end_ns,
                    remaining=remaining,
                    requested_by=backfill.requested_by,
                    requested_at_ns=backfill.requested_at_ns,
                )
                if remaining > 0 and following < backfill.end_ns
                else None
            )
            fired = parent.fired(now_ns, active_child_id=run.id, buffered_child_id="")
            changes.add(fired.with_backfill(now_ns, rest), parent)
            return run
    changes.add(parent.with_backfill(now_ns, None), parent)
    return None


async def settle_parent(reads: TaskReads, ended: Task, now_ns: int) -> Task | None:
    """`ended` (a run) reached a final state: the parent drops it, and the run waiting behind
    it, if any, becomes due now; else a backfill in progress makes its next run. Returns the
    task that became due now, if any."""
    changes = reads.changes
    parent = await reads.get(ended.parent_task_id)
    if parent is None:
        return None
    if parent.buffered_child_id == ended.id:
        changes.add(
            parent.with_children(
                now_ns, active_child_id=parent.active_child_id, buffered_child_id=""
            ),
            parent,
        )
        return None
    if parent.active_child_id != ended.id:
        return None
    buffered = await reads.get(parent.buffered_child_id)
    if buffered is not None and buffered.status is TaskState.PENDING and buffered.held:
        released = changes.add(buffered.released_from_hold(now_ns), buffered)
        changes.add(
            parent.with_children(now_ns, active_child_id=buffered.id, buffered_child_id=""),
            parent,
        )
        return released
    return await step_backfill(reads, parent.id, now_ns)
