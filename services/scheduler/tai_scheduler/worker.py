"""The worker: claims due tasks with a lease, runs them, renews the leases while they run, and
records each attempt's outcome — fenced, so a replica whose lease lapsed cannot overwrite the
result of the replica that took the task over.

One loop per replica:

1. Claim (one store transaction): read the due pending tasks (earliest first) and the running
   tasks whose lease lapsed; record each lapsed attempt as `lease_lost`; fire the due recurring
   tasks (creating their runs); then claim the runnable tasks with the highest priority first,
   up to the free slots. Each claim bumps the task's fencing token.
2. Sleep until the earliest due time or lease end, or until woken: by a submission on this
   replica, an event of another replica, or a finished execution freeing a slot — with a
   fallback poll.

Running attempts are renewed together, every third of the lease. Any write about an attempt
first checks that the task is still running under the token its claim set.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from tai_common.core import Aborted, Clock, InvalidArgument, Unavailable, continued
from tai_common.core.units import NS_PER_SECOND
from tai_common.messaging import events
from tai_common.ports import DocumentStore, Transaction

from tai_scheduler import metrics
from tai_scheduler.changes import ChangeSet, Family, read_family, settle_parent
from tai_scheduler.executors.port import PermanentTaskError, TaskContext
from tai_scheduler.executors.registry import ExecutorRegistry
from tai_scheduler.repository import TaskRepository
from tai_scheduler.task import (
    API_LIMITS,
    AttemptOutcome,
    CronSchedule,
    FireDecision,
    Task,
    TaskState,
    check_parameters,
    child_task_id,
    decide_fire,
)

log = logging.getLogger(__name__)

# Store errors a loop rides out by backing off (the store's own retries already happened).
_TRANSIENT = (Unavailable, Aborted)


@dataclass(frozen=True)
class WorkerConfig:
    """How one replica runs tasks."""

    replica_id: str
    # Attempts running at once on this replica.
    concurrency: int = 16
    # How long a claim holds a task without renewal.
    lease_seconds: float = 10.0
    # The longest sleep between two looks at the store.
    fallback_poll_seconds: float = 1.0
    # Due tasks read per claim (the highest priorities among them are claimed first).
    claim_scan: int = 64

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.fallback_poll_seconds <= 0:
            raise ValueError("fallback_poll_seconds must be positive")
        if self.claim_scan < 1:
            raise ValueError("claim_scan must be at least 1")

    @property
    def lease_ns(self) -> int:
        return int(self.lease_seconds * NS_PER_SECOND)


@dataclass
class _Claim:
    """An attempt this replica runs."""

    task: Task
    token: int
    # When the lease ends unless renewed, on the monotonic clock.
    lease_deadline: float
    execution: asyncio.Task[None] | None = None
    # Set when the attempt is abandoned (lease lost, task cancelled): its outcome is not written.
    abandoned: bool = False


@dataclass(frozen=True)
class _ClaimPass:
    claims: list[Task]
    changed: bool


class Worker:
    def __init__(
        self,
        store: DocumentStore,
        clock: Clock,
        event_factory: events.EventFactory,
        executors: ExecutorRegistry,
        config: WorkerConfig,
        *,
        on_committed: Callable[[], None],
        stopping: asyncio.Event | None = None,
    ) -> None:
        """`on_committed` wakes the outbox relay after each change; `stopping` (the server's
        graceful-stop flag) stops claiming as soon as a shutdown begins."""
        self._store = store
        self._repo = TaskRepository(store)
        self._clock = clock
        self._events = event_factory
        self._executors = executors
        self._config = config
        self._on_committed = on_committed
        self._server_stopping = stopping
        self._wake = asyncio.Event()
        self._stopping = False
        self._claims: dict[str, _Claim] = {}
        self._unknown_types_logged: set[str] = set()
        self._random = random.Random()

    def wake(self) -> None:
        """Look at the store now (due tasks may have changed)."""
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._claims)

    # --- the claim loop ---

    async def run(self) -> None:
        """Claims and starts tasks until `stop()` (or the server's stop) begins."""
        failures = 0
        while not self._is_stopping():
            # Cleared before looking, so a wake-up that comes while looking is not lost.
            self._wake.clear()
            try:
                delay = await self._step()
                failures = 0
            except _TRANSIENT as error:
                failures += 1
                delay = min(self._config.fallback_poll_seconds * 5, 0.05 * 2 ** min(failures, 8))
                log.warning("task claims failing (%s); retrying in %.2fs", error, delay)
            if delay > 0:
                await self._wait(delay)

    async def _step(self) -> float:
        """One look at the store, claiming what is due; returns how long to sleep: until the
        earliest due time or lease end, at most the fallback poll."""
        fallback = self._config.fallback_poll_seconds
        if self._config.concurrency - len(self._claims) <= 0:
            return fallback  # a finishing attempt wakes the loop
        # Reads first, outside any transaction (no write lock): most wake-ups find that
        # nothing is due yet.
        due = await self._repo.earliest_due_ns()
        lease_end = await self._repo.earliest_lease_end_ns()
        earliest = min((t for t in (due, lease_end) if t is not None), default=None)
        if earliest is None:
            return fallback
        wait = (earliest - self._clock.now_ns()) / NS_PER_SECOND
        if wait > 0:
            return min(wait, fallback)
        if (await self._claim_pass()).changed:
            return 0.0  # look again at once: more may be due
        # Due, yet nothing was claimable (e.g. only types this replica has no executor for).
        return fallback

    def _is_stopping(self) -> bool:
        if self._server_stopping is not None and self._server_stopping.is_set():
            self._stopping = True
        return self._stopping

    async def _wait(self, delay: float) -> None:
        waits = [asyncio.ensure_future(self._wake.wait())]
        if self._server_stopping is not None:
            waits.append(asyncio.ensure_future(self._server_stopping.wait()))
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _claim_pass(self) -> _ClaimPass:
        free = self._config.concurrency - len(self._claims)
        if free <= 0:
            return _ClaimPass([], changed=False)
        # Candidates are found with plain reads; the transaction then reads only the ones this
        # replica goes for, by id. A query inside the transaction would lock every task it
        # returns (Firestore locks what a transaction reads), so replicas would queue behind
        # each other's claims and renewals.
        now = self._clock.now_ns()
        scan = max(self._config.claim_scan, free * 2)
        due = await self._repo.due(now, scan)
        lapsed = await self._repo.lapsed(now, scan)
        due_ids = [t.id for t in due if t.is_recurring] + self._pick(
            [t for t in due if not t.is_recurring], free
        )
        lapsed_ids = [t.id for t in lapsed]
        claim_pass = await self._store.run_transaction(
            lambda tx: self._claim_in(tx, free, due_ids, lapsed_ids)
        )
        if claim_pass.changed:
            self._on_committed()
        lease_deadline = time.monotonic() + self._config.lease_seconds
        for task in claim_pass.claims:
            # A claim keeps the task's due time: the lag is from then to the attempt's start.
            lag_ns = task.attempts[-1].started_at_ns - task.next_run_ns
            metrics.DISPATCH_LAG.observe(max(0, lag_ns) / NS_PER_SECOND)
            previous = self._claims.get(task.id)
            if previous is not None:
                # This replica's own lease on it lapsed (renewals failed) and it took the task
                # again: the earlier attempt's outcome could no longer be written anyway.
                self._abandon(previous)
            claim = _Claim(task, task.fencing_token, lease_deadline)
            self._claims[task.id] = claim
            claim.execution = asyncio.create_task(self._execute(claim), name=f"task-{task.id}")
        metrics.RUNNING.set(len(self._claims))
        return claim_pass

    def _pick(self, due: list[Task], free: int) -> list[str]:
        """The due tasks to go for: the highest priorities first; among equal priorities a
        random sample of the earliest, so that replicas claiming at once mostly pick
        different tasks."""
        by_priority = sorted(due, key=lambda t: (-t.priority, t.next_run_ns, t.id))
        picked: list[str] = []
        for _, group in itertools.groupby(by_priority, key=lambda t: t.priority):
            band = list(group)[: 2 * free]
            want = min(free - len(picked), len(band))
            picked.extend(t.id for t in self._random.sample(band, want))
            if len(picked) >= free:
                break
        return picked

    async def _claim_in(
        self, tx: Transaction, free: int, due_ids: list[str], lapsed_ids: list[str]
    ) -> _ClaimPass:
        """The claim transaction (reads first, then writes; may run more than once): re-reads
        the picked tasks and claims those still claimable."""
        now = self._clock.now_ns()
        picked = await self._repo.get_many_in(tx, [*due_ids, *lapsed_ids])
        due = [
            t
            for t in (picked.get(task_id) for task_id in due_ids)
            if t is not None and t.status is TaskState.PENDING and t.next_run_ns <= now
        ]
        lapsed = [
            t
            for t in (picked.get(task_id) for task_id in lapsed_ids)
            if t is not None and t.status is TaskState.RUNNING and t.lease_until_ns <= now
        ]
        recurring = [t for t in due if t.is_recurring]
        related: dict[str, Task | None] = {}
        for parent in recurring:
            for task_id in (
                parent.active_child_id,
                parent.buffered_child_id,
                child_task_id(parent.id, parent.next_run_ns),
            ):
                if task_id and task_id not in related:
                    related[task_id] = await self._repo.get_in(tx, task_id)
        families = {t.id: await read_family(tx, self._repo, t) for t in lapsed if t.parent_task_id}

        changes = ChangeSet()
        candidates = [t for t in due if not t.is_recurring]
        for task in lapsed:
            after = changes.add(task.lease_lapsed(now), task)
            metrics.LEASE_STEALS.inc()
            log.warning(
                "task %s: lease of %s lapsed on attempt %d",
                task.id,
                task.lease_owner,
                task.attempts[-1].attempt if task.attempts else 0,
            )
            if after.is_final:
                settle_parent(changes, families.get(task.id, Family()), after, now)
            else:
                candidates.append(after)
        for parent in recurring:
            self._fire(changes, parent, related, now, candidates)

        known = self._executors.task_types
        runnable = []
        for task in candidates:
            if task.task_type in known:
                runnable.append(changes.get(task.id) or task)
            elif task.id not in self._unknown_types_logged:
                self._unknown_types_logged.add(task.id)
                log.warning("task %s: no executor for type %r here", task.id, task.task_type)
        runnable.sort(key=lambda t: (-t.priority, t.next_run_ns, t.id))
        claimed = []
        for task in runnable[:free]:
            claimed.append(
                changes.add(task.claimed(now, self._config.replica_id, self._config.lease_ns), task)
            )
        if changes:
            changes.write(tx, self._repo, self._events)
        return _ClaimPass(claimed, changed=bool(changes))

    def _fire(
        self,
        changes: ChangeSet,
        parent: Task,
        related: Mapping[str, Task | None],
        now: int,
        candidates: list[Task],
    ) -> None:
        """A recurring task is due: create (or hold, or skip) its run, and move it to its
        next fire. Fires missed while no replica ran are coalesced into this one."""

        def latest(task_id: str) -> Task | None:
            return (changes.get(task_id) or related.get(task_id)) if task_id else None

        parent = changes.get(parent.id) or parent
        fire_ns = parent.next_run_ns
        try:
            next_fire = CronSchedule(parent.cron_schedule).next_fire_ns(max(now, fire_ns))
        except ValueError as error:
            # Validated at submit, so only a stored expression croniter no longer accepts.
            changes.add(parent.cancelled(now, f"cron schedule stopped working: {error}"), parent)
            return
        active = latest(parent.active_child_id)
        buffered = latest(parent.buffered_child_id)
        decision = decide_fire(
            parent.overlap_policy,
            active.status if active else None,
            buffered.status if buffered else None,
        )
        if decision in (FireDecision.RUN, FireDecision.BUFFER) and latest(
            child_task_id(parent.id, fire_ns)
        ):
            decision = FireDecision.SKIP  # the run's id is taken (submitted by hand)
        if decision is FireDecision.RUN:
            run = changes.add(parent.child(now, fire_ns, held=False), None)
            candidates.append(run)
            changes.add(
                parent.fired(now, next_fire, active_child_id=run.id, buffered_child_id=""), parent
            )
        elif decision is FireDecision.BUFFER:
            run = changes.add(parent.child(now, fire_ns, held=True), None)
            changes.add(
                parent.fired(
                    now,
                    next_fire,
                    active_child_id=parent.active_child_id,
                    buffered_child_id=run.id,
                ),
                parent,
            )
        elif decision is FireDecision.RELEASE_BUFFERED and buffered is not None:
            candidates.append(changes.add(buffered.released_from_hold(now), buffered))
            changes.add(
                parent.fired(now, next_fire, active_child_id=buffered.id, buffered_child_id=""),
                parent,
            )
        else:
            changes.add(parent.skipped(now, next_fire), parent)

    # --- executions ---

    async def _execute(self, claim: _Claim) -> None:
        task = claim.task
        attempt = task.attempts[-1]
        executor = self._executors.get(task.task_type)
        ctx = TaskContext(
            task_id=task.id,
            task_type=task.task_type,
            parameters=dict(task.parameters),
            attempt=attempt.attempt,
            max_attempts=task.retry.max_attempts,
            idempotency_key=attempt.idempotency_key,
            deadline=time.monotonic() + task.timeout_seconds,
            worker=self._config.replica_id,
        )
        outcome: Callable[[Task, int], Task]
        label: AttemptOutcome
        try:
            if executor is None:
                raise PermanentTaskError(f"no executor for task type {task.task_type!r}")
            # The run continues the trace of the call that submitted the task.
            with continued(
                f"run task {task.task_type}",
                task.trace_context,
                attributes={"tai.task.attempt": str(attempt.attempt)},
            ):
                async with asyncio.timeout(task.timeout_seconds):
                    result = await executor.execute(ctx)
            result = _checked_result(result)
        except PermanentTaskError as error:
            outcome, label = _failure(str(error) or type(error).__name__, permanent=True)
        except TimeoutError:
            outcome, label = _failure(
                f"attempt timed out after {task.timeout_seconds}s", permanent=False
            )
        except asyncio.CancelledError:
            if claim.abandoned:
                self._forget(claim)
                return
            raise  # a shutdown: stop() releases the lease
        except Exception as error:
            # The plug-in boundary: whatever an executor raises fails this attempt, and the
            # task's retry config decides what happens next.
            outcome, label = _failure(f"{type(error).__name__}: {error}", permanent=False)
        else:
            outcome, label = (lambda t, now: t.succeeded(now, result)), AttemptOutcome.COMPLETED
        metrics.ATTEMPTS.labels(task.task_type, label.value).inc()
        try:
            await self._finish(claim, outcome)
        finally:
            self._forget(claim)

    def _forget(self, claim: _Claim) -> None:
        if self._claims.get(claim.task.id) is claim:
            del self._claims[claim.task.id]
        metrics.RUNNING.set(len(self._claims))
        self._wake.set()  # a slot is free

    async def _finish(self, claim: _Claim, outcome: Callable[[Task, int], Task]) -> None:
        """Writes the attempt's outcome, if the task is still this claim's."""

        async def apply(tx: Transaction) -> bool:
            task = await self._repo.get_in(tx, claim.task.id)
            if not _still_ours(task, claim):
                return False
            assert task is not None
            now = self._clock.now_ns()
            after = outcome(task, now)
            family = await read_family(tx, self._repo, task) if after.is_final else Family()
            changes = ChangeSet()
            changes.add(after, task)
            if after.is_final:
                settle_parent(changes, family, after, now)
            changes.write(tx, self._repo, self._events)
            return True

        applied = await self._with_retries(f"finish task {claim.task.id}", apply)
        if applied is None:
            return  # the store stayed unreachable; the lease lapses and the task is re-run
        if applied:
            self._on_committed()
        elif not claim.abandoned:
            log.warning(
                "task %s: outcome of attempt %d discarded: the task was cancelled or taken "
                "over (fencing token %d is stale)",
                claim.task.id,
                claim.task.attempts[-1].attempt,
                claim.token,
            )

    async def _with_retries(
        self, what: str, fn: Callable[[Transaction], Awaitable[bool]], attempts: int = 6
    ) -> bool | None:
        """Runs a transaction, riding out a store outage for a while; None if it never
        committed."""
        for attempt in range(1, attempts + 1):
            try:
                return await self._store.run_transaction(fn)
            except _TRANSIENT as error:
                if attempt == attempts:
                    log.error("%s: giving up after %d tries (%s)", what, attempts, error)
                    return None
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        return None

    # --- leases ---

    async def renew_leases(self) -> None:
        """Renews every running attempt's lease, every third of the lease, until cancelled;
        abandons the attempts whose task was cancelled or taken over, or whose lease could
        not be renewed in time."""
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            claims = [c for c in self._claims.values() if not c.abandoned]
            if not claims:
                continue
            started = time.monotonic()
            try:
                lost = await self._store.run_transaction(
                    functools.partial(self._renew_in, claims=claims)
                )
            except _TRANSIENT as error:
                log.warning("cannot renew task leases (%s)", error)
                lost = set()
            else:
                for claim in claims:
                    if claim.task.id not in lost:
                        claim.lease_deadline = started + self._config.lease_seconds
            now = time.monotonic()
            for claim in claims:
                if claim.task.id in lost or claim.lease_deadline <= now:
                    self._abandon(claim)

    async def _renew_in(self, tx: Transaction, *, claims: list[_Claim]) -> set[str]:
        tasks = [await self._repo.get_in(tx, c.task.id) for c in claims]
        now = self._clock.now_ns()
        lost = set()
        for claim, task in zip(claims, tasks, strict=True):
            if task is not None and _still_ours(task, claim):
                self._repo.write_in(tx, task.renewed(now, self._config.lease_ns))
            else:
                lost.add(claim.task.id)
        return lost

    def _abandon(self, claim: _Claim) -> None:
        """Stops an attempt whose outcome may no longer be written."""
        if claim.abandoned:
            return
        claim.abandoned = True
        log.warning("task %s: abandoning attempt (cancelled, or lease lost)", claim.task.id)
        if claim.execution is not None:
            claim.execution.cancel()

    # --- shutdown ---

    async def stop(self, grace_seconds: float) -> None:
        """Stops claiming, gives running attempts `grace_seconds` to finish, then cancels the
        rest and releases their leases so another replica takes them at once."""
        self._stopping = True
        self._wake.set()
        running = [c.execution for c in self._claims.values() if c.execution is not None]
        if running:
            log.info("waiting up to %.1fs for %d running attempts", grace_seconds, len(running))
            await asyncio.wait(running, timeout=grace_seconds)
        leftover = [c for c in self._claims.values() if not c.abandoned]
        for claim in leftover:
            if claim.execution is not None:
                claim.execution.cancel()
        await asyncio.gather(
            *(c.execution for c in leftover if c.execution is not None), return_exceptions=True
        )
        if leftover:
            await self._release(leftover)
        self._claims.clear()

    async def _release(self, claims: list[_Claim]) -> None:
        async def apply(tx: Transaction) -> bool:
            tasks = [await self._repo.get_in(tx, c.task.id) for c in claims]
            now = self._clock.now_ns()
            changes = ChangeSet()
            for claim, task in zip(claims, tasks, strict=True):
                if task is not None and _still_ours(task, claim):
                    changes.add(
                        task.released(
                            now, f"released by replica {self._config.replica_id} shutting down"
                        ),
                        task,
                    )
            changes.write(tx, self._repo, self._events)
            return bool(changes)

        with contextlib.suppress(*_TRANSIENT):
            if await self._store.run_transaction(apply):
                self._on_committed()
                log.info("released %d task leases", len(claims))


def _still_ours(task: Task | None, claim: _Claim) -> bool:
    return (
        task is not None
        and task.status is TaskState.RUNNING
        and task.fencing_token == claim.token
        and task.lease_owner == claim.task.lease_owner
    )


def _failure(
    message: str, *, permanent: bool
) -> tuple[Callable[[Task, int], Task], AttemptOutcome]:
    def fail(task: Task, now: int) -> Task:
        return task.attempt_failed(now, message, permanent=permanent)

    return fail, AttemptOutcome.FAILED


def _checked_result(result: Mapping[str, str]) -> dict[str, str]:
    """An executor's result as stored: strings, within the parameters' bounds."""
    checked = {str(key): str(value) for key, value in dict(result).items()}
    try:
        check_parameters(checked, API_LIMITS, "result")
    except InvalidArgument as error:
        raise PermanentTaskError(f"the executor's result is too large: {error.message}") from None
    return checked
