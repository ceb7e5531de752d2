"""SimulatePolicy: a policy rehearsed over stored signals, as the Coordinator would have
evaluated them, writing nothing.

The signals are read in order of receipt, a page at a time, and each goes through the live
path's `decide`, with the policy's cooldown kept in memory from the start of the window. The
work is bounded: a deadline (the request's, never past the call's own), a cap on the window
(`MAX_LAST`), samples and error tallies of fixed size, and cooldown entries dropped once they
end. Between pages the loop yields, so a long rehearsal shares the replica with live traffic;
at most `max_concurrent` run at once per replica.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tai.v1 import governor_pb2
from tai_common.core import (
    Bindings,
    Clock,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    compile_condition,
)
from tai_common.core.units import seconds_to_ns
from tai_common.core.validation import check_id, check_not_negative, check_range, require_id
from tai_common.ports import Cursor

from tai_coordinator import metrics
from tai_coordinator.decisions import Cooldown, DecisionOutcome, Hold, HoldReason, decide, held
from tai_coordinator.limits import RehearsalWindows, describe_limit, limit_key
from tai_coordinator.model import StoredSignal, check_service_name
from tai_coordinator.policy_book import ActivePolicy

if TYPE_CHECKING:  # the repository imports convert, which imports this module
    from tai_coordinator.repository import CoordinatorRepository

DEFAULT_WINDOW_NS = seconds_to_ns(3600)
MAX_LAST = 1_000_000
DEFAULT_SAMPLE_SIZE = 10
MAX_SAMPLE_SIZE = 100
DEFAULT_MAX_SECONDS = 30
MAX_SECONDS = 1800
# Kept back from the call's own deadline, to send the answer in time.
DEADLINE_MARGIN_SECONDS = 0.5
MAX_ERROR_SAMPLES = 20
# Distinct error messages tallied; later new ones are counted in `errors` only.
MAX_DISTINCT_ERRORS = 200
PAGE_SIZE = 500
DRAFT_POLICY_ID = "draft"

FetchPolicy = Callable[[str, int], Awaitable[governor_pb2.Policy]]


@dataclass(frozen=True)
class SimulationRequest:
    """What to rehearse, over which window. `draft` or `stored_id` (with `stored_version`, 0
    for the latest); `last` N signals, or [since_ns, until_ns) (until 0: now; neither: the
    last hour)."""

    draft: governor_pb2.Policy | None = None
    stored_id: str = ""
    stored_version: int = 0
    since_ns: int = 0
    until_ns: int = 0
    last: int = 0
    sample_size: int = 0
    max_seconds: int = 0

    def validate(self) -> None:
        """Raises `InvalidArgument` naming the first field to fix."""
        if self.draft is None and not self.stored_id:
            raise InvalidArgument("policy", "give a draft (condition and action) or a stored id")
        if self.draft is not None:
            compile_condition(self.draft.condition, "draft.condition")
            check_service_name(self.draft.action.target_service, "draft.action.target_service")
            check_not_negative("draft.action.cooldown_seconds", self.draft.action.cooldown_seconds)
        else:
            check_id(self.stored_id, "stored.id")
            check_not_negative("stored.version", self.stored_version)
        check_not_negative("since_ns", self.since_ns)
        check_not_negative("until_ns", self.until_ns)
        check_range("last", self.last, 0, MAX_LAST)
        if self.last and (self.since_ns or self.until_ns):
            raise InvalidArgument("last", "give either last or since_ns/until_ns, not both")
        if self.until_ns and self.until_ns <= self.since_ns:
            raise InvalidArgument("until_ns", "must be after since_ns")
        check_range("sample_size", self.sample_size, 0, MAX_SAMPLE_SIZE)
        check_range("max_seconds", self.max_seconds, 0, MAX_SECONDS)


@dataclass(frozen=True)
class ErrorTally:
    error: str
    count: int
    signal_id: str


@dataclass
class SimulationReport:
    """What the policy would have done over the window (the part scanned, if not complete)."""

    policy_id: str
    policy_version: int
    window_since_ns: int
    window_until_ns: int
    signals_scanned: int = 0
    matched: int = 0
    actions: int = 0
    held: int = 0
    not_matched: int = 0
    errors: int = 0
    actions_by_target: Counter[str] = field(default_factory=Counter)
    failed_clauses: Counter[str] = field(default_factory=Counter)
    held_by_reason: Counter[str] = field(default_factory=Counter)
    sample: list[StoredSignal] = field(default_factory=list)
    error_samples: list[ErrorTally] = field(default_factory=list)
    scanned_until_ns: int = 0
    complete: bool = False
    elapsed_seconds: float = 0.0


@dataclass(frozen=True)
class SummaryRequest:
    """SummarizeDecisions: one policy's decisions in [since_ns, until_ns) (0: the last hour)."""

    policy_id: str
    since_ns: int = 0
    until_ns: int = 0
    max_seconds: int = 0

    def validate(self) -> None:
        """Raises `InvalidArgument` naming the first field to fix."""
        require_id(self.policy_id, "policy_id")
        check_not_negative("since_ns", self.since_ns)
        check_not_negative("until_ns", self.until_ns)
        if self.until_ns and self.until_ns <= self.since_ns:
            raise InvalidArgument("until_ns", "must be after since_ns")
        check_range("max_seconds", self.max_seconds, 0, MAX_SECONDS)


@dataclass
class DecisionSummary:
    """One policy's decisions over a window of decision records (the part scanned)."""

    policy_id: str
    window_since_ns: int
    window_until_ns: int
    signals_scanned: int = 0
    decided: int = 0
    actions: int = 0
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_hold_reason: Counter[str] = field(default_factory=Counter)
    by_version: Counter[int] = field(default_factory=Counter)
    scanned_until_ns: int = 0
    complete: bool = False

    def count(self, signal: StoredSignal) -> None:
        """Counts the policy's decision in `signal`'s record, if it has one."""
        self.signals_scanned += 1
        if signal.decision is None:
            return
        for decision in signal.decision.decisions:
            if decision.policy_id != self.policy_id:
                continue
            self.decided += 1
            self.by_outcome[decision.outcome.value] += 1
            self.by_version[decision.policy_version] += 1
            if decision.hold_reason is not None:
                self.by_hold_reason[decision.hold_reason.value] += 1
            if decision.creates_action:
                self.actions += 1


class PolicySimulator:
    def __init__(
        self,
        repo: CoordinatorRepository,
        clock: Clock,
        fetch_policy: FetchPolicy,
        max_concurrent: int,
    ) -> None:
        """`fetch_policy(id, version)` reads a stored policy version from the Governor."""
        self._repo = repo
        self._clock = clock
        self._fetch_policy = fetch_policy
        self._slots = asyncio.Semaphore(max_concurrent)

    def _deadline(self, max_seconds: int, call_time_left: float | None) -> float:
        """When a scan must stop: after `max_seconds` (0: the default), and never later than the
        call's own deadline allows; raises `ResourceExhausted` when every slot is taken."""
        if self._slots.locked():
            raise ResourceExhausted(
                "as many simulations as this replica runs at once are running; retry shortly"
            )
        budget = float(max_seconds or DEFAULT_MAX_SECONDS)
        if call_time_left is not None:
            budget = min(budget, call_time_left - DEADLINE_MARGIN_SECONDS)
        return time.monotonic() + budget

    async def summarize(
        self, request: SummaryRequest, call_time_left: float | None
    ) -> DecisionSummary:
        """What `request.policy_id`'s decisions came to in the decision records of the window's
        signals; bounded as a rehearsal (a slot, a deadline, pages)."""
        request.validate()
        deadline = self._deadline(request.max_seconds, call_time_left)
        async with self._slots:
            until = request.until_ns or self._clock.now_ns()
            since = request.since_ns or max(0, until - DEFAULT_WINDOW_NS)
            summary = DecisionSummary(request.policy_id, since, until, scanned_until_ns=since)
            cursor: Cursor | None = None
            while time.monotonic() < deadline:
                signals, cursor = await self._repo.signals_received(
                    since_ns=since,
                    until_ns=until,
                    limit=PAGE_SIZE,
                    start_after=cursor,
                    with_decisions=True,
                )
                for signal in signals:
                    summary.count(signal)
                if cursor is None:
                    summary.complete = True
                    summary.scanned_until_ns = until
                    break
                summary.scanned_until_ns = signals[-1].received_at_ns
                await asyncio.sleep(0)  # let live traffic through between pages
        return summary

    async def simulate(
        self, request: SimulationRequest, call_time_left: float | None
    ) -> SimulationReport:
        """Rehearses the request's policy over its window. Stops at its deadline: the request's
        `max_seconds`, and never later than `call_time_left` (the RPC's remaining deadline)
        allows."""
        request.validate()
        deadline = self._deadline(request.max_seconds, call_time_left)
        async with self._slots:
            started = time.monotonic()
            policy = await self._policy(request)
            report = await self._run(policy, request, deadline)
            report.elapsed_seconds = time.monotonic() - started
        metrics.SIMULATIONS.labels(result="complete" if report.complete else "partial").inc()
        metrics.SIMULATED_SIGNALS.inc(report.signals_scanned)
        metrics.SIMULATION_SECONDS.observe(report.elapsed_seconds)
        return report

    async def _policy(self, request: SimulationRequest) -> ActivePolicy:
        if request.draft is not None:
            policy = governor_pb2.Policy()
            policy.CopyFrom(request.draft)
            policy.id = DRAFT_POLICY_ID
        else:
            policy = await self._fetch_policy(request.stored_id, request.stored_version)
            if not policy.condition:
                raise FailedPrecondition(
                    f"policy {policy.id} v{policy.version} has no condition: it never matches"
                )
            if not policy.action.target_service:
                raise FailedPrecondition(
                    f"policy {policy.id} v{policy.version} has no action target: it creates nothing"
                )
        # Rehearsed as if enforced, whatever its state: the question is what it would do.
        policy.state = governor_pb2.POLICY_STATE_ENFORCED
        return ActivePolicy(policy, compile_condition(policy.condition))

    async def _run(
        self, active: ActivePolicy, request: SimulationRequest, deadline: float
    ) -> SimulationReport:
        now = self._clock.now_ns()
        until = request.until_ns or now
        since = request.since_ns
        first_id = ""
        if request.last:
            since, first_id = await self._start_of_last(request.last, until, deadline)
        elif not since:
            since = max(0, until - DEFAULT_WINDOW_NS)
        report = SimulationReport(
            policy_id="" if request.draft is not None else active.id,
            policy_version=active.policy.version,
            window_since_ns=since,
            window_until_ns=until,
            scanned_until_ns=since,
        )
        sample_size = request.sample_size or DEFAULT_SAMPLE_SIZE
        cooldown_ns = seconds_to_ns(active.policy.action.cooldown_seconds)
        cooldowns: dict[str, Cooldown] = {}
        windows = RehearsalWindows()
        errors: dict[str, ErrorTally] = {}
        remaining = request.last or -1

        def read(after: Cursor | None) -> asyncio.Task[tuple[list[StoredSignal], Cursor | None]]:
            return asyncio.ensure_future(
                self._repo.signals_received(
                    since_ns=since, until_ns=until, limit=PAGE_SIZE, start_after=after
                )
            )

        # The next page is read (on the store's own thread, or over the network) while this
        # one is evaluated.
        next_page: asyncio.Task[tuple[list[StoredSignal], Cursor | None]] | None = read(None)
        try:
            while next_page is not None and time.monotonic() < deadline:
                signals, cursor = await next_page
                next_page = read(cursor) if cursor is not None else None
                for signal in signals:
                    if first_id and signal.received_at_ns == since and signal.id < first_id:
                        continue  # received with the first of the last N, but before it
                    self._evaluate(
                        active, signal, report, cooldowns, cooldown_ns, errors, sample_size, windows
                    )
                    remaining -= 1
                    if remaining == 0:
                        break
                if remaining == 0 or next_page is None:
                    report.complete = True
                    break
                report.scanned_until_ns = signals[-1].received_at_ns
                # Cooldowns that ended before this point hold nothing back any more.
                cooldowns = {
                    k: c for k, c in cooldowns.items() if c.until_ns > report.scanned_until_ns
                }
                await asyncio.sleep(0)  # let live traffic through between pages
        finally:
            if next_page is not None:
                next_page.cancel()
        if report.complete:
            report.scanned_until_ns = until
        report.error_samples = sorted(errors.values(), key=lambda e: -e.count)[:MAX_ERROR_SAMPLES]
        return report

    def _evaluate(
        self,
        active: ActivePolicy,
        signal: StoredSignal,
        report: SimulationReport,
        cooldowns: dict[str, Cooldown],
        cooldown_ns: int,
        errors: dict[str, ErrorTally],
        sample_size: int,
        windows: RehearsalWindows,
    ) -> None:
        variables = signal.signal.variables(signal.received_at_ns)
        evaluation = active.condition.evaluate(Bindings(variables))
        received = signal.received_at_ns
        decision = decide(
            active, evaluation, now_ns=received, cooldown=cooldowns.get(signal.fingerprint)
        )
        if decision.creates_action:
            # As live: admitted in every window of the policy's limits, held if one refuses.
            admissions = [
                (
                    limit,
                    windows.admit(
                        limit_key(active, limit),
                        limit.max_actions,
                        seconds_to_ns(limit.window_seconds),
                        received,
                    ),
                )
                for limit in active.policy.action.limits
            ]
            refused = [(limit, a) for limit, a in admissions if not a.allowed]
            if refused:
                limit, admission = refused[0]
                decision = held(
                    decision,
                    Hold(HoldReason.LIMIT, admission.retry_at_ns, describe_limit(active, limit)),
                )
        report.signals_scanned += 1
        match decision.outcome:
            case DecisionOutcome.NOT_MATCHED:
                report.not_matched += 1
                if decision.failed_clause:
                    report.failed_clauses[decision.failed_clause] += 1
                return
            case DecisionOutcome.ERROR:
                report.errors += 1
                tally = errors.get(decision.error)
                if tally is not None:
                    errors[decision.error] = ErrorTally(
                        tally.error, tally.count + 1, tally.signal_id
                    )
                elif len(errors) < MAX_DISTINCT_ERRORS:
                    errors[decision.error] = ErrorTally(decision.error, 1, signal.id)
                return
            case DecisionOutcome.HELD:
                report.held += 1
                if decision.hold_reason is not None:
                    report.held_by_reason[decision.hold_reason.value.lower()] += 1
            case DecisionOutcome.MATCHED:
                report.actions += 1
                report.actions_by_target[decision.target_service] += 1
                if cooldown_ns > 0:
                    cooldowns[signal.fingerprint] = Cooldown(received + cooldown_ns, "")
        report.matched += 1
        if len(report.sample) < sample_size:
            report.sample.append(signal)

    async def _start_of_last(self, last: int, until: int, deadline: float) -> tuple[int, str]:
        """Where the last `last` signals before `until` begin: the receipt time and id of the
        oldest of them (read newest first, a page at a time, keeping nothing else)."""
        cursor: Cursor | None = None
        seen = 0
        oldest: tuple[int, str] | None = None
        while seen < last and time.monotonic() < deadline:
            receipts, cursor = await self._repo.receipts_before(
                until, min(PAGE_SIZE, last - seen), cursor
            )
            if receipts:
                oldest = receipts[-1]
                seen += len(receipts)
            if cursor is None:
                break
            await asyncio.sleep(0)
        return oldest if oldest is not None else (until, "")
