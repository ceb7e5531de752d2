"""The Scheduler's use cases behind the API: submit, cancel, read, list and stream tasks, and
an operator's hand on recurring tasks (pause, resume, trigger, backfill, upcoming runs).

Each change is one store transaction that writes the task and its `TaskEvent` (through the
outbox), then wakes the outbox relay; a submission also wakes this replica's worker, and the
event wakes the others'. Running tasks is the worker's part (`tai_scheduler.worker`).
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tai.v1 import events_pb2
from tai_common.auth import Principal, Role
from tai_common.core import (
    Aborted,
    AlreadyExists,
    Clock,
    FailedPrecondition,
    IdFactory,
    InvalidArgument,
    NotFound,
    PageRequest,
    PermissionDenied,
    current_context_carrier,
    page_scope,
)
from tai_common.core.namespace import current_namespace, namespace_or_none
from tai_common.core.units import NS_PER_SECOND
from tai_common.messaging import AuditTrail, Broadcaster, ListenerLagged, current_method, events
from tai_common.namespacing import NamespaceDirectory
from tai_common.ports import DocumentStore, Transaction

from tai_scheduler import metrics
from tai_scheduler.changes import (
    ChangeSet,
    TaskReads,
    offer_occurrence,
    settle_parent,
    step_backfill,
)
from tai_scheduler.convert import task_to_proto, update_message
from tai_scheduler.executors.registry import ExecutorRegistry
from tai_scheduler.repository import TaskRepository
from tai_scheduler.task import (
    API_LIMITS,
    DEFAULT_UPCOMING_RUNS,
    FINAL_STATES,
    MAX_BACKFILL_OCCURRENCES,
    MAX_REASON_LENGTH,
    MAX_TASK_TYPE_LENGTH,
    MAX_UPCOMING_RUNS,
    AttemptOutcome,
    Backfill,
    FireDecision,
    OverlapPolicy,
    ParameterLimits,
    RunOrigin,
    SkipReason,
    Submission,
    Task,
    TaskState,
    check_task_id,
    child_task_id,
    new_task,
    plan_catch_up,
    require_task_id,
    trigger_task_id,
    validate_submission,
)

# Occurrence ids one read of a backfill looks up at once.
_BACKFILL_READ_CHUNK = 100


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
    # The namespace the task lives in: a stream carries only its own namespace's updates.
    namespace: str = ""

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
            namespace=namespace_or_none() or "",
        )


@dataclass(frozen=True)
class ScheduleChange:
    """A recurring task after an operator's change, and what the change did (for the receipt's
    `result_data`)."""

    task: Task
    result: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpcomingRun:
    scheduled_time_ns: int
    local_time: str
    run_task_id: str


@dataclass(frozen=True)
class UpcomingRuns:
    runs: list[UpcomingRun]
    time_zone: str
    paused: bool


def _format_time(ns: int) -> str:
    moment = dt.datetime.fromtimestamp(ns // NS_PER_SECOND, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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
        namespaces: NamespaceDirectory | None = None,
    ) -> None:
        """`on_committed` is called after every committed change (it wakes the outbox relay);
        `wakeup` tells the worker that due tasks may have changed; `until_stopping` wraps
        every wait of a stream so streams end on shutdown; `replica_id` names this replica's
        worker, whose own attempts' ends need no wake-up; `namespaces` gives each namespace's
        quota `max_open_tasks` (None: no quota)."""
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
        self._namespaces = namespaces
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
            ResourceExhausted: the namespace holds its quota `max_open_tasks` of open tasks.
        """
        schedule = validate_submission(
            submission, self._executors.task_types, limits, submitted_id=submitted_id
        )
        self._executors.validate(submission.task_type, submission.parameters)
        task_id = submission.task_id or self._ids.new_id("task")
        max_open = (
            (await self._namespaces.quotas(current_namespace())).max_open_tasks
            if self._namespaces is not None
            else 0
        )

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
            await changes.write(tx, self._repo, self._events, max_open=max_open)
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
        _check_request(task_id, reason, "reason")

        async def apply(tx: Transaction) -> tuple[Task, list[Task]]:
            task = await self._get_in(tx, task_id)
            _check_owner(task, caller, "cancel", "task")
            runs = (
                await self._repo.children_in(tx, task.id, TaskState.PENDING)
                if task.is_recurring
                else []
            )
            now = self._clock.now_ns()
            changes = ChangeSet()
            reads = TaskReads(tx, self._repo, changes)
            reads.seed([task, *runs])
            cancelled = changes.add(task.cancelled(now, reason), task)
            for run in runs:
                changes.add(run.cancelled(now, f"recurring task {task.id} was cancelled"), run)
            if cancelled.parent_task_id:
                await settle_parent(reads, cancelled, now)
            await changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), cancelled.to_doc())
            return cancelled, changes.created()

        task, created = await self._store.run_transaction(apply)
        self._committed()
        metrics.count_schedule_changes({}, created)
        # A replica holding it (this one: at once; others: through the task's event) gives up
        # its claim, so that an attempt claimed ahead never starts.
        self._wakeup.ended(task.id)
        return task

    # --- a recurring task under an operator's hand ---

    async def pause(self, task_id: str, note: str, caller: Principal) -> ScheduleChange:
        """Pauses a recurring task: it fires nothing until resumed; its runs that have not
        started (waiting behind another, or claimed ahead of a due time still to come) are
        cancelled, and a backfill in progress is dropped. A run already executing goes on.

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or already paused.
            PermissionDenied: someone else's schedule, and the caller is no admin.
        """
        _check_request(task_id, note, "note")

        async def apply(tx: Transaction) -> tuple[Task, list[Task], dict[SkipReason, int]]:
            task = await self._get_in(tx, task_id)
            _check_owner(task, caller, "pause", "schedule")
            now = self._clock.now_ns()
            task.paused_now(now, caller.name, note, {})  # refuses before anything is read
            waiting = [
                run
                for status in (TaskState.PENDING, TaskState.RUNNING)
                for run in await self._repo.children_in(tx, task.id, status)
                if not run.has_started(now)
            ]
            why = f"recurring task {task.id} was paused by {caller.name}"
            changes = ChangeSet()
            cancelled = [
                changes.add(run.cancelled(now, why + (f": {note}" if note else "")), run)
                for run in waiting
            ]
            dropped = task.backfill.remaining if task.backfill else 0
            skipped = {SkipReason.PAUSED: len(cancelled) + dropped}
            paused = changes.add(task.paused_now(now, caller.name, note, skipped), task)
            await changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), paused.to_doc())
            return paused, cancelled, skipped

        paused, cancelled, skipped = await self._store.run_transaction(apply)
        self._committed()
        for run in cancelled:
            # The replica holding it gives it up (this one: at once; others: by the event).
            self._wakeup.ended(run.id)
        metrics.count_schedule_changes(skipped, ())
        return ScheduleChange(paused, {"paused": "true", "cancelled_runs": str(len(cancelled))})

    async def resume(self, task_id: str, note: str, caller: Principal) -> ScheduleChange:
        """Resumes a paused recurring task from now: the occurrences that came due while it
        was paused are skipped (counted, reason "paused"); it fires next at its first
        occurrence from now on.

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or not paused.
            PermissionDenied: someone else's schedule, and the caller is no admin.
        """
        _check_request(task_id, note, "note")

        async def apply(tx: Transaction) -> tuple[Task, Mapping[SkipReason, int], bool]:
            task = await self._get_in(tx, task_id)
            _check_owner(task, caller, "resume", "schedule")
            now = self._clock.now_ns()
            resumed = task.resumed_now(now, caller.name, note)
            # The occurrences before now were missed while paused. A long pause of a fast
            # schedule has more than one pass handles: the worker counts the rest.
            plan = plan_catch_up(
                resumed.schedule,
                resumed.next_run_ns,
                now - 1,
                window_seconds=resumed.catchup_window_seconds,
                skip_before_ns=now,
            )
            resumed = resumed.advanced(now, plan.next_fire_ns, plan.skipped)
            changes = ChangeSet()
            changes.add(resumed, task)
            await changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), resumed.to_doc())
            return resumed, plan.skipped, plan.next_fire_ns < now

        resumed, skipped, counting = await self._store.run_transaction(apply)
        self._committed(resumed.next_run_ns)
        metrics.count_schedule_changes(skipped, ())
        return ScheduleChange(
            resumed,
            {
                "paused": "false",
                "skipped_while_paused": str(skipped.get(SkipReason.PAUSED, 0)),
                # More came than one pass counts: the worker counts the rest (skipped_runs).
                "skipped_counting": "true" if counting else "false",
            },
        )

    async def trigger(self, task_id: str, caller: Principal) -> ScheduleChange:
        """Runs one occurrence of a recurring task now, outside its cadence (whose next fire
        does not move), under its overlap policy: it starts now, waits behind the unfinished
        run (BUFFER_ONE), or is skipped (SKIP, or a run already waiting). Also while paused.

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, or finished.
            PermissionDenied: someone else's schedule, and the caller is no admin.
        """
        require_task_id(task_id)

        async def apply(tx: Transaction) -> tuple[Task, dict[str, str], list[Task], int]:
            task = await self._get_in(tx, task_id)
            _check_owner(task, caller, "trigger", "schedule")
            task.check_schedule_control("trigger")
            now = self._clock.now_ns()
            changes = ChangeSet()
            reads = TaskReads(tx, self._repo, changes)
            reads.seed([task])
            run_id = trigger_task_id(task.id, now)
            offer = await offer_occurrence(
                reads,
                task.id,
                now,
                now,
                policy=task.overlap_policy,
                origin=RunOrigin.TRIGGER,
                run_id=run_id,
            )
            if offer.decision is None:
                raise Aborted(f"run {run_id!r} was triggered in the same millisecond; retry")
            result = {"outcome": _OUTCOMES[offer.decision], "run_task_id": ""}
            skipped = 0
            if offer.decision is FireDecision.SKIP:
                skipped = 1
                latest = await reads.get(task.id) or task
                changes.add(latest.with_skips(now, {SkipReason.OVERLAP: 1}), latest)
                unfinished = task.buffered_child_id or task.active_child_id
                result["reason"] = (
                    f"run {unfinished} is unfinished and the overlap policy is "
                    f"{task.overlap_policy.value}"
                )
            elif offer.run is not None:
                result["run_task_id"] = offer.run.id
            after = await reads.get(task.id) or task
            await changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), after.to_doc())
            return after, result, changes.created(), skipped

        after, result, created, skipped = await self._store.run_transaction(apply)
        self._committed(self._clock.now_ns())
        metrics.count_schedule_changes({SkipReason.OVERLAP: skipped}, created)
        return ScheduleChange(after, result)

    async def backfill(
        self,
        task_id: str,
        start_ns: int,
        end_ns: int,
        policy: OverlapPolicy | None,
        caller: Principal,
    ) -> ScheduleChange:
        """Runs the occurrences of a recurring task in [start_ns, end_ns) that have no run
        yet (each occurrence runs once: the cadence's runs and an earlier backfill's count),
        under `policy` (None: the schedule's). SKIP and BUFFER_ONE offer them all at once, as
        if each had just come due; BUFFER_ALL runs every one, one after another, each when the
        schedule's previous run ended. Also while paused.

        Raises:
            InvalidArgument: a bad window (naming start_ns or end_ns), more than 1000
                occurrences, or none.
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or a backfill in progress.
            PermissionDenied: someone else's schedule, and the caller is no admin.
        """
        require_task_id(task_id)
        if start_ns < 0:
            raise InvalidArgument("start_ns", "must not be negative")
        if end_ns <= start_ns:
            raise InvalidArgument("end_ns", f"must be after start_ns ({start_ns})")

        async def apply(tx: Transaction) -> tuple[Task, dict[str, str], list[Task], int]:
            task = await self._get_in(tx, task_id)
            _check_owner(task, caller, "backfill", "schedule")
            task.check_schedule_control("backfill")
            if task.backfill is not None:
                raise FailedPrecondition(
                    f"recurring task {task.id!r} has a backfill in progress (requested by "
                    f"{task.backfill.requested_by or '-'}, {task.backfill.remaining} "
                    "occurrences left); wait for it to end, or pause the schedule to drop it"
                )
            fires = _backfill_window(task, start_ns, end_ns)
            how = policy or task.overlap_policy
            now = self._clock.now_ns()
            changes = ChangeSet()
            reads = TaskReads(tx, self._repo, changes)
            reads.seed([task])
            taken: set[str] = set()
            for chunk in range(0, len(fires), _BACKFILL_READ_CHUNK):
                ids = [
                    child_task_id(task.id, f) for f in fires[chunk : chunk + _BACKFILL_READ_CHUNK]
                ]
                taken |= await reads.existing(ids)
            todo = [f for f in fires if child_task_id(task.id, f) not in taken]
            counts = collections.Counter[str]()
            if how is OverlapPolicy.BUFFER_ALL:
                if todo:
                    changes.add(
                        task.with_backfill(
                            now,
                            Backfill(
                                next_ns=todo[0],
                                end_ns=end_ns,
                                remaining=sum(1 for f in fires if f >= todo[0]),
                                requested_by=caller.name,
                                requested_at_ns=now,
                            ),
                        ),
                        task,
                    )
                    started = await step_backfill(reads, task.id, now)
                    counts["started"] = int(started is not None)
                    counts["waiting"] = len(todo) - counts["started"]
            else:
                for fire in todo:
                    offer = await offer_occurrence(
                        reads, task.id, fire, now, policy=how, origin=RunOrigin.BACKFILL
                    )
                    counts[_OUTCOMES[offer.decision] if offer.decision else "already_run"] += 1
                if counts["skipped"]:
                    latest = await reads.get(task.id) or task
                    changes.add(
                        latest.with_skips(now, {SkipReason.OVERLAP: counts["skipped"]}), latest
                    )
            after = await reads.get(task.id) or task
            await changes.write(tx, self._repo, self._events)
            self._audit.record_in(tx, f"task/{task.id}", task.to_doc(), after.to_doc())
            result = {
                "occurrences": str(len(fires)),
                "already_run": str(len(fires) - len(todo) + counts["already_run"]),
                "started": str(counts["started"]),
                "waiting": str(counts["waiting"]),
                "skipped": str(counts["skipped"]),
                "overlap_policy": how.value,
            }
            return after, result, changes.created(), counts["skipped"]

        after, result, created, skipped = await self._store.run_transaction(apply)
        self._committed(self._clock.now_ns())
        metrics.count_schedule_changes({SkipReason.OVERLAP: skipped}, created)
        return ScheduleChange(after, result)

    async def upcoming(self, task_id: str, count: int) -> UpcomingRuns:
        """The next `count` (0 = 10, at most 100) fire times of a recurring task; for a paused
        one, where it would fire if resumed now; none for a finished one.

        Raises:
            InvalidArgument: a bad id or count.
            NotFound: no such task.
            FailedPrecondition: not a recurring task.
        """
        if count < 0 or count > MAX_UPCOMING_RUNS:
            raise InvalidArgument(
                "count", f"must be between 1 and {MAX_UPCOMING_RUNS} (0 = {DEFAULT_UPCOMING_RUNS})"
            )
        task = await self.get(task_id)
        if not task.is_recurring:
            task.check_schedule_control("upcoming runs")
        schedule = task.schedule
        fires = task.upcoming(self._clock.now_ns(), count or DEFAULT_UPCOMING_RUNS)
        return UpcomingRuns(
            [UpcomingRun(f, schedule.local_time(f), child_task_id(task.id, f)) for f in fires],
            schedule.time_zone,
            task.paused,
        )

    async def _get_in(self, tx: Transaction, task_id: str) -> Task:
        task = await self._repo.get_in(tx, task_id)
        if task is None:
            raise NotFound("task", task_id)
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
        namespace = current_namespace()
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
                if update.namespace != namespace:
                    continue  # the fan-out carries every namespace's updates
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
                # The bus handler runs inside the message's namespace.
                namespace=namespace_or_none() or event.namespace,
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


_OUTCOMES = {
    FireDecision.RUN: "started",
    FireDecision.RELEASE_BUFFERED: "started",
    FireDecision.BUFFER: "waiting",
    FireDecision.SKIP: "skipped",
}


def _check_request(task_id: str, text: str, field_name: str) -> None:
    require_task_id(task_id)
    if len(text) > MAX_REASON_LENGTH:
        raise InvalidArgument(field_name, f"must be at most {MAX_REASON_LENGTH} characters")


def _check_owner(task: Task, caller: Principal, verb: str, what: str) -> None:
    """Only an admin may change what another caller submitted."""
    if task.created_by != caller.name and not caller.has(Role.ADMIN):
        raise PermissionDenied(
            f"task {task.id!r} was submitted by {task.created_by or 'a service'}; "
            f"only an admin may {verb} another caller's {what}"
        )


def _backfill_window(task: Task, start_ns: int, end_ns: int) -> list[int]:
    """The occurrences of [start_ns, end_ns), or `InvalidArgument` on end_ns for none or more
    than the bound."""
    schedule = task.schedule
    fires = schedule.fires_between(start_ns, end_ns, MAX_BACKFILL_OCCURRENCES)
    where = f"{schedule.expression!r} ({schedule.time_zone})"
    if len(fires) > MAX_BACKFILL_OCCURRENCES:
        raise InvalidArgument(
            "end_ns",
            f"the window holds more than {MAX_BACKFILL_OCCURRENCES} occurrences of {where}; "
            f"backfill at most {MAX_BACKFILL_OCCURRENCES} at a time (end_ns at most "
            f"{fires[MAX_BACKFILL_OCCURRENCES]}, {_format_time(fires[MAX_BACKFILL_OCCURRENCES])})",
        )
    if not fires:
        raise InvalidArgument(
            "end_ns",
            f"the window [{_format_time(start_ns)}, {_format_time(end_ns)}) holds no occurrence "
            f"of {where} (times are in nanoseconds since the epoch)",
        )
    return fires
