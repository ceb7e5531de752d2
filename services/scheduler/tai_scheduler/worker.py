"""The worker: claims tasks with a lease, starts each at its due time, renews the leases while
it holds them, and records each attempt's outcome — fenced, so a replica whose lease lapsed
cannot overwrite the result of the replica that took the task over.

One claim loop per replica:

1. Claim (one store transaction, at most `_BATCH` tasks): read the pending tasks due within
   the claim-ahead horizon (earliest first) and the running tasks whose lease lapsed; record
   each lapsed attempt as `lease_lost`; fire the due recurring tasks (creating their runs);
   then claim the tasks already due, highest priority first, up to the free slots, and the
   tasks falling due within the horizon, earliest first, up to `claim_ahead_limit` held.
   Each claim bumps the task's fencing token.
2. Sleep until the earliest pending task enters the horizon (those entering it next are
   claimed together a little later) or the earliest lease ends, or until woken: by a
   submission on this replica, an event of another replica, or room freeing up for what the
   loop could not claim — with a fallback poll.

Claimed tasks wait in memory, and a timer (`loop.call_at`) starts each at its due time, the
highest priority first among those due at once, as slots free up. A task claimed before its
due time is started only after one read at or after that time finds it still this claim's:
a task cancelled before it fell due never runs. A slot frees when its executor returns; the
outcomes are written by one transaction per batch of attempts that ended together.

Every claim held (waiting, running, or its outcome not yet written) is renewed together,
every third of the lease. Any write about an attempt first checks that the task is still
running under the token its claim set.

Namespaces: the store keeps each namespace's tasks apart, so each look (1.) is made inside one
namespace, each active namespace in turn, and a namespace is looked at again when its own
sleep (2.) ends or when woken for it; the slots and the claim-ahead room are the replica's,
shared by them all. Each claim remembers its namespace: its executor runs inside it (so the
calls it makes to other services carry it), and its renewals, its lease check and its outcome
are written in it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import Enum
from typing import TypeVar

from tai_common.core import Aborted, Clock, InvalidArgument, Unavailable, continued
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace, namespace_or_none
from tai_common.core.units import NS_PER_SECOND
from tai_common.messaging import events
from tai_common.ports import DocumentStore, Transaction

from tai_scheduler import metrics
from tai_scheduler.changes import ChangeSet, TaskReads, offer_occurrence, settle_parent
from tai_scheduler.executors.port import PermanentTaskError, TaskContext
from tai_scheduler.executors.registry import ExecutorRegistry
from tai_scheduler.repository import Lease, TaskRepository
from tai_scheduler.task import (
    API_LIMITS,
    AttemptOutcome,
    FireDecision,
    SkipReason,
    Task,
    TaskState,
    check_parameters,
    plan_catch_up,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Store errors a loop rides out by backing off (the store's own retries already happened).
_TRANSIENT = (Unavailable, Aborted)
# Tasks one transaction claims, finishes or releases at most: each writes the task and its
# event (and a run's parent), within Firestore's 500 writes per commit.
_BATCH = 100
# Outcomes one transaction writes, and claims one read checks, at most: each is handled in one
# stretch of the event loop, which holds up every timer and executor meanwhile.
_STEP_BATCH = 16
# Leases one renewal transaction renews at most (one write each).
_RENEW_BATCH = 400
_TAKEN = "cancelled or taken over before it was due"
# How soon a start whose lease check could not be read is tried again.
_START_RETRY_SECONDS = 0.05


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
    # Tasks falling due within this horizon are claimed ahead and started at their due time
    # (0: claim tasks only once due; None: a tenth of the lease). At most half the lease.
    claim_ahead_seconds: float | None = None
    # Claimed tasks held waiting at most (for their due time, or for a slot once due).
    claim_ahead_limit: int = 1024

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.fallback_poll_seconds <= 0:
            raise ValueError("fallback_poll_seconds must be positive")
        if self.claim_scan < 1:
            raise ValueError("claim_scan must be at least 1")
        if self.claim_ahead_seconds is not None and not (
            0 <= self.claim_ahead_seconds <= self.lease_seconds / 2
        ):
            raise ValueError(
                f"claim_ahead_seconds must be between 0 and half of lease_seconds "
                f"({self.lease_seconds / 2:g}); got {self.claim_ahead_seconds:g}"
            )
        if self.claim_ahead_limit < 0:
            raise ValueError("claim_ahead_limit must not be negative")

    @property
    def lease_ns(self) -> int:
        return int(self.lease_seconds * NS_PER_SECOND)

    @property
    def horizon_ns(self) -> int:
        """How far ahead of their due time tasks are claimed (0: not at all)."""
        if not self.claim_ahead_limit:
            return 0
        seconds = self.claim_ahead_seconds
        return int((self.lease_seconds / 10 if seconds is None else seconds) * NS_PER_SECOND)


class _Phase(Enum):
    # Claimed, held in memory until its due time and a free slot.
    WAITING = "waiting"
    # Given a slot; its lease is being checked before the executor starts.
    STARTING = "starting"
    RUNNING = "running"
    # The executor returned; the outcome waits for its transaction.
    FINISHING = "finishing"


@dataclass(eq=False)
class _Claim:
    """A task this replica holds under a lease."""

    task: Task
    token: int
    # The namespace the task lives in: everything about the claim is done inside it.
    namespace: str
    # When the lease ends unless renewed, on the monotonic clock.
    lease_deadline: float
    # When it is due (the wall clock's ns): it starts then, not before.
    due_ns: int
    # Known to be this claim's at or after `due_ns` (claimed when due, or read since): it may
    # start without another read.
    checked: bool
    phase: _Phase = _Phase.WAITING
    # Waiting in the ready queue (due, for a slot), rather than for its due time.
    ready: bool = False
    # When its executor started (wall clock ns).
    started_ns: int = 0
    execution: asyncio.Task[None] | None = None
    # Set when the claim is given up (lease lost, task cancelled): no outcome is written.
    abandoned: bool = False

    @property
    def live(self) -> bool:
        return not self.abandoned and self.phase is _Phase.WAITING


@dataclass(frozen=True)
class _Look:
    """What a claim pass looks for, as the loop's reads found it at `now`."""

    now: int
    # Pending tasks already due; pending tasks falling due within the horizon; running tasks
    # whose lease lapsed.
    overdue: bool
    ahead: bool
    lapsed: bool


@dataclass(frozen=True)
class _ClaimPass:
    claims: list[Task]
    changed: bool
    # A recurring task within the horizon fires at its due time: look again then.
    next_fire_ns: int | None = None
    # Look again at once: a read or the pass hit its limit, or another replica took the
    # picked tasks first.
    more: bool = False
    # What the transaction did to schedules, counted once it committed.
    skipped: Mapping[SkipReason, int] = dataclass_field(default_factory=dict)
    created: Sequence[Task] = ()


Outcome = Callable[[Task, int], Task]
# A claim's key: its namespace and its task's id.
_Key = tuple[str, str]
Namespaces = Callable[[], Awaitable[Sequence[str]]]


async def _default_only() -> Sequence[str]:
    return [DEFAULT_NAMESPACE]


def _key(claim: _Claim) -> _Key:
    return claim.namespace, claim.task.id


def _by_namespace(claims: Iterable[_Claim]) -> dict[str, list[_Claim]]:
    grouped: dict[str, list[_Claim]] = {}
    for claim in claims:
        grouped.setdefault(claim.namespace, []).append(claim)
    return grouped


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
        namespaces: Namespaces = _default_only,
    ) -> None:
        """`on_committed` wakes the outbox relay after each change; `stopping` (the server's
        graceful-stop flag) stops claiming as soon as a shutdown begins; `namespaces` names
        the namespaces to serve (the active ones; by default only "default")."""
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
        self._claims: dict[_Key, _Claim] = {}
        self._namespaces = namespaces
        # When each namespace is looked at next (monotonic clock), and its store failures
        # in a row.
        self._next_look: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # The namespaces woken since the last round (all of them: `_woken_all`).
        self._woken: set[str] = set()
        self._woken_all = False
        self._round = 0
        self._unknown_types_logged: set[str] = set()
        self._random = random.Random()
        # Waiting claims: not yet due, by due time; due, by priority then due time.
        self._ahead: list[tuple[int, int, _Claim]] = []
        self._ready: list[tuple[int, int, int, _Claim]] = []
        self._order = itertools.count()
        self._waiting = 0
        # Live claims in the ready queue (it also holds given-up ones until popped).
        self._ready_count = 0
        # What the claim loop could not look for, for lack of room, when it last looked: it
        # is woken when room frees up for it (tasks already due; tasks falling due ahead).
        self._starved = (False, False)
        # Slots taken: attempts starting or running.
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ns = 0
        self._retry_start: asyncio.TimerHandle | None = None
        self._starting: set[asyncio.Task[None]] = set()
        self._outcomes: collections.deque[tuple[_Claim, Outcome]] = collections.deque()
        self._finisher: asyncio.Task[None] | None = None
        # Writes about this replica's claims (outcomes, renewals, releases) take turns: run
        # at once they would lock the same documents, and Firestore makes one wait seconds.
        self._claim_writes = asyncio.Lock()
        # How far ahead a task may fall due without a look at once (`wake`): two fallback
        # polls beyond the horizon.
        self._quiet_ns = config.horizon_ns + 2 * int(config.fallback_poll_seconds * NS_PER_SECOND)

    def wake(self, due_ns: int | None = None) -> None:
        """Look at the store now (due tasks may have changed); `due_ns`: the changed task falls
        due then, and a time far enough ahead needs no look now: the worker looks at least
        every `fallback_poll_seconds`, and each look claims what falls due within the
        horizon. (Under a steady stream of tasks submitted a day ahead, a look per submission
        cost SubmitTask two queries each.)"""
        if due_ns is not None and due_ns > self._clock.now_ns() + self._quiet_ns:
            return
        self._wake_namespace(namespace_or_none())

    def _wake_namespace(self, namespace: str | None) -> None:
        """Looks at `namespace` (None: every namespace) now."""
        if namespace is None:
            self._woken_all = True
        else:
            self._woken.add(namespace)
        self._wake.set()

    def task_ended(self, task_id: str) -> None:
        """`task_id` (of the current namespace) reached a final state elsewhere (cancelled,
        here or on another replica): a claim this replica holds on it is given up at once (an
        attempt running is cancelled; one not started never starts)."""
        claim = self._claims.get((namespace_or_none() or DEFAULT_NAMESPACE, task_id))
        if claim is not None and claim.phase is not _Phase.FINISHING:
            self._abandon(claim)

    @property
    def running(self) -> int:
        """Attempts starting or running on this replica."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Claimed tasks held until their due time or a free slot."""
        return self._waiting

    # --- the claim loop ---

    async def run(self) -> None:
        """Claims and starts tasks until `stop()` (or the server's stop) begins."""
        failures = 0
        while not self._is_stopping():
            # Cleared before looking, so a wake-up that comes while looking is not lost.
            self._wake.clear()
            try:
                delay = await self._look_round()
                failures = 0
            except _TRANSIENT as error:
                # The namespaces themselves could not be read.
                failures += 1
                delay = self._backoff(failures)
                log.warning("cannot read the namespaces (%s); retrying in %.2fs", error, delay)
            if delay > 0:
                await self._wait(delay)

    def _backoff(self, failures: int) -> float:
        return float(min(self._config.fallback_poll_seconds * 5, 0.05 * 2 ** min(failures, 8)))

    async def _look_round(self) -> float:
        """Looks at each namespace that was woken or whose sleep ended (inside it); returns
        how long to sleep until the next one is due a look."""
        served = list(await self._namespaces())
        woken, woken_all = self._woken, self._woken_all
        self._woken, self._woken_all = set(), False
        # A namespace woken by a submission made here is served at once, even before this
        # replica's view of the namespaces has caught up with its creation.
        names = served + sorted(woken - set(served))
        for gone in set(self._next_look) - set(names):
            del self._next_look[gone]
            self._failures.pop(gone, None)
        # Each round starts one namespace further on, so none always waits for the others.
        self._round += 1
        start = self._round % len(names) if names else 0
        for namespace in names[start:] + names[:start]:
            if self._is_stopping():
                return 0.0
            due = self._next_look.get(namespace, float("-inf")) <= time.monotonic()
            if not (woken_all or namespace in woken or due):
                continue
            with in_namespace(namespace):
                try:
                    delay = await self._step()
                    self._failures[namespace] = 0
                except _TRANSIENT as error:
                    failures = self._failures.get(namespace, 0) + 1
                    self._failures[namespace] = failures
                    delay = self._backoff(failures)
                    log.warning(
                        "task claims failing in namespace %s (%s); retrying in %.2fs",
                        namespace,
                        error,
                        delay,
                    )
            self._next_look[namespace] = time.monotonic() + delay
        if not self._next_look:
            return self._config.fallback_poll_seconds
        return max(0.0, min(self._next_look.values()) - time.monotonic())

    async def _step(self) -> float:
        """One look at the store, claiming what is due or falls due within the horizon;
        returns how long to sleep: until the earliest pending task enters the horizon or the
        earliest lease end, at most the fallback poll."""
        fallback = self._config.fallback_poll_seconds
        due_room, ahead_room = self._room()
        if due_room + ahead_room <= 0:
            self._note_starved()
            return fallback  # woken when room frees up (`_room_freed`)
        horizon = self._config.horizon_ns if ahead_room > 0 else 0
        # Reads first, outside any transaction (no write lock): most wake-ups find that
        # nothing is due yet. With no free slot, tasks already due (and lapsed leases) are
        # left to other replicas: only those still ahead count.
        now = self._clock.now_ns()
        earliest = await self._repo.earliest_due_ns(after_ns=None if due_room else now)
        lease_end = await self._repo.earliest_lease_end_ns() if due_room else None
        look = _Look(
            now=now,
            overdue=earliest is not None and earliest <= now,
            ahead=horizon > 0 and earliest is not None and earliest <= now + horizon,
            lapsed=lease_end is not None and lease_end <= now,
        )
        self._note_starved()
        if not (look.overdue or look.ahead or look.lapsed):
            claimable_at = None if earliest is None else earliest - horizon
            wake_at = [t for t in (claimable_at, lease_end) if t is not None]
            return self._sleep_until(min(wake_at, default=None))
        claim_pass = await self._claim_pass(look)
        self._note_starved()
        if claim_pass.more or (claim_pass.changed and not claim_pass.claims):
            # Look again at once: more is due than one pass takes (what another replica took
            # meanwhile is no longer pending, so the next look finds the rest), or what
            # changed (a lapsed lease, a fire) may have made more due.
            return 0.0
        if not claim_pass.claims and claim_pass.next_fire_ns is None:
            # Due, yet nothing was claimable (e.g. only types this replica has no executor
            # for): look again at the fallback poll, or when the next task enters the horizon.
            if not horizon:
                return fallback
            after = await self._repo.earliest_due_ns(after_ns=now + horizon)
            return self._sleep_until(None if after is None else after - horizon)
        # Everything within reach was claimed. The tasks entering the horizon next are
        # claimed together a little later (still well ahead of their due time), rather than
        # one pass each.
        wake_at = [now + self._config.horizon_ns // 50] if horizon else [now]
        if lease_end is not None:
            wake_at.append(lease_end)
        if claim_pass.next_fire_ns is not None:
            wake_at.append(claim_pass.next_fire_ns)
        return self._sleep_until(min(wake_at))

    def _sleep_until(self, wall_ns: int | None) -> float:
        """How long to sleep until `wall_ns` (at most the fallback poll)."""
        fallback = self._config.fallback_poll_seconds
        if wall_ns is None:
            return fallback
        return min(fallback, max(0.0, (wall_ns - self._clock.now_ns()) / NS_PER_SECOND))

    def _note_starved(self) -> None:
        due_room, ahead_room = self._room()
        self._starved = (due_room <= 0, ahead_room <= 0 and self._config.horizon_ns > 0)

    def _room(self) -> tuple[int, int]:
        """How many tasks this replica may claim now: already due (only as many as it can
        start at once, so that a busy replica leaves them to others), and falling due within
        the horizon (held until then)."""
        free = self._config.concurrency - self._busy
        due_room = free - self._ready_count
        ahead_room = self._config.claim_ahead_limit - self._waiting
        # Outcomes not yet written hold leases too: a store that falls behind slows claims.
        total = self._config.concurrency + self._config.claim_ahead_limit - len(self._claims)
        return max(0, min(due_room, total)), max(0, min(ahead_room, total))

    def _room_freed(self) -> None:
        """Wakes the claim loop if it stopped looking for something for lack of room and now
        has some (not at every start and end: most leave it without room all the same)."""
        due_starved, ahead_starved = self._starved
        if not (due_starved or ahead_starved):
            return
        due_room, ahead_room = self._room()
        if (due_starved and due_room > 0) or (ahead_starved and ahead_room > 0):
            self._starved = (False, False)
            self._wake_namespace(None)

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

    async def _claim_pass(self, look: _Look) -> _ClaimPass:
        due_room, ahead_room = self._room()
        # Candidates are found with plain reads; the transaction then reads only the ones this
        # replica goes for, by id. A query inside the transaction would lock every task it
        # returns (Firestore locks what a transaction reads), so replicas would queue behind
        # each other's claims and renewals.
        now, horizon = look.now, self._config.horizon_ns

        def scan(want: int) -> int:
            return max(self._config.claim_scan, min(2 * want, 2 * _BATCH))

        due = await self._repo.due(now, scan(due_room)) if look.overdue and due_room else []
        ahead = (
            await self._repo.due(now + horizon, scan(ahead_room), after_ns=now)
            if look.ahead and ahead_room
            else []
        )
        lapsed = await self._repo.lapsed(now, scan(due_room)) if look.lapsed and due_room else []
        fired = [t.id for t in due if t.is_recurring]
        next_fire = min((t.next_run_ns for t in ahead if t.is_recurring), default=None)
        self._log_unknown_types(t for t in (*due, *ahead) if not t.is_recurring)
        known = self._executors.task_types
        due_ids = self._pick(
            [t for t in due if not t.is_recurring and t.task_type in known], due_room, now
        )
        ahead_ids = self._pick(
            [t for t in ahead if not t.is_recurring and t.task_type in known],
            min(ahead_room, _BATCH - len(due_ids)),
            now,
        )
        lapsed_ids = [t.id for t in lapsed][:_BATCH]
        limited = (
            len(due) >= scan(due_room)
            or len(ahead) >= scan(ahead_room)
            or len(lapsed) >= scan(due_room)
            or len(due_ids) + len(ahead_ids) >= _BATCH
        )
        if not (fired or due_ids or ahead_ids or lapsed_ids):
            return _ClaimPass([], changed=False, next_fire_ns=next_fire, more=limited)
        claim_pass = await self._store.run_transaction(
            lambda tx: self._claim_in(
                tx, (due_room, ahead_room), fired, due_ids, ahead_ids, lapsed_ids
            )
        )
        if claim_pass.changed:
            self._on_committed()
            metrics.count_schedule_changes(claim_pass.skipped, claim_pass.created)
        self._hold(claim_pass.claims)
        contended = not claim_pass.changed
        return _ClaimPass(claim_pass.claims, claim_pass.changed, next_fire, limited or contended)

    def _pick(self, tasks: list[Task], want: int, now: int) -> list[str]:
        """The tasks to go for, `want` at most: the earliest due first (all those already due
        count as due now), the highest priority first among them; among equals a random
        sample of the first, so that replicas claiming at once mostly pick different tasks."""
        if want <= 0:
            return []

        def band(task: Task) -> tuple[int, int]:
            return max(task.next_run_ns, now), -task.priority

        ordered = sorted(tasks, key=lambda t: (*band(t), t.next_run_ns, t.id))
        picked: list[str] = []
        for _, group in itertools.groupby(ordered, key=band):
            need = want - len(picked)
            candidates = list(group)[: 2 * need]
            picked.extend(t.id for t in self._random.sample(candidates, min(need, len(candidates))))
            if len(picked) >= want:
                break
        return picked

    def _log_unknown_types(self, tasks: Iterable[Task]) -> None:
        known = self._executors.task_types
        for task in tasks:
            if task.task_type not in known and task.id not in self._unknown_types_logged:
                self._unknown_types_logged.add(task.id)
                log.warning("task %s: no executor for type %r here", task.id, task.task_type)

    async def _claim_in(
        self,
        tx: Transaction,
        room: tuple[int, int],
        fired_ids: list[str],
        due_ids: list[str],
        ahead_ids: list[str],
        lapsed_ids: list[str],
    ) -> _ClaimPass:
        """The claim transaction (reads first, then writes; may run more than once): re-reads
        the picked tasks and claims those still claimable."""
        due_room, ahead_room = room
        now = self._clock.now_ns()
        horizon = self._config.horizon_ns

        def pending(ids: list[str], by_ns: int) -> list[Task]:
            found = (picked.get(task_id) for task_id in ids)
            return [
                t
                for t in found
                if t is not None and t.status is TaskState.PENDING and t.next_run_ns <= by_ns
            ]

        picked = await self._repo.get_many_in(tx, [*fired_ids, *due_ids, *ahead_ids, *lapsed_ids])
        recurring = pending(fired_ids, now)
        due = pending(due_ids, now)
        ahead = pending(ahead_ids, now + horizon)
        lapsed = [
            t
            for t in (picked.get(task_id) for task_id in lapsed_ids)
            if t is not None and t.status is TaskState.RUNNING and t.lease_until_ns <= now
        ]

        changes = ChangeSet()
        # Reads go on while changes are collected; nothing is written before the end.
        reads = TaskReads(tx, self._repo, changes)
        reads.seed(list(picked.values()))
        candidates = list(due)
        for task in lapsed:
            after = changes.add(task.lease_lapsed(now), task)
            metrics.LEASE_STEALS.inc()
            log.warning(
                "task %s: lease of %s lapsed on attempt %d",
                task.id,
                task.lease_owner,
                task.attempts[-1].attempt if task.attempts else 0,
            )
            if not after.is_final:
                candidates.append(after)
            elif after.parent_task_id:
                released = await settle_parent(reads, after, now)
                if released is not None:
                    candidates.append(released)
        skipped: collections.Counter[SkipReason] = collections.Counter()
        for parent in recurring:
            skipped.update(await self._fire(reads, parent.id, now, candidates))

        known = self._executors.task_types
        runnable = [changes.get(t.id) or t for t in candidates if t.task_type in known]
        self._log_unknown_types(candidates)
        runnable.sort(key=lambda t: (-t.priority, t.next_run_ns, t.id))
        ahead.sort(key=lambda t: (t.next_run_ns, -t.priority, t.id))
        claimed = []
        lease_ns, replica = self._config.lease_ns, self._config.replica_id
        for task in [*runnable[:due_room], *ahead[:ahead_room]]:
            claimed.append(changes.add(task.claimed(now, replica, lease_ns), task))
        if changes:
            await changes.write(tx, self._repo, self._events)
        return _ClaimPass(
            claimed, changed=bool(changes), skipped=dict(skipped), created=changes.created()
        )

    async def _fire(
        self, reads: TaskReads, parent_id: str, now: int, candidates: list[Task]
    ) -> Mapping[SkipReason, int]:
        """A recurring task is due: offers its occurrences due by now under its overlap policy
        (after an outage, those within its catch-up window; the older ones are skipped, as are
        those that came while it was paused), adds the runs due now to `candidates`, and moves
        it to its next fire. Returns the occurrences skipped, by reason."""
        changes = reads.changes
        parent = await reads.get(parent_id)
        if parent is None:
            return {}
        try:
            plan = plan_catch_up(
                parent.schedule,
                parent.next_run_ns,
                now,
                window_seconds=parent.catchup_window_seconds,
                skip_before_ns=parent.resumed_at_ns,
            )
        except ValueError as error:
            # Validated at submit, so only a stored expression croniter no longer accepts.
            changes.add(parent.cancelled(now, f"cron schedule stopped working: {error}"), parent)
            return {}
        skipped = collections.Counter(plan.skipped)
        for fire_ns in plan.offered:
            offer = await offer_occurrence(
                reads, parent.id, fire_ns, now, policy=parent.overlap_policy
            )
            if offer.decision is FireDecision.SKIP:
                skipped[SkipReason.OVERLAP] += 1
            if offer.due is not None:
                candidates.append(offer.due)
        if plan.skipped:
            log.info(
                "recurring task %s: occurrences skipped: %s",
                parent.id,
                ", ".join(f"{count} {reason.value}" for reason, count in plan.skipped.items()),
            )
        latest = await reads.get(parent.id)
        if latest is not None:
            changes.add(latest.advanced(now, plan.next_fire_ns, skipped), latest)
        return skipped

    # --- holding claims until their due time and a free slot ---

    def _hold(self, tasks: list[Task]) -> None:
        """Holds freshly claimed tasks and starts those that are due and have a slot."""
        if not tasks:
            return
        lease_deadline = time.monotonic() + self._config.lease_seconds
        namespace = namespace_or_none() or DEFAULT_NAMESPACE
        for task in tasks:
            previous = self._claims.get((namespace, task.id))
            if previous is not None:
                # This replica's own lease on it lapsed (renewals failed) and it took the task
                # again: the earlier attempt's outcome could no longer be written anyway.
                self._abandon(previous)
            attempt = task.attempts[-1]
            claim = _Claim(
                task,
                task.fencing_token,
                namespace,
                lease_deadline,
                due_ns=task.next_run_ns,
                checked=task.next_run_ns <= attempt.claimed_at_ns,
            )
            self._claims[namespace, task.id] = claim
            self._waiting += 1
            heapq.heappush(self._ahead, (claim.due_ns, next(self._order), claim))
        self._dispatch()

    def _dispatch(self) -> None:
        """Moves the claims that fell due to the ready queue, starts as many as there are
        free slots (highest priority first), and sets the timer for the next due time."""
        now = self._clock.now_ns()
        while self._ahead and self._ahead[0][0] <= now:
            _, order, claim = heapq.heappop(self._ahead)
            if claim.live:
                self._push_ready(claim, order)
        self._set_timer(now)
        if self._stopping:
            return
        batch: list[_Claim] = []
        while self._ready and self._busy + len(batch) < self._config.concurrency:
            claim = heapq.heappop(self._ready)[-1]
            if claim.live:
                batch.append(claim)
        if not batch:
            return
        for claim in batch:
            claim.phase = _Phase.STARTING
            claim.ready = False
            self._ready_count -= 1
            self._waiting -= 1
            self._busy += 1
        unchecked = [c for c in batch if not c.checked]
        for claim in batch:
            if claim.checked:
                self._start(claim)
        if unchecked:
            # The read covers the other due claims not checked yet, so that they start
            # without one when a slot frees.
            also = [e[-1] for e in self._ready if e[-1].live and not e[-1].checked]
            starting = asyncio.create_task(
                self._check_and_start(unchecked, also[: max(0, _STEP_BATCH - len(unchecked))])
            )
            self._starting.add(starting)
            starting.add_done_callback(self._starting.discard)
        self._room_freed()

    def _push_ready(self, claim: _Claim, order: int) -> None:
        claim.ready = True
        self._ready_count += 1
        heapq.heappush(self._ready, (-claim.task.priority, claim.due_ns, order, claim))

    def _set_timer(self, now: int) -> None:
        while self._ahead and not self._ahead[0][-1].live:
            heapq.heappop(self._ahead)
        if not self._ahead or self._stopping:
            self._cancel_timer()
            return
        due_ns = self._ahead[0][0]
        if self._timer is not None and self._timer_ns == due_ns:
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + (due_ns - now) / NS_PER_SECOND, self._on_timer)
        self._timer_ns = due_ns

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    async def _check_and_start(self, batch: list[_Claim], also: list[_Claim]) -> None:
        """Starts `batch` (slots taken) once one read, at or after their due time, finds each
        still this replica's claim: a task cancelled (or taken over) before it fell due is
        given up instead. `also` (due, waiting for a slot) are checked by the same read."""
        try:
            leases: dict[_Key, Lease] = {}
            for namespace, claims in _by_namespace((*batch, *also)).items():
                with in_namespace(namespace):
                    found = await self._repo.leases([c.task.id for c in claims])
                leases.update({(namespace, task_id): lease for task_id, lease in found.items()})
        except (*_TRANSIENT, asyncio.CancelledError) as error:
            # Not started: back to the ready queue (renewals give the claims up if the store
            # stays unreachable past their lease).
            for claim in batch:
                self._busy -= 1
                if claim.abandoned:
                    self._forget(claim)
                else:
                    claim.phase = _Phase.WAITING
                    self._waiting += 1
                    self._push_ready(claim, next(self._order))
            if isinstance(error, asyncio.CancelledError):
                raise
            log.warning("cannot check claimed tasks before starting them (%s)", error)
            self._retry_dispatch()
            return
        for claim in also:
            if claim.live and not claim.checked:
                if self._holds(claim, leases.get(_key(claim))):
                    claim.checked = True
                else:
                    self._give_up_unstarted(claim, _TAKEN)
        now = time.monotonic()
        for claim in batch:
            if claim.abandoned:
                self._busy -= 1
                self._forget(claim)
            elif self._holds(claim, leases.get(_key(claim))) and claim.lease_deadline > now:
                claim.checked = True
                self._start(claim)
            else:
                self._busy -= 1
                self._give_up_unstarted(claim, _TAKEN)
        self._dispatch()

    def _holds(self, claim: _Claim, lease: Lease | None) -> bool:
        return (
            lease is not None
            and lease.status is TaskState.RUNNING
            and lease.owner == self._config.replica_id
            and lease.fencing_token == claim.token
        )

    def _give_up_unstarted(self, claim: _Claim, why: str = "") -> None:
        if why:
            log.info("task %s: %s; not started", claim.task.id, why)
        if claim.phase is _Phase.WAITING:
            self._waiting -= 1
            if claim.ready:
                claim.ready = False
                self._ready_count -= 1
        claim.abandoned = True
        self._forget(claim)

    def _retry_dispatch(self) -> None:
        if self._retry_start is None or self._retry_start.cancelled():
            loop = asyncio.get_running_loop()

            def retry() -> None:
                self._retry_start = None
                self._dispatch()

            self._retry_start = loop.call_later(_START_RETRY_SECONDS, retry)

    def _start(self, claim: _Claim) -> None:
        claim.phase = _Phase.RUNNING
        claim.execution = asyncio.create_task(
            self._execute_in_namespace(claim), name=f"task-{claim.task.id}"
        )
        claim.execution.add_done_callback(lambda _: self._ended(claim))
        metrics.RUNNING.set(self._busy)
        metrics.CLAIMED_AHEAD.set(self._waiting)

    def _ended(self, claim: _Claim) -> None:
        """An execution ended (its outcome queued, or cancelled): its slot is free."""
        self._busy -= 1
        metrics.RUNNING.set(self._busy)
        if claim.phase is _Phase.RUNNING and claim.abandoned:
            self._forget(claim)
        # Else cancelled by a shutdown: stop() releases the lease.
        self._dispatch()
        self._room_freed()

    # --- executions ---

    async def _execute_in_namespace(self, claim: _Claim) -> None:
        # The executor's calls to other services carry the task's namespace.
        with in_namespace(claim.namespace):
            await self._execute(claim)

    async def _execute(self, claim: _Claim) -> None:
        task = claim.task
        claim.started_ns = self._clock.now_ns()
        metrics.DISPATCH_LAG.observe(max(0, claim.started_ns - claim.due_ns) / NS_PER_SECOND)
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
        outcome: Outcome
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
        except Exception as error:
            # The plug-in boundary: whatever an executor raises fails this attempt, and the
            # task's retry config decides what happens next. (A cancellation, not caught
            # here, is an abandoned attempt or a shutdown: see `_ended`.)
            outcome, label = _failure(f"{type(error).__name__}: {error}", permanent=False)
        else:
            outcome, label = _success(result), AttemptOutcome.COMPLETED
        metrics.ATTEMPTS.labels(task.task_type, label.value).inc()
        self._finish_later(claim, outcome)

    def _forget(self, claim: _Claim) -> None:
        if self._claims.get(_key(claim)) is claim:
            del self._claims[_key(claim)]
        metrics.CLAIMED_AHEAD.set(self._waiting)
        self._room_freed()

    # --- outcomes ---

    def _finish_later(self, claim: _Claim, outcome: Outcome) -> None:
        """Queues the attempt's outcome for the next finishing transaction."""
        claim.phase = _Phase.FINISHING
        self._outcomes.append((claim, outcome))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._finish_queued(), name="task-outcomes")

    async def _finish_queued(self) -> None:
        """Writes the queued outcomes, one transaction per batch of those that ended together
        (the attempts that end while one commits make the next batch), each batch in one
        namespace."""
        while self._outcomes:
            batch: list[tuple[_Claim, Outcome]] = []
            deferred: list[tuple[_Claim, Outcome]] = []
            parents: set[str] = set()
            namespace = self._outcomes[0][0].namespace
            while self._outcomes and len(batch) < _STEP_BATCH:
                item = self._outcomes.popleft()
                parent = item[0].task.parent_task_id
                if item[0].namespace != namespace or (parent and parent in parents):
                    # Another namespace's, or settles the same parent: the next transaction.
                    deferred.append(item)
                    continue
                parents.add(parent)
                batch.append(item)
            self._outcomes.extendleft(reversed(deferred))
            try:
                with in_namespace(namespace):
                    await self._finish(batch)
            finally:
                for claim, _ in batch:
                    self._forget(claim)

    async def _finish(self, batch: Sequence[tuple[_Claim, Outcome]]) -> None:
        """Writes the outcomes of `batch` whose task is still its claim's."""
        written = await self._with_retries(
            f"finish {len(batch)} tasks", lambda tx: self._finish_in(tx, batch)
        )
        if written is None:
            return  # the store stayed unreachable; the leases lapse and the tasks are re-run
        applied, pending_again, created = written
        if applied:
            self._on_committed()
            metrics.count_schedule_changes({}, created)
        if pending_again:
            # A retry (or a run released behind a finished one) falls due.
            self._wake_namespace(namespace_or_none())
        for claim, _ in batch:
            if claim.task.id not in applied and not claim.abandoned:
                log.warning(
                    "task %s: outcome of attempt %d discarded: the task was cancelled or taken "
                    "over (fencing token %d is stale)",
                    claim.task.id,
                    claim.task.attempts[-1].attempt,
                    claim.token,
                )

    async def _finish_in(
        self, tx: Transaction, batch: Sequence[tuple[_Claim, Outcome]]
    ) -> tuple[set[str], bool, list[Task]]:
        """Writes the outcomes; returns the tasks written, whether any task (one retried, or a
        run released behind one that ended) is pending again, and the runs it created (a
        backfill's next)."""
        tasks = await self._repo.get_many_in(tx, [claim.task.id for claim, _ in batch])
        now = self._clock.now_ns()
        changes = ChangeSet()
        reads = TaskReads(tx, self._repo, changes)
        reads.seed(list(tasks.values()))
        applied = set()
        pending_again = False
        for claim, outcome in batch:
            task = tasks.get(claim.task.id)
            if task is None or not _still_ours(task, claim):
                continue
            after = changes.add(outcome(task.started(claim.started_ns), now), task)
            applied.add(task.id)
            pending_again |= after.status is TaskState.PENDING
            if after.is_final and after.parent_task_id:
                # The run waiting behind it, or a backfill's next run, is due now.
                pending_again |= await settle_parent(reads, after, now) is not None
        if changes:
            await changes.write(tx, self._repo, self._events)
        return applied, pending_again, changes.created()

    async def _with_retries(
        self, what: str, fn: Callable[[Transaction], Awaitable[T]], attempts: int = 6
    ) -> T | None:
        """Runs a transaction, riding out a store outage for a while; None if it never
        committed."""
        for attempt in range(1, attempts + 1):
            try:
                async with self._claim_writes:
                    return await self._store.run_transaction(fn)
            except _TRANSIENT as error:
                if attempt == attempts:
                    log.error("%s: giving up after %d tries (%s)", what, attempts, error)
                    return None
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        return None

    # --- leases ---

    async def renew_leases(self) -> None:
        """Renews the lease of every claim held (waiting, running, or its outcome not yet
        written) every third of the lease, until cancelled; gives up the claims whose task
        was cancelled or taken over, or whose lease could not be renewed in time."""
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            # Those claimed or renewed within the last third of a lease have two thirds left:
            # renewed at the next turn, still a third ahead of their end.
            renew_by = time.monotonic() + 2 * interval
            claims = [
                c for c in self._claims.values() if not c.abandoned and c.lease_deadline <= renew_by
            ]
            for namespace, held in _by_namespace(claims).items():
                with in_namespace(namespace):
                    for chunk in _chunks(held, _RENEW_BATCH):
                        await self._renew(chunk)

    async def _renew(self, claims: list[_Claim]) -> None:
        started = time.monotonic()
        try:
            async with self._claim_writes:
                lost = await self._store.run_transaction(lambda tx: self._renew_in(tx, claims))
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

    async def _renew_in(self, tx: Transaction, claims: list[_Claim]) -> set[str]:
        tasks = await self._repo.get_many_in(tx, [c.task.id for c in claims])
        now = self._clock.now_ns()
        lost = set()
        for claim in claims:
            task = tasks.get(claim.task.id)
            if task is not None and _still_ours(task, claim):
                self._repo.write_in(tx, task.renewed(now, self._config.lease_ns))
            else:
                lost.add(claim.task.id)
        return lost

    def _abandon(self, claim: _Claim) -> None:
        """Gives up a claim whose outcome may no longer be written: one not started never
        starts; a running attempt is cancelled."""
        if claim.abandoned:
            return
        if claim.phase is _Phase.WAITING:
            self._give_up_unstarted(claim, "cancelled, or lease lost, before it started")
            self._dispatch()
            return
        claim.abandoned = True
        log.warning("task %s: abandoning attempt (cancelled, or lease lost)", claim.task.id)
        if claim.phase is _Phase.RUNNING and claim.execution is not None:
            claim.execution.cancel()

    # --- shutdown ---

    async def stop(self, grace_seconds: float) -> None:
        """Stops claiming and releases the claims not started, so that other replicas take
        them at their due time; gives running attempts `grace_seconds` to finish, writes the
        outcomes, then cancels the rest and releases their leases too."""
        self._stopping = True
        self._wake.set()
        self._cancel_timer()
        if self._retry_start is not None:
            self._retry_start.cancel()
        for starting in list(self._starting):
            starting.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        waiting = [c for c in self._claims.values() if c.live]
        if waiting:
            await self._release(waiting, started=False)
            for claim in waiting:
                self._give_up_unstarted(claim)
        running = [
            c.execution
            for c in self._claims.values()
            if c.phase is _Phase.RUNNING and c.execution is not None
        ]
        if running:
            log.info("waiting up to %.1fs for %d running attempts", grace_seconds, len(running))
            await asyncio.wait(running, timeout=grace_seconds)
        leftover = [
            c for c in self._claims.values() if c.phase is _Phase.RUNNING and not c.abandoned
        ]
        for claim in leftover:
            if claim.execution is not None:
                claim.execution.cancel()
        await asyncio.gather(
            *(c.execution for c in leftover if c.execution is not None), return_exceptions=True
        )
        if self._finisher is not None:
            await asyncio.gather(self._finisher, return_exceptions=True)
        if leftover:
            await self._release(leftover, started=True)
        self._claims.clear()

    async def _release(self, claims: list[_Claim], *, started: bool) -> None:
        how = "" if started else " before it started"
        reason = f"released{how} by replica {self._config.replica_id} shutting down"

        async def apply(tx: Transaction, chunk: Sequence[_Claim]) -> bool:
            tasks = await self._repo.get_many_in(tx, [c.task.id for c in chunk])
            now = self._clock.now_ns()
            changes = ChangeSet()
            for claim in chunk:
                task = tasks.get(claim.task.id)
                if task is not None and _still_ours(task, claim):
                    changes.add(task.released(now, reason, started=started), task)
            await changes.write(tx, self._repo, self._events)
            return bool(changes)

        released = False
        for namespace, held in _by_namespace(claims).items():
            for chunk in _chunks(held, _BATCH):
                with in_namespace(namespace), contextlib.suppress(*_TRANSIENT):
                    async with self._claim_writes:
                        transaction = functools.partial(apply, chunk=chunk)
                        released |= await self._store.run_transaction(transaction)
        if released:
            self._on_committed()
            log.info("released %d task leases", len(claims))


def _chunks(items: Sequence[_Claim], size: int) -> list[list[_Claim]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _still_ours(task: Task | None, claim: _Claim) -> bool:
    return (
        task is not None
        and task.status is TaskState.RUNNING
        and task.fencing_token == claim.token
        and task.lease_owner == claim.task.lease_owner
    )


def _success(result: Mapping[str, str]) -> Outcome:
    def succeed(task: Task, now: int) -> Task:
        return task.succeeded(now, result)

    return succeed


def _failure(message: str, *, permanent: bool) -> tuple[Outcome, AttemptOutcome]:
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
