"""What every peer shares: the result row, the workload (the same for every system), the ledger
the workers record their starts in, and the processes a peer starts, always stopped.

The workload, for a system reached through a `Peer` (submit a task due at a time, or one parked a
day ahead):

1. a first task due now, waited for: the worker is up and polling.
2. submit throughput: `concurrency` callers in this process, back to back, each submit durable
   when it returns, for a warm-up then `submit_seconds`; per second = submits started in the
   measured window that succeeded ÷ the window (as bench/load.py counts TAI's SubmitTask). The
   tasks are due a day ahead, so none runs during the benchmark.
3. burst: N tasks due at one instant T, submitted by 32 concurrent callers, T far enough ahead
   that submission ends before it (2 s + 1.5 × N ÷ the submit rate of step 2, as TAI's
   `dispatch_lag`); figures: T → the last start, and lag = start − T (p50, p99).
4. steady: N tasks due one after another at `steady_rate` per second from T on; lag = start −
   the task's own due time (p50, p99).

"start" is when the task's own code began, recorded by it (wall clock) into a SQLite ledger
with TAI's test executors' `ledger` module, as TAI's `test_record` executor does (the same two
steps: the key's completion looked up, then the execution and completion recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tai_test_executors import ledger

from bench.load import NS_PER_S, Summary
from bench.task_starts import executions_per_task, wait_for_starts

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ("temporal", "celery")
# How far ahead a parked task is due (never during a benchmark), as TAI's SubmitTask scenario.
PARK_AHEAD_NS = 86_400 * NS_PER_S
T = TypeVar("T")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Submits in flight during the burst and steady phases, as TAI's `dispatch_lag`.
SUBMITTERS = 32


@dataclass
class PeerResult:
    """One system's figures; None where it could not produce one (`note` says why)."""

    system: str
    version: str
    tasks: int
    steady_rate: float
    # Time from T until every one of the N tasks due at T had started, in seconds.
    burst_all_started_s: float | None = None
    burst_lag_p50_ms: float | None = None
    burst_lag_p99_ms: float | None = None
    steady_lag_p50_ms: float | None = None
    steady_lag_p99_ms: float | None = None
    submit_per_s: float | None = None
    # Ledger rows beyond one per task (a task started twice); None: not counted.
    duplicate_starts: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Workload:
    tasks: int
    steady_rate: float
    submit_seconds: float
    submit_warmup_s: float = 2.0
    concurrency: int = 32
    # Waiting for the first task (worker up and polling).
    ready_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ValueError("tasks must be at least 1")
        if self.steady_rate <= 0:
            raise ValueError("steady_rate must be positive")
        if self.submit_seconds <= 0 or self.submit_warmup_s < 0:
            raise ValueError("submit_seconds must be positive and submit_warmup_s not negative")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class Peer(Protocol):
    """A running system: submits a task whose worker records its start into the ledger."""

    async def submit(self, task_id: str, due_ns: int) -> None:
        """A task due at `due_ns` (epoch ns), durable when this returns."""
        ...

    async def submit_parked(self, seq: int) -> None:
        """A task due a day ahead, durable when this returns (the throughput figure)."""
        ...


# --- the ledger -----------------------------------------------------------------------------


def record_start(path: str, task_id: str, task_type: str, attempt: int, worker: str) -> None:
    """What TAI's `test_record` executor does around its (empty) work: the start taken first,
    the key's completion looked up, then the execution and the completion recorded."""
    started = ledger.now_ns()
    recorded = ledger.completion_of(path, task_id)
    completion = None if recorded is not None else f"{worker}:{attempt}:{uuid.uuid4().hex[:8]}"
    execution = ledger.Execution(
        key=task_id,
        task_id=task_id,
        task_type=task_type,
        attempt=attempt,
        worker=worker,
        started_ns=started,
        ended_ns=ledger.now_ns(),
        replay=False,
        outcome="completed",
    )
    ledger.record(path, execution, completion)


# --- the workload ---------------------------------------------------------------------------


@dataclass
class SubmitStats:
    per_s: float
    latency: Summary
    errors: dict[str, int]


async def submit_throughput(
    call: Callable[[int], Awaitable[None]], *, concurrency: int, warmup_s: float, duration_s: float
) -> SubmitStats:
    """`concurrency` callers calling `call(seq)` back to back for `warmup_s` + `duration_s`;
    counts the calls started in the measured window, as bench/load.py's closed loop."""
    sequence = itertools.count()
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    begin = time.perf_counter_ns()
    measure_from = begin + int(warmup_s * NS_PER_S)
    measure_to = measure_from + int(duration_s * NS_PER_S)

    async def caller() -> None:
        while True:
            started = time.perf_counter_ns()
            if started >= measure_to:
                return
            try:
                await call(next(sequence))
            except Exception as error:  # any system's error counts, by its type
                if started >= measure_from:
                    errors[type(error).__name__] += 1
                await asyncio.sleep(0.01)  # a failing system must not become a busy loop
                continue
            if started >= measure_from:
                latencies.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return SubmitStats(len(latencies) / duration_s, Summary.of(latencies), dict(errors))


async def _submit_all(peer: Peer, due: Mapping[str, int]) -> None:
    semaphore = asyncio.Semaphore(SUBMITTERS)

    async def one(task_id: str, due_ns: int) -> None:
        async with semaphore:
            await peer.submit(task_id, due_ns)

    await asyncio.gather(*(one(task_id, at) for task_id, at in due.items()))


async def measure(
    peer: Peer,
    ledger_path: Path,
    workload: Workload,
    result: PeerResult,
    cpu: Callable[[], dict[str, float]],
) -> dict[str, dict[str, int]]:
    """Runs the workload against `peer`, filling `result` as figures come (a failure part-way
    leaves the figures measured so far); returns each phase's due times by task id.

    `cpu()` gives the CPU seconds each of the system's processes used so far: each phase's
    share goes into `result.extra["cpu_s"]` (with this process's, "harness")."""
    n = workload.tasks
    run = uuid.uuid4().hex[:8]
    cpu_s: dict[str, dict[str, float]] = {}
    result.extra["cpu_s"] = cpu_s
    # The system's processes counted from their start, this one from here.
    last = {"harness": _cpu_now(cpu)["harness"]}

    def cpu_phase(name: str) -> None:
        nonlocal last
        now = _cpu_now(cpu)
        cpu_s[name] = {k: round(v - last.get(k, 0.0), 2) for k, v in now.items()}
        last = now

    # The worker up and polling (its start-up off the figures' CPU).
    hello = f"{run}-hello"
    began = time.monotonic()
    await peer.submit(hello, time.time_ns())
    await wait_for_starts(ledger_path, hello, 1, workload.ready_timeout_s)
    result.extra["first_task_s"] = round(time.monotonic() - began, 3)
    cpu_phase("start-up")

    stats = await submit_throughput(
        peer.submit_parked,
        concurrency=workload.concurrency,
        warmup_s=workload.submit_warmup_s,
        duration_s=workload.submit_seconds,
    )
    result.submit_per_s = stats.per_s if stats.latency.count else None
    result.extra["submit"] = {
        "concurrency": workload.concurrency,
        "warmup_s": workload.submit_warmup_s,
        "duration_s": workload.submit_seconds,
        "latency": stats.latency.as_dict(),
        "errors": stats.errors,
    }
    cpu_phase("submit")
    if not stats.latency.count:
        raise RuntimeError(f"no submit succeeded: {stats.errors}")

    lead_s = 2.0 + 1.5 * n / stats.per_s
    result.extra["lead_s"] = round(lead_s, 2)

    async def phase(prefix: str, spacing_ns: int) -> tuple[dict[str, int], dict[str, int], int]:
        """Submits N tasks due from T on, `spacing_ns` apart; returns their due times, their
        starts and how long before T the submission ended (ns; negative: late)."""
        first_ns = time.time_ns() + int(lead_s * NS_PER_S)
        due = {f"{prefix}{i:05d}": first_ns + i * spacing_ns for i in range(n)}
        await _submit_all(peer, due)
        slack = first_ns - time.time_ns()
        span_s = (n - 1) * spacing_ns / NS_PER_S
        found = await wait_for_starts(ledger_path, prefix, n, lead_s + span_s + 60.0 + n / 10)
        return due, found, slack

    burst_due, found, slack = await phase(f"{run}-burst-", 0)
    lags = [found[task_id] - at for task_id, at in burst_due.items()]
    t = next(iter(burst_due.values()))
    burst = Summary.of(lags)
    cpu_phase("burst")
    result.burst_all_started_s = (max(found.values()) - t) / NS_PER_S
    result.burst_lag_p50_ms = burst.p50_ms
    result.burst_lag_p99_ms = burst.p99_ms
    result.extra["burst"] = {
        "lag": burst.as_dict(),
        "first_to_last_start_s": (max(found.values()) - min(found.values())) / NS_PER_S,
        "submission_ended_before_T_ms": slack / 1e6,
    }

    due, found, slack = await phase(f"{run}-steady-", int(NS_PER_S / workload.steady_rate))
    cpu_phase("steady")
    steady = Summary.of([found[task_id] - at for task_id, at in due.items()])
    result.steady_lag_p50_ms = steady.p50_ms
    result.steady_lag_p99_ms = steady.p99_ms
    result.extra["steady"] = {
        "lag": steady.as_dict(),
        "submission_ended_before_T_ms": slack / 1e6,
    }

    counts = await asyncio.to_thread(executions_per_task, ledger_path)
    mine = {task_id: c for task_id, c in counts.items() if task_id.startswith(f"{run}-")}
    result.duplicate_starts = sum(c - 1 for c in mine.values())
    late = [
        name
        for name in ("burst", "steady")
        if result.extra[name]["submission_ended_before_T_ms"] < 0
    ]
    if late:
        result.note = f"submission ended after T ({', '.join(late)}): lags include it"
    return {"burst": burst_due, "steady": due}


def _cpu_now(cpu: Callable[[], dict[str, float]]) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {**cpu(), "harness": usage.ru_utime + usage.ru_stime}


# --- processes ------------------------------------------------------------------------------


class Processes:
    """The processes a peer starts, each the leader of its own process group (so its children,
    a Celery worker's pool for one, go with it); `stop` ends every group, leader gone or not."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def pgids(self) -> list[int]:
        return [process.pid for _, process in self._started]

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`args` as a process of its own, its output in `<workdir>/<name>.log`."""
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                list(args),
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append((name, process))
        _live_groups.add(process.pid)
        return process

    def python(
        self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`python -m module args…` on this interpreter, with the repository on its path."""
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return self.start(
            name, [sys.executable, "-m", module, *args], {"PYTHONPATH": path, **(env or {})}
        )

    def forget(self, name: str) -> None:
        """Stops the processes started as `name` and stops watching them (one that failed to
        start, about to be started again); its log is kept."""
        for entry in [e for e in self._started if e[0] == name]:
            _signal_group(entry[1].pid, signal.SIGKILL)
            entry[1].wait()
            _live_groups.discard(entry[1].pid)
            self._started.remove(entry)

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of each process, with its group's live members."""
        return {name: group_cpu_s(process.pid) for name, process in self._started}

    def check_running(self) -> None:
        """Raises if a process exited (with the end of its log)."""
        for name, process in self._started:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )

    async def watch(self, work: Coroutine[Any, Any, T]) -> T:
        """Awaits `work`, failing it at once if one of these processes exits."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                self.check_running()
                await asyncio.wait({task}, timeout=1.0)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        return task.result()

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every group (newest first), then SIGKILL to whatever is left of them."""
        for _, process in reversed(self._started):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, process in reversed(self._started):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        for _, process in reversed(self._started):
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        # A pool child may outlive its leader for a moment after SIGKILL.
        for pgid in self.pgids:
            if wait_group_gone(pgid, 10.0):
                _live_groups.discard(pgid)


# Every process group started and not yet seen gone: `kill_leftovers` ends them when a stop
# was itself interrupted (a second Ctrl-C).
_live_groups: set[int] = set()


def track_group(pgid: int) -> None:
    """A process group started outside `Processes` (tests/support's redis-server)."""
    _live_groups.add(pgid)


def untrack_group(pgid: int) -> None:
    _live_groups.discard(pgid)


def kill_leftovers() -> None:
    """SIGKILL to every process group started here and not yet seen gone."""
    for pgid in list(_live_groups):
        _signal_group(pgid, signal.SIGKILL)
        _live_groups.discard(pgid)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _stat_fields(entry: Path) -> list[str]:
    """/proc/<pid>/stat's fields after the command (which may hold spaces, in parentheses):
    [0] state, [2] process group, [11] utime, [12] stime."""
    stat = (entry / "stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes of group `pgid`."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                fields = _stat_fields(entry)
                if int(fields[2]) == pgid:
                    ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS_PER_S


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still exists (zombies aside)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            fields = _stat_fields(entry)
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
