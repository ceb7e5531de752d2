"""Writing task changes: each transaction collects its changed tasks in a `ChangeSet`, which
writes every document once and adds one `TaskEvent` per state change to the outbox (topic
`tai-tasks`), in the same transaction.

Also the bookkeeping a run of a recurring task needs when it ends (`settle_parent`): the
parent forgets it, and a run waiting behind it under BUFFER_ONE is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tai.v1 import events_pb2
from tai_common.messaging import events, topics
from tai_common.ports import Transaction

from tai_scheduler.convert import task_to_proto
from tai_scheduler.repository import TaskRepository
from tai_scheduler.task import Task, TaskState

EVENT_PREFIX = "task."


def event_type(previous: Task | None, task: Task) -> str | None:
    """The event a change publishes: task.submitted|running|completed|failed|retrying|
    cancelled, or None for changes nobody needs to hear about (a recurring task moving to its
    next fire, a waiting run released)."""
    if previous is None:
        return EVENT_PREFIX + "submitted"
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

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def write(
        self, tx: Transaction, repo: TaskRepository, event_factory: events.EventFactory
    ) -> None:
        """Buffers the documents (each once, in its last state) and the events."""
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


@dataclass(frozen=True)
class Family:
    """A run's recurring parent and the run waiting behind it, read before a run ends."""

    parent: Task | None = None
    buffered: Task | None = None


async def read_family(tx: Transaction, repo: TaskRepository, task: Task) -> Family:
    """Reads what `settle_parent` needs (nothing for a task that is not a run)."""
    if not task.parent_task_id:
        return Family()
    parent = await repo.get_in(tx, task.parent_task_id)
    if parent is None or not parent.buffered_child_id or parent.buffered_child_id == task.id:
        return Family(parent)
    return Family(parent, await repo.get_in(tx, parent.buffered_child_id))


def settle_parent(changes: ChangeSet, family: Family, ended: Task, now_ns: int) -> None:
    """`ended` (a run) reached a final state: the parent drops it, and the run waiting behind
    it, if any, becomes due now."""
    parent = changes.get(family.parent.id) if family.parent else None
    parent = parent or family.parent
    if parent is None:
        return
    if parent.buffered_child_id == ended.id:
        changes.add(
            parent.with_children(
                now_ns, active_child_id=parent.active_child_id, buffered_child_id=""
            ),
            parent,
        )
        return
    buffered = family.buffered
    if parent.active_child_id != ended.id or buffered is None:
        return
    if buffered.status is TaskState.PENDING and buffered.held:
        changes.add(buffered.released_from_hold(now_ns), buffered)
        changes.add(
            parent.with_children(now_ns, active_child_id=buffered.id, buffered_child_id=""),
            parent,
        )
