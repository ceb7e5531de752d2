"""The Scheduler's use cases behind the API: submit, cancel, read, list and stream tasks.

Each change is one store transaction that writes the task and its `TaskEvent` (through the
outbox), then wakes the outbox relay; a submission also wakes this replica's worker, and the
event wakes the others'. Running tasks is the worker's part (`tai_scheduler.worker`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tai.v1 import events_pb2
from tai_common.auth import Principal, Role
from tai_common.core import (
    Aborted,
    AlreadyExists,
    Clock,
    IdFactory,
    InvalidArgument,
    NotFound,
    PageRequest,
    PermissionDenied,
    current_context_carrier,
    page_scope,
)
from tai_common.messaging import AuditTrail, Broadcaster, ListenerLagged, current_method, events
from tai_common.ports import DocumentStore, Transaction

from tai_scheduler.changes import ChangeSet, read_family, settle_parent
from tai_scheduler.convert import task_to_proto, update_message
from tai_scheduler.executors.registry import ExecutorRegistry
from tai_scheduler.repository import TaskRepository
from tai_scheduler.task import (
    API_LIMITS,
    FINAL_STATES,
    MAX_REASON_LENGTH,
    MAX_TASK_TYPE_LENGTH,
    AttemptOutcome,
    ParameterLimits,
    Submission,
    Task,
    TaskState,
    check_task_id,
    new_task,
    require_task_id,
    validate_submission,
)


@dataclass(frozen=True)
class TaskUpdate:
    """One change of one task, as streams report it."""

    task_id: str
    status: TaskState
    version: int
    timestamp_ns: int
    message: str
    attempt: int
    task_type: str

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    @classmethod
    def of(cls, task: Task, timestamp_ns: int) -> TaskUpdate:
        return cls(
            task_id=task.id,
            status=task.status,
            version=task.version,
            timestamp_ns=timestamp_ns,
            message=update_message(task_to_proto(task)),
            attempt=task.attempts[-1].attempt if task.attempts else 0,
            task_type=task.task_type,
        )


class Wakeup:
    """Tells the worker that the set of due tasks may have changed (calling it), or that a task
    ended (`ended`: cancelled, here or on another replica)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[int | None], None]] = []
        self._ended: list[Callable[[str], None]] = []

    def subscribe(
        self, listener: Callable[[int | None], None], ended: Callable[[str], None] | None = None
    ) -> None:
        """`listener` is called when due tasks may have changed (with the changed task's due
        time, when one task changed); `ended` with the id of each task that reached a final
        state."""
        self._listeners.append(listener)
        if ended is not None:
            self._ended.append(ended)

    def __call__(self, due_ns: int | None = None) -> None:
        for listener in self._listeners:
            listener(due_ns)

    def ended(self, task_id: str) -> None:
        for listener in self._ended:
            listener(task_id)


class TaskService:
    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        ids: IdFactory,
        event_factory: events.EventFactory,
        executors: ExecutorRegistry,
        *,
        on_committed: Callable[[], None],
        wakeup: Wakeup,
        until_stopping: Callable[[Awaitable[Any]], Awaitable[Any]],
        audit: AuditTrail,
        replica_id: str = "",
    ) -> None:
        """`on_committed` is called after every committed change (it wakes the outbox relay);
        `wakeup` tells the worker that due tasks may have changed; `until_stopping` wraps
        every wait of a stream so streams end on shutdown; `replica_id` names this replica's
        worker, whose own attempts' ends need no wake-up."""
        self._store = store
        self._repo = TaskRepository(store)
        self._clock = clock
        self._ids = ids
        self._events = event_factory
        self._executors = executors
        self._on_committed = on_committed
        self._wakeup = wakeup
        self._until_stopping = until_stopping
        self._audit = audit
        self._replica_id = replica_id
        self.updates: Broadcaster[TaskUpdate] = Broadcaster()

    # --- changes ---

    async def submit(
        self,
        submission: Submission,
        *,
        principal: str,
        limits: ParameterLimits = API_LIMITS,
        submitted_id: bool = True,
    ) -> Task:
        """Creates a task (or a recurring one).

        Args:
            submission: what to run, when and how.
            principal: who asks.
            limits: bounds on the parameters (derived tasks get wider ones).
            submitted_id: the id comes from a caller (the stricter length rule applies).

        Raises:
            InvalidArgument: a field is invalid; the error names it.
            AlreadyExists: the task id is taken (by any task, in any state).
        """
        schedule = validate_submission(
            submission, self._executors.task_types, limits, submitted_id=submitted_id
        )
        self._executors.validate(submission.task_type, submission.parameters)
        task_id = submission.task_id or self._ids.new_id("task")

        async def apply(tx: Transaction) -> Task:
            if await self._repo.get_in(tx, task_id) is not None:
                raise AlreadyExists("task", task_id)
            task = new_task(
                submission,
                task_id=task_id,
                now_ns=self._clock.now_ns(),
                principal=principal,
                schedule=schedule,
                trace_context=current_context_carrier(),
            )
            changes = ChangeSet()
            changes.add(task, None)
            changes.write(tx, self._repo, self._events)
            self._audit.record_in(
                tx,
                f"task/{task.id}",
                None,
                task.to_doc(),
                principal=principal,
                action=current_method() or "event:task.submitted",
            )
            return task

        try:
            task = await self._store.run_transaction(apply)
        except AlreadyExists as error:
            # The store's own refusal names the document; a caller knows tasks.
            raise AlreadyExists("task", task_id) from error
        self._committed(task.next_run_ns)
        return task

    async def cancel(self, task_id: str, reason: str, caller: Principal) -> Task:
        """Cancels a pending or running task; a recurring task stops, and its pending runs
        are cancelled with it. Only an admin may cancel a task someone else submitted.

        Raises:
            NotFound: no such task.
            FailedPrecondition: the task already finished.
            PermissionDenied: the task is someone else's and the caller is no admin.
        """
        require_task_id(task_id)
        if len(reason) > MAX_REASON_LENGTH:
            raise InvalidArgument("reason", f"must be at most {MAX_REASON_LENGTH} characters")

        async def apply(tx: Transaction) -> Task:
            task = await self._repo.get_in(tx, task_id)
            if task is None:
                raise NotFound("task", task_id)
            if task.created_by != caller.name and not caller.has(Role.ADMIN):
                raise PermissionDenied(
                    f"task {task_id!r} was submitted by {task.created_by or 'a service'}; "
                    "only an admin may cancel another caller's task"
                )
            runs = (
                await self._repo.children_in(tx, task.id, TaskState.PENDING)
                if task.is_recurring
                else []
            )
            family = await read_family(tx, self._repo, task)
            now = self._clock.now_ns()
            changes = ChangeSet()
            cancelled = changes.add(task.cancelled(now, reason), task)
            for run in runs:
                changes.add(run.cancelled(now, f"recurring task {task.id} was cancelled"), run)
            settle_parent(changes, family, cancelled, now)
            changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), cancelled.to_doc())
            return cancelled

        task = await self._store.run_transaction(apply)
        self._committed()
        # A replica holding it (this one: at once; others: through the task's event) gives up
        # its claim, so that an attempt claimed ahead never starts.
        self._wakeup.ended(task.id)
        return task

    def _committed(self, due_ns: int | None = None) -> None:
        self._on_committed()
        self._wakeup(due_ns)

    # --- reads ---

    async def get(self, task_id: str) -> Task:
        require_task_id(task_id)
        task = await self._repo.get(task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task

    async def list_tasks(
        self,
        *,
        status: str,
        task_type: str,
        parent_task_id: str,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[Task], str]:
        if status and status not in {s.value for s in TaskState}:
            raise InvalidArgument(
                "status", f"must be one of {', '.join(s.value for s in TaskState)}"
            )
        if len(task_type) > MAX_TASK_TYPE_LENGTH:
            raise InvalidArgument("task_type", f"must be at most {MAX_TASK_TYPE_LENGTH} characters")
        if parent_task_id:
            check_task_id(parent_task_id, "parent_task_id")
        page = PageRequest.parse(
            requested_page_size, page_token, page_scope("tasks", status, task_type, parent_task_id)
        )
        tasks, cursor = await self._repo.list(
            status=status,
            task_type=task_type,
            parent_task_id=parent_task_id,
            limit=page.size,
            start_after=page.start_after,
        )
        return tasks, page.next_token(cursor)

    async def stream(self, task_id: str) -> AsyncIterator[TaskUpdate]:
        """With `task_id`: the task's current status, then its updates until it reaches a
        final status. Without: every task's updates from now on."""
        if task_id:
            check_task_id(task_id)
        # Listen before reading, so that no update falls between the read and the listening.
        with self.updates.listen() as listener:
            last_version = 0
            if task_id:
                task = await self.get(task_id)
                current = TaskUpdate.of(task, task.updated_at_ns or task.created_at_ns)
                yield current
                if current.is_final:
                    return
                last_version = current.version
            while True:
                try:
                    update = await self._until_stopping(listener.get())
                except ListenerLagged:
                    raise Aborted(
                        "the stream fell behind the task updates; reconnect"
                        + (" to read the task's current status" if task_id else "")
                    ) from None
                if task_id:
                    if update.task_id != task_id or update.version <= last_version:
                        continue
                    last_version = update.version
                yield update
                if task_id and update.is_final:
                    return

    async def on_task_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to `tai-tasks`: feeds the streams, and
        wakes the worker (a task submitted or retried elsewhere may be due before its next
        planned wake-up)."""
        payload = events.unpack(event, events_pb2.TaskEvent)
        task = payload.task
        self.updates.publish(
            TaskUpdate(
                task_id=task.task_id,
                status=TaskState(task.status),
                version=event.aggregate_version,
                timestamp_ns=event.occurred_at_ns,
                message=update_message(task),
                attempt=task.attempts[-1].attempt if task.attempts else 0,
                task_type=task.task_type,
            )
        )
        if TaskState(task.status) in FINAL_STATES:
            self._wakeup.ended(task.task_id)
        last = task.attempts[-1] if task.attempts else None
        # This replica's worker wrote the end of its own attempt (and looks again itself if
        # the task is due again): nothing new for it.
        own_end = (
            last is not None
            and last.worker == self._replica_id
            and last.outcome in (AttemptOutcome.COMPLETED, AttemptOutcome.FAILED)
        )
        if event.event_type != "task.running" and not own_end:
            self._wakeup(task.next_run_ns or None)
