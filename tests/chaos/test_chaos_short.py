"""`make chaos` in its short form (3 s outages), as CI runs it, once per topology: every fault
is injected into the running suite under load, and every check of the report passes. The
report's figures (error rates) are printed, never asserted.

- `services` on the mixed backend (Pub/Sub emulator, Redis, SQLite store): a process per
  replica, one replica killed at a time.
- `single` on the embedded backend (what `make run` starts): the one `tai-server` process that
  owns the SQLite file, SIGKILLed while it runs tasks, as writes commit, and twice in a row,
  each time restarted on the same file and ports, then stopped gracefully and restarted.

Each run takes about 40 s (single) and 2 to 3 minutes (services) on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    "every accepted write exists",
    "every accepted task completed",
    "every action delivered and acknowledged",
    "every accepted write is in the audit trail",
    "every policy change reached every StreamPolicies client",
    "every Coordinator replica caught up with the last policy change",
    "no task executed twice",
    "every stream client resumed",
    "every fault was injected",
]

pytestmark = pytest.mark.slow


def run_chaos(tmp_path: Path, *args: str) -> dict[str, Any]:
    """`python -m chaos --short ARGS`: its one run's report, once its checks all passed."""
    report_path = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAI_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "--short", "--json", str(report_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    print(done.stdout)
    print(f"python -m chaos --short {' '.join(args)}: {time.monotonic() - started:.0f} s")
    assert report_path.exists(), f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    document = json.loads(report_path.read_text())
    (report,) = document["runs"]
    assert isinstance(report, dict)

    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    failed = [f"{c['name']}: {c['detail']}" for c in checks.values() if not c["passed"]]
    assert failed == [], f"{failed}\nstderr:\n{done.stderr[-6000:]}"
    assert document["passed"] is True
    assert done.returncode == 0
    assert "all checks passed" in done.stdout
    return report


def phases_of(report: dict[str, Any], faults: list[str], applicable: set[str]) -> dict[str, Any]:
    """The report's phases by fault, checked: in order, each applicable fault injected and
    healed with the load running through it, the others skipped."""
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases)[1:] == faults
    for name in faults:
        if name in applicable:
            assert phases[name]["injected"], name
            assert phases[name]["healed"], name
            assert phases[name]["calls"] > 0, name  # the load ran through each fault
        else:
            assert phases[name]["injected"].startswith("not applicable"), name
    return phases


@pytest.mark.timeout(900)
def test_the_services_survive_every_fault_and_lose_nothing(tmp_path: Path) -> None:
    faults = [
        "kill-scheduler",
        "kill-coordinator",
        "kill-relay",
        "stop-redis",
        "cut-bus",
        "restart-governor",
    ]
    report = run_chaos(tmp_path, "--topology", "services")
    assert (report["topology"], report["backend"]) == ("services", "mixed")
    phases = phases_of(report, faults, set(faults))  # every fault applies to mixed
    # The Scheduler was killed while it ran something, so the takeover was exercised.
    assert "while it ran 0 task" not in phases["kill-scheduler"]["injected"]

    # The kills broke streams, so resuming them was exercised: the Coordinator kill broke the
    # StreamActions client on that replica, the Governor's restarts the StreamPolicies clients.
    streams = report["streams"]
    assert streams["actions-1"]["breaks"], streams["actions-1"]
    assert all(streams[f"policies-{i}"]["breaks"] for i in range(2)), streams


@pytest.mark.timeout(600)
def test_the_single_process_survives_kills_and_restarts_and_loses_nothing(
    tmp_path: Path,
) -> None:
    faults = [
        "kill-server-tasks",
        "kill-server-writes",
        "kill-server-twice",
        "stop-redis",
        "cut-bus",
        "restart-server",
    ]
    report = run_chaos(tmp_path, "--topology", "single")
    assert (report["topology"], report["backend"]) == ("single", "embedded")
    # The embedded backend has no Redis and no networked bus to break.
    phases = phases_of(report, faults, set(faults) - {"stop-redis", "cut-bus"})

    # Killed while it ran a task (its lease had to lapse, the task run again once)...
    assert "while it ran 0 task" not in phases["kill-server-tasks"]["injected"]
    # ...and as a policy change committed, with writes in flight and others just accepted.
    writes = re.search(
        r"with (\d+) .* in flight \((\d+) accepted before\)",
        phases["kill-server-writes"]["injected"],
    )
    assert writes is not None, phases["kill-server-writes"]["injected"]
    in_flight, accepted = map(int, writes.groups())
    assert in_flight > 0, phases["kill-server-writes"]["injected"]
    assert accepted > 0, phases["kill-server-writes"]["injected"]
    assert "SIGKILL again" in phases["kill-server-twice"]["injected"]
    assert "exited with 0" in phases["restart-server"]["injected"]

    # Every stream client lost its server at each stop and came back.
    streams = report["streams"]
    assert all(len(s["breaks"]) >= 4 for s in streams.values()), streams
