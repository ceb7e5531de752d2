"""`run_peers`: each system in turn, on the same workload, every process it started stopped
before the next one starts; and the table of their figures."""

from __future__ import annotations

import math
import shutil
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench.peers._common import SYSTEMS, PeerResult, Workload, kill_leftovers

Runner = Callable[[Path, Workload, PeerResult], Awaitable[None]]


def _runner(system: str) -> Runner:
    # Imported on use: one system's packages missing does not stop the other.
    if system == "temporal":
        from bench.peers._temporal import run_temporal

        return run_temporal
    if system == "celery":
        from bench.peers._celery import run_celery

        return run_celery
    raise ValueError(f"unknown system {system!r}: choose from {', '.join(SYSTEMS)}")


async def run_peers(
    workdir: Path,
    *,
    tasks: int,
    steady_rate: float,
    submit_seconds: float,
    systems: Sequence[str] = SYSTEMS,
    submit_warmup_s: float = 2.0,
    concurrency: int = 32,
) -> list[PeerResult]:
    """Runs TAI's dispatch-lag and SubmitTask workload on each system of `systems`, one after
    another, in a folder of its own under `workdir`.

    Args:
        workdir: where each system keeps its database, ledger and logs (`<workdir>/<system>/`).
        tasks: N, the tasks due at one instant and then the tasks due one after another.
        steady_rate: tasks per second of the second phase (TAI's run uses half its burst rate).
        submit_seconds: the measured window of the submit figure (after `submit_warmup_s`).
        systems: from "temporal", "celery".
        concurrency: concurrent submitters of the submit figure.

    A system that fails gives a row with the figures it reached and the error in `note`;
    everything it started is stopped, on failure and on cancellation (Ctrl-C) too.
    """
    for system in systems:
        _runner(system)  # an unknown name fails before anything starts
    workload = Workload(
        tasks=tasks,
        steady_rate=steady_rate,
        submit_seconds=submit_seconds,
        submit_warmup_s=submit_warmup_s,
        concurrency=concurrency,
    )
    results = []
    try:
        for system in systems:
            results.append(await _run_one(system, workdir, workload))
    finally:
        kill_leftovers()  # only where a stop was itself cut short
    return results


async def _run_one(system: str, workdir: Path, workload: Workload) -> PeerResult:
    folder = workdir / system
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = PeerResult(
        system=system, version="", tasks=workload.tasks, steady_rate=workload.steady_rate
    )
    try:
        await _runner(system)(folder, workload, result)
    except Exception as error:  # one system's failure is its row's note, not the end
        result.note = f"failed: {error}".strip()[:2000]
    return result


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def format_table(results: Sequence[PeerResult]) -> str:
    """The figures as a small table (times in ms but for the burst's seconds)."""
    header = [
        "system",
        "N",
        "T→all started s",
        "burst p50",
        "burst p99",
        "steady/s",
        "steady p50",
        "steady p99",
        "submits/s",
        "dup",
        "note",
    ]
    rows = [
        [
            f"{r.system} {r.version}".strip(),
            str(r.tasks),
            "-" if r.burst_all_started_s is None else f"{r.burst_all_started_s:.2f}",
            _ms(r.burst_lag_p50_ms),
            _ms(r.burst_lag_p99_ms),
            f"{r.steady_rate:g}",
            _ms(r.steady_lag_p50_ms),
            _ms(r.steady_lag_p99_ms),
            "-" if r.submit_per_s is None else f"{r.submit_per_s:.0f}",
            "-" if r.duplicate_starts is None else str(r.duplicate_starts),
            r.note.splitlines()[0] if r.note else "",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    last = len(header) - 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i in (0, last) else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
