"""`make chaos` in its short form (3 s outages), as CI runs it: every fault is injected into
the running suite under load, and every check of the report passes. The report's figures
(error rates) are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAULTS = [
    "kill-scheduler",
    "kill-coordinator",
    "kill-relay",
    "stop-redis",
    "cut-bus",
    "restart-governor",
]
CHECKS = [
    "every accepted write exists",
    "every accepted task completed",
    "every action delivered and acknowledged",
    "every policy change reached every StreamPolicies client",
    "every Coordinator replica caught up with the last policy change",
    "no task executed twice",
    "every stream client resumed",
    "every fault was injected",
]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_the_suite_survives_every_fault_and_loses_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAI_")}
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "--short", "--json", str(report_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    print(done.stdout)
    assert report_path.exists(), f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"
    report = json.loads(report_path.read_text())

    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases)[1:] == FAULTS
    for name in FAULTS:
        assert phases[name]["injected"], name  # every fault applies to the default backend
        assert phases[name]["healed"], name
        assert phases[name]["calls"] > 0, name  # the load ran through each fault
    # The Scheduler was killed while it ran something, so the takeover was exercised.
    assert "while it ran 0 task" not in phases["kill-scheduler"]["injected"]

    # The kills broke streams, so resuming them was exercised: the Coordinator kill broke the
    # StreamActions client on that replica, the Governor's restarts the StreamPolicies clients.
    streams = report["streams"]
    assert streams["actions-1"]["breaks"], streams["actions-1"]
    assert all(streams[f"policies-{i}"]["breaks"] for i in range(2)), streams

    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == CHECKS
    failed = [f"{c['name']}: {c['detail']}" for c in checks.values() if not c["passed"]]
    assert failed == [], f"{failed}\nstderr:\n{done.stderr[-6000:]}"
    assert done.returncode == 0
    assert "all checks passed" in done.stdout
