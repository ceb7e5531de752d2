"""The SimulatePolicy scenario: how fast the Coordinator rehearses a policy over stored signals,
and so how long a day of signals at 100/s (8,640,000) takes to simulate.

Setup: N stored signals (`--simulation-signals`, 200,000; smoke: 2,000) as the live path
stores them — a few metadata keys, a small payload on alerts, a decision record of five
enforced policies built with the Coordinator's own `decide` and `DecisionRecord` — 10 ms
apart (100/s), in a window that ends before the oldest signal already stored, so the window
holds these signals and no others. They are written with `CoordinatorRepository.put_signal_in`
straight into the store the server uses, from the bench's own process, in transactions of
`WRITE_BATCH`, while the server runs. That is allowed: the single-process owner lock
(`<db>-owners`, `TAI_SQLITE_SINGLE_PROCESS`) is the bus's and keeps a second *bus* off the file;
the store takes none, and its writes queue behind the server's on the file's write lock
(`<db>-writelock`) like another replica's would. No events are published for them, so nothing
but the stored documents changes. SubmitSignal at full speed would take minutes for 200,000
signals and could not place them in a window of their own; the time the writes take is
reported, but is setup, not the figure.

Measured: one SimulatePolicy call over the whole window (`since_ns`/`until_ns`: one pass), a
3-clause conjunction draft with a 60 s cooldown (decide and the cooldown bookkeeping run),
`max_seconds` at its most; then the same draft over `last=N` (two passes: the newest N are read
newest-first to find where they start, then scanned; when other scenarios stored signals
earlier in the run, those are among the newest N). Each row: signals/s, µs per signal (wall
and the suite's CPU), the extrapolation to a day, and both per-signal times ÷ the empty
handler's per-call time measured in the same run (wall: 1 / its peak rps; CPU: its server CPU
per call).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, open_channel
from tai_common.core import (
    Bindings,
    Evaluation,
    SystemClock,
    TimeOrderedIds,
    compile_condition,
)
from tai_common.factory import sqlite_path
from tai_common.messaging.events import EventFactory
from tai_common.ports import Transaction
from tai_common.sqlite import SqliteStore
from tai_coordinator.decisions import DecisionRecord, PolicyDecision, decide
from tai_coordinator.model import SignalInput, StoredSignal
from tai_coordinator.policy_book import ActivePolicy
from tai_coordinator.repository import SIGNALS, CoordinatorRepository
from tai_coordinator.simulation import MAX_LAST, MAX_SECONDS

from bench.cpu import CpuSampler, wait_until_idle
from bench.load import NS_PER_S, LoadResult
from bench.report import table
from bench.scenarios import Context, condition_for
from bench.suite import Suite, tai_overrides

NAME = "simulate_policy"
# A day of signals at 100/s: the README's question.
DAY_SIGNALS = 8_640_000
SPACING_NS = NS_PER_S // 100
WRITE_BATCH = 10_000
COOLDOWN_SECONDS = 60
SERVICES = ("checkout", "payments", "search", "catalog", "auth", "inventory", "shipping", "email")
# The draft's service gets a fifth of the signals, so it matches about 1 % of them, and its
# repeated fingerprints (3 regions × 4 hosts × 3 priorities) meet the cooldown.
SERVICE_WEIGHTS = (20, 15, 15, 10, 10, 10, 10, 10)
DRAFT_SERVICE = SERVICES[0]
# The policies the live path evaluated when it stored the signals (their decision records).
RECORDED_POLICIES = SERVICES[:5]
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
PAYLOADS = (
    b'{"metric": "cpu", "value": 97.2, "threshold": 90, "unit": "percent"}',
    b'{"metric": "latency_p99", "value": 812, "threshold": 500, "unit": "ms"}',
    b'{"metric": "errors", "value": 41, "threshold": 10, "unit": "per_minute"}',
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class SimulationRow:
    """One SimulatePolicy call and what it extrapolates to."""

    name: str
    title: str
    signals: int
    # Signals other scenarios stored, among those scanned (the `last` N may include them).
    other_signals: int
    response: coordinator_pb2.SimulatePolicyResponse
    wall_s: float
    server_cpu_s: float | None
    # The empty handler's per-call time in the same run: wall (1 / peak rps) and server CPU.
    empty_us_per_call: float | None
    empty_cpu_us_per_call: float | None

    @property
    def signals_per_s(self) -> float:
        return self.response.signals_scanned / self.wall_s if self.wall_s else math.nan

    @property
    def us_per_signal(self) -> float:
        scanned = self.response.signals_scanned
        return self.wall_s * 1e6 / scanned if scanned else math.nan

    @property
    def cpu_us_per_signal(self) -> float | None:
        scanned = self.response.signals_scanned
        if self.server_cpu_s is None or not scanned:
            return None
        return self.server_cpu_s * 1e6 / scanned

    @property
    def day_s(self) -> float:
        return DAY_SIGNALS * self.us_per_signal / 1e6

    def as_dict(self) -> dict[str, Any]:
        r = self.response
        cpu = self.cpu_us_per_signal
        return {
            "name": self.name,
            "title": self.title,
            "kind": "simulation",
            "signals": self.signals,
            "other_signals": self.other_signals,
            "signals_scanned": r.signals_scanned,
            "complete": r.complete,
            "matched": r.matched,
            "actions": r.actions,
            "held": r.held,
            "not_matched": r.not_matched,
            "errors": r.errors,
            "wall_s": round(self.wall_s, 3),
            "server_elapsed_s": round(r.elapsed_seconds, 3),
            "server_cpu_s": self.server_cpu_s,
            "signals_per_s": round(self.signals_per_s, 1),
            "us_per_signal": round(self.us_per_signal, 2),
            "cpu_us_per_signal": None if cpu is None else round(cpu, 2),
            "day_signals": DAY_SIGNALS,
            "day_s": round(self.day_s, 1),
            "day_min": round(self.day_s / 60, 2),
            "day_calls_of_max_seconds": math.ceil(self.day_s / MAX_SECONDS),
            "vs_empty": {
                "per_signal": _div(self.us_per_signal, self.empty_us_per_call),
                "cpu_per_signal": _div(cpu, self.empty_cpu_us_per_call),
            },
        }


@dataclass(frozen=True)
class SimulationResult:
    signals: int
    block: SignalBlock
    rows: list[SimulationRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "setup": {
                "signals": self.signals,
                "write_s": round(self.block.write_s, 2),
                "write_per_s": round(self.signals / self.block.write_s, 1),
                "write_batch": WRITE_BATCH,
                "spacing_ms": SPACING_NS / 1e6,
                "condition": condition_for(DRAFT_SERVICE),
                "cooldown_seconds": COOLDOWN_SECONDS,
                "recorded_policies": len(RECORDED_POLICIES),
            },
            "rows": [row.as_dict() for row in self.rows],
        }

    def section(self) -> tuple[str, str]:
        """The report's section: heading and table."""
        heading = (
            f"Simulation — SimulatePolicy over {self.signals:,} stored signals, one call each "
            f"(3-clause draft, {COOLDOWN_SECONDS} s cooldown; setup wrote them in "
            f"{self.block.write_s:.1f} s); day = {DAY_SIGNALS:,} signals (100/s), extrapolated; "
            "÷empty = per-signal time / the empty handler's per-call time (wall: 1/rps; cpu: "
            "server CPU per call)"
        )
        header = [
            "scenario",
            "scanned",
            "s",
            "signals/s",
            "µs/signal",
            "cpu µs/signal",
            "day s",
            "day min",
            f"calls of {MAX_SECONDS} s",
            "│",
            "µs÷empty",
            "cpu÷empty",
        ]
        rows = []
        for row in self.rows:
            d = row.as_dict()
            cpu = d["cpu_us_per_signal"]
            rows.append(
                [
                    row.title,
                    f"{d['signals_scanned']:,}" + ("" if d["complete"] else " (partial)"),
                    f"{row.wall_s:.2f}",
                    f"{row.signals_per_s:,.0f}",
                    f"{row.us_per_signal:.1f}",
                    "-" if cpu is None else f"{cpu:.1f}",
                    f"{row.day_s:,.0f}",
                    f"{row.day_s / 60:,.1f}",
                    str(d["day_calls_of_max_seconds"]),
                    "│",
                    _x(d["vs_empty"]["per_signal"]),
                    _x(d["vs_empty"]["cpu_per_signal"]),
                ]
            )
        return heading, table(header, rows)


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def store_url(suite: Suite) -> str:
    """The store the suite's servers use (a `TAI_STORE` of the caller's environment wins, as
    it does for the servers)."""
    return {**suite.base_env, **tai_overrides()}.get("TAI_STORE", "")


async def run_simulation(
    ctx: Context, suite: Suite, baseline: LoadResult | None, *, signals: int, log: Log
) -> SimulationResult | None:
    """Writes `signals` stored signals, then times SimulatePolicy over them (one pass, and
    `last=N`); None when the suite's store is not SQLite (the signals go straight into it)."""
    url = store_url(suite)
    if not url.startswith("sqlite:"):
        log(f"{NAME}: skipped, the stored signals are written into a SQLite store (not {url})")
        return None
    log(f"{NAME}: writing {signals:,} stored signals …")
    block = await write_signals(ctx, url, signals)
    log(
        f"{NAME}: wrote {signals:,} signals in {block.write_s:.1f} s "
        f"({signals / block.write_s:,.0f}/s)"
    )
    empty_us = 1e6 / baseline.rps if baseline is not None and baseline.rps else None
    empty_cpu = baseline.cpu_ms_per_call if baseline is not None else None
    empty_cpu_us = empty_cpu * 1000 if empty_cpu is not None else None
    draft = coordinator_pb2.PolicyDraft(
        condition=condition_for(DRAFT_SERVICE),
        action=governor_pb2.ActionTemplate(
            action_type="scale",
            target_service=ctx.name("simulated-sink"),
            parameters={"replicas": "+1"},
            cooldown_seconds=COOLDOWN_SECONDS,
        ),
    )
    last = min(signals, MAX_LAST)
    last_title = f"SimulatePolicy, last={last:,} (two passes)"
    if block.newer:
        last_title += f", {min(block.newer, last):,} of them from earlier scenarios"
    calls = [
        _Call(
            NAME,
            f"SimulatePolicy, a window of {signals:,} (one pass)",
            signals,
            since_ns=block.since_ns,
            until_ns=block.until_ns,
        ),
        _Call(f"{NAME}_last", last_title, last, last=last, others=min(block.newer, last)),
    ]
    rows = []
    async with open_channel(ctx.coordinator) as channel:
        coordinator = CoordinatorClient(channel)
        for call in calls:
            await wait_until_idle(ctx.server_pids)
            response, wall_s, cpu_s = await _timed(ctx.server_pids, coordinator, draft, call)
            _check(call.name, response, call.signals)
            row = SimulationRow(
                call.name,
                call.title,
                call.signals,
                call.others,
                response,
                wall_s,
                cpu_s,
                empty_us,
                empty_cpu_us,
            )
            rows.append(row)
            log(
                f"{call.title}: {response.signals_scanned:,} signals in {wall_s:.2f} s, "
                f"{row.signals_per_s:,.0f}/s, {row.us_per_signal:.1f} µs/signal; a day of "
                f"{DAY_SIGNALS:,}: {row.day_s:,.0f} s ({row.day_s / 60:.1f} min); matched "
                f"{response.matched:,} (actions {response.actions:,}, held {response.held:,})"
            )
    return SimulationResult(signals, block, rows)


@dataclass(frozen=True)
class _Call:
    """One SimulatePolicy call to time: over [since_ns, until_ns), or the `last` N."""

    name: str
    title: str
    signals: int
    since_ns: int = 0
    until_ns: int = 0
    last: int = 0
    # Signals other scenarios stored, among those scanned.
    others: int = 0


async def _timed(
    pids: Sequence[int],
    coordinator: CoordinatorClient,
    draft: coordinator_pb2.PolicyDraft,
    call: _Call,
) -> tuple[coordinator_pb2.SimulatePolicyResponse, float, float | None]:
    """One SimulatePolicy call: its answer, its wall time and the suite's CPU time during it."""
    sampler = CpuSampler(pids)
    sampling = asyncio.create_task(sampler.run()) if CpuSampler.available() else None
    await asyncio.sleep(0)  # the sampler's first sample comes before the call starts
    try:
        started, wall_started = time.perf_counter(), time.time()
        response = await coordinator.simulate_policy(
            draft=draft,
            since_ns=call.since_ns,
            until_ns=call.until_ns,
            last=call.last,
            max_seconds=MAX_SECONDS,
        )
        wall_s, wall_ended = time.perf_counter() - started, time.time()
    finally:
        if sampling is not None:
            sampler.sample()
            sampling.cancel()
    return response, wall_s, sampler.between(wall_started, wall_ended)


def _check(name: str, response: coordinator_pb2.SimulatePolicyResponse, expected: int) -> None:
    """A figure from a scan that missed signals, or saw others, would be wrong: fail loudly.
    A scan its deadline cut short still gives a rate (its row says partial)."""
    if response.complete and response.signals_scanned != expected:
        raise RuntimeError(
            f"{name}: scanned {response.signals_scanned} signals, expected {expected}"
        )


# --- the stored signals ---------------------------------------------------------------------


@dataclass(frozen=True)
class SignalBlock:
    """The signals written: exactly those received in [since_ns, until_ns); `newer` signals
    stored earlier in the run (by other scenarios) were received after them."""

    since_ns: int
    until_ns: int
    write_s: float
    newer: int


async def write_signals(ctx: Context, url: str, count: int) -> SignalBlock:
    """Writes `count` stored signals, 10 ms apart, ending before the oldest signal stored so
    far."""
    started = time.perf_counter()
    # No janitor: the server's own expires documents.
    store = await SqliteStore.open(sqlite_path(url), expire_every_seconds=None)
    try:
        ids = TimeOrderedIds()
        clock = SystemClock()
        repo = CoordinatorRepository(store, EventFactory("bench", clock, ids))
        now = clock.now_ns()
        newer = await store.count(SIGNALS)
        oldest, _ = await repo.signals_received(since_ns=0, until_ns=now, limit=1, start_after=None)
        end = min([now, *(s.received_at_ns for s in oldest)]) - NS_PER_S
        since = end - count * SPACING_NS
        signals = _SignalMaker(ctx, ids, seed=count)
        for first in range(0, count, WRITE_BATCH):
            batch = [
                signals.make(since + i * SPACING_NS)
                for i in range(first, min(count, first + WRITE_BATCH))
            ]

            async def put(tx: Transaction, batch: list[StoredSignal] = batch) -> None:
                for signal in batch:
                    repo.put_signal_in(tx, signal)

            await store.run_transaction(put)
    finally:
        await store.close()
    return SignalBlock(since, since + count * SPACING_NS, time.perf_counter() - started, newer)


class _SignalMaker:
    """Signals with the live path's content: the decisions of `RECORDED_POLICIES` through the
    Coordinator's own `decide`, each condition evaluated once per distinct signal shape (the
    outcome depends only on type, priority and service)."""

    def __init__(self, ctx: Context, ids: TimeOrderedIds, seed: int) -> None:
        self._ids = ids
        self._rng = random.Random(seed)
        self._policies = [
            ActivePolicy(
                governor_pb2.Policy(
                    id=ids.new_id("pol"),
                    version=1,
                    policy_name=ctx.name(f"recorded-{service}"),
                    condition=condition_for(service),
                    state=governor_pb2.POLICY_STATE_ENFORCED,
                    action=governor_pb2.ActionTemplate(
                        action_type="scale",
                        target_service=ctx.name(f"sink-{service}"),
                        cooldown_seconds=COOLDOWN_SECONDS,
                    ),
                ),
                compile_condition(condition_for(service)),
            )
            for service in RECORDED_POLICIES
        ]
        self._evaluations: dict[tuple[str, int, str], list[Evaluation]] = {}

    def make(self, received_at_ns: int) -> StoredSignal:
        rng = self._rng
        service = rng.choices(SERVICES, SERVICE_WEIGHTS)[0]
        signal_type = "alert" if rng.random() < 0.6 else "event"
        priority = rng.randint(1, 10)
        signal = SignalInput(
            signal_id=self._ids.new_id("sig"),
            signal_type=signal_type,
            priority=priority,
            metadata={
                "service": service,
                "region": rng.choice(REGIONS),
                "host": f"{service}-{rng.randrange(4)}",
                "env": "prod",
            },
            payload=PAYLOADS[priority % len(PAYLOADS)] if signal_type == "alert" else b"",
            source="prometheus",
            timestamp_ns=received_at_ns - rng.randrange(50_000_000),
        )
        evaluations = self._evaluate(signal)
        decisions: list[PolicyDecision] = []
        for policy, evaluation in zip(self._policies, evaluations, strict=True):
            action_id = self._ids.new_id("act") if evaluation.matched else ""
            decisions.append(decide(policy, evaluation, now_ns=received_at_ns, action_id=action_id))
        matched = [d for d in decisions if d.creates_action]
        evaluated_at = received_at_ns + 200_000
        return StoredSignal(
            signal=signal,
            fingerprint=signal.fingerprint(),
            received_at_ns=received_at_ns,
            matched_policy_ids=tuple(d.policy_id for d in matched),
            action_ids=tuple(d.action_id for d in matched),
            created_by="anonymous",
            decision=DecisionRecord.bounded(
                decisions, evaluated_at_ns=evaluated_at, policy_revision=12, replica_id="server-0"
            ),
        )

    def _evaluate(self, signal: SignalInput) -> list[Evaluation]:
        key = (signal.signal_type, signal.priority, signal.metadata["service"])
        cached = self._evaluations.get(key)
        if cached is None:
            bindings = Bindings(signal.variables(signal.timestamp_ns))
            cached = [p.condition.evaluate(bindings) for p in self._policies]
            self._evaluations[key] = cached
        return cached
