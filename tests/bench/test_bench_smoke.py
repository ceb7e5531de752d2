"""`make bench`'s harness, end to end in its fast `--smoke` mode: it starts the suite, runs every
scenario, prints the table and writes the JSON results. Only the report's structure is
checked, never a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

THROUGHPUT = [
    "empty_stack",
    "empty_stack_traced",
    "get_policies",
    "get_policy",
    "propose_policy",
    "submit_signal",
    "request_action",
    "submit_task",
]
LATENCY = [
    *(f"{name}_half_load" for name in ["empty", *THROUGHPUT]),
    "stream_fanout",
    "signal_delivery",
    "policy_propagation_streams",
    "policy_propagation_coordinators",
    "dispatch_lag_claim",
    "dispatch_lag_executor",
    "dispatch_lag_steady_claim",
    "dispatch_lag_steady_executor",
]
PERCENTILES = {"count", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"}

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_the_smoke_run_prints_the_table_and_writes_the_results(tmp_path: Path) -> None:
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAI_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(results)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-6000:]}"

    # The table: both sections, the baseline row and a row per scenario.
    out = done.stdout
    assert "backend embedded" in out
    assert "Throughput" in out
    assert "Latency" in out
    assert "empty unary handler (baseline)" in out
    for title in (
        "GetPolicies (cached",
        "GetPolicy ",
        "ProposePolicy",
        "SubmitSignal (10 enforced, 1 matching)",
        "RequestAction",
        "SubmitTask",
        "StreamActions fan-out (50 subscribers)",
        "signal → action delivery",
        "all 20 StreamPolicies subscribers",
        # One replica: it runs inside the single process (no other may join on its file).
        "all 1 Coordinator replicas",
        "T → claimed",
        "T → executor start",
    ):
        assert title in out, title

    files = list(results.glob("*-embedded.json"))
    assert len(files) == 1, files
    assert f"results: {files[0]}" in out
    document = json.loads(files[0].read_text())
    assert document["backend"] == "embedded"
    assert document["config"]["smoke"] is True
    machine = document["machine"]
    for key in ("platform", "cpu_model", "cpu_count", "memory_bytes", "python", "grpcio"):
        assert machine[key], key
    assert "git_commit" in machine

    baseline = document["baseline"]
    assert set(baseline["latency"]) == PERCENTILES
    assert baseline["latency"]["count"] > 0
    assert baseline["server_cpu_ms_per_call"] > 0

    # make run's memory, every process it starts, and the targets table from the same run.
    assert document["config"]["topology"] == "single"
    assert set(document["memory"]["rss_mib"]) == {
        "supervisor (run_local.py)",
        "tai-server",
        "console (tai-console)",
        "gateway (Envoy)",
    }
    assert all(mib > 0 for mib in document["memory"]["rss_mib"].values())
    assert "Targets" in out
    assert {t["figure"] for t in document["targets"]} >= {
        "reads: rps ÷ empty",
        "durable writes: rps ÷ empty",
        "memory of `make run`, every process (RSS)",
    }

    # SimulatePolicy over the 2,000 stored signals the smoke run writes: the whole window
    # scanned, the draft's cooldown at work, and a day extrapolated from the same rate.
    assert "Simulation — SimulatePolicy over 2,000 stored signals" in out
    simulation = {row["name"]: row for row in document["simulation"]["rows"]}
    assert list(simulation) == ["simulate_policy", "simulate_policy_last"]
    for row in simulation.values():
        assert row["complete"] is True, row
        assert row["signals_scanned"] == 2000, row
        assert row["day_s"] == pytest.approx(8_640_000 / row["signals_per_s"], rel=0.01)
    window = simulation["simulate_policy"]
    for count in ("actions", "held", "not_matched"):
        assert window[count] > 0, (count, window)

    scenarios = {s["name"]: s for s in document["scenarios"]}
    assert list(scenarios) == THROUGHPUT + LATENCY
    for name in THROUGHPUT:
        row = scenarios[name]
        assert row["kind"] == "throughput"
        assert set(row["latency"]) == PERCENTILES
        assert row["latency"]["count"] > 0, name
        assert row["rps"] > 0, name
        assert set(row["vs_empty"]) == {"rps", "p50", "p90", "p99", "max", "cpu"}
        # The servers did work for the calls (the suite's processes are on this machine).
        assert row["server_cpu_ms_per_call"] > 0, name
        assert row["errors"] == {}, (name, row["errors"])
    assert scenarios["submit_signal"]["setup"]["active_policies"] == "10"
    for name in LATENCY:
        row = scenarios[name]
        assert row["kind"] == "latency"
        assert set(row["latency"]) == PERCENTILES
        assert row["latency"]["count"] > 0, name
    assert scenarios["stream_fanout"]["extra"]["subscribers"] == 50
    assert scenarios["dispatch_lag_executor"]["latency"]["count"] == 100
    # Paced at half of the peak the closed loop measured for the same call.
    paced = scenarios["submit_signal_half_load"]
    assert paced["extra"]["offered_rate_per_s"] == pytest.approx(
        scenarios["submit_signal"]["rps"] / 2, abs=0.1
    )
    assert paced["extra"]["errors"] == {}
    steady = scenarios["dispatch_lag_steady_executor"]
    assert steady["latency"]["count"] == 100
    # Paced at half the rate the burst was worked through.
    assert steady["rate"] == pytest.approx(scenarios["dispatch_lag_executor"]["rate"] / 2)
    assert scenarios["policy_propagation_streams"]["latency"]["count"] == 3
    assert document["table"].strip() in out
