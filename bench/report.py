"""The printed table and the JSON results (`bench/results/<UTC timestamp>-<backend>.json`),
with a description of the machine so runs can be compared."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.latency import LatencyResult
from bench.load import LoadResult

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA_VERSION = 1


@dataclass
class ThroughputRow:
    name: str
    title: str
    method: str
    result: LoadResult
    extra: dict[str, str]

    def as_dict(self, baseline: LoadResult | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "kind": "throughput",
            "method": self.method,
            **self.result.as_dict(),
            "setup": self.extra,
        }
        if baseline is not None:
            row["vs_empty"] = ratios(self.result, baseline)
        return row


def ratios(result: LoadResult, baseline: LoadResult) -> dict[str, float]:
    """rps: scenario ÷ empty (below 1: slower); latencies and server CPU per call: scenario ÷
    empty (above 1: slower, costlier)."""

    def div(a: float | None, b: float | None) -> float:
        if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
            return float("nan")
        return a / b

    return {
        "cpu": div(result.cpu_ms_per_call, baseline.cpu_ms_per_call),
        "rps": div(result.rps, baseline.rps),
        "p50": div(result.latency.p50_ms, baseline.latency.p50_ms),
        "p90": div(result.latency.p90_ms, baseline.latency.p90_ms),
        "p99": div(result.latency.p99_ms, baseline.latency.p99_ms),
        "max": div(result.latency.max_ms, baseline.latency.max_ms),
    }


# --- the machine ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_bytes": _memory_bytes(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


# --- the table ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _cpu(ms_per_call: float | None) -> str:
    return "-" if ms_per_call is None else f"{ms_per_call:.3f}"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _errors(errors: dict[str, int]) -> str:
    return str(sum(errors.values())) if errors else "0"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under a header, columns aligned (the format of the report's own tables)."""
    return "\n".join(_table(list(header), [list(r) for r in rows]))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i < left else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render(
    *,
    backend: str,
    machine: dict[str, Any],
    config: dict[str, Any],
    baseline: LoadResult | None,
    throughput: Sequence[ThroughputRow],
    latency: Sequence[LatencyResult],
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The printed report; `sections` are (heading, text) blocks after the tables (the peers,
    the targets)."""
    memory_gib = machine["memory_bytes"] / 2**30
    out = [
        "",
        f"TAI bench — backend {backend}, {machine['cpu_model']}, {machine['cpus_usable']} CPUs, "
        f"{memory_gib:.1f} GiB, Python {machine['python']}, grpcio {machine['grpcio']}, "
        f"commit {machine['git_commit'][:12]}{' (dirty)' if machine['git_dirty'] else ''}",
    ]
    if throughput or baseline is not None:
        out += [
            "",
            f"Throughput — closed loop, {config['processes']} client process(es) × "
            f"{config['concurrency']} concurrent callers, {config['warmup_s']:g} s warm-up, "
            f"{config['duration_s']:g} s measured; latencies in ms; cpu = the servers' CPU per "
            "call in ms (user + system time of every suite process in the measured window, "
            "which CPU steal and the client's share of the cores barely move); ÷empty = "
            "scenario / the empty unary handler (rps below 1 = slower, latency and cpu above "
            "1 = slower, costlier)",
            "",
        ]
        header = [
            "scenario",
            "rps",
            "p50",
            "p90",
            "p99",
            "max",
            "err",
            "cpu",
            "│",
            "rps÷empty",
            "p50÷empty",
            "p90÷empty",
            "p99÷empty",
            "max÷empty",
            "cpu÷empty",
        ]
        rows: list[list[str]] = []

        def cells(title: str, result: LoadResult) -> list[str]:
            lat = result.latency
            return [
                title,
                f"{result.rps:.0f}",
                _ms(lat.p50_ms),
                _ms(lat.p90_ms),
                _ms(lat.p99_ms),
                _ms(lat.max_ms),
                _errors(result.errors),
                _cpu(result.cpu_ms_per_call),
                "│",
            ]

        if baseline is not None:
            rows.append([*cells("empty unary handler (baseline)", baseline), *["1"] * 6])
        for row in throughput:
            r = ratios(row.result, baseline) if baseline is not None else None
            rows.append(
                [
                    *cells(row.title, row.result),
                    *(
                        [_x(r[k]) for k in ("rps", "p50", "p90", "p99", "max", "cpu")]
                        if r
                        else ["-"] * 6
                    ),
                ]
            )
        out += _table(header, rows)
    if latency:
        out += [
            "",
            "Latency — event to arrival, in ms (rate: what arrived per second in the "
            "measured window)",
            "",
        ]
        header = ["scenario", "n", "p50", "p90", "p99", "max", "rate", "notes"]
        rows = []
        for result in latency:
            lat = result.latency
            rows.append(
                [
                    result.title,
                    str(lat.count),
                    _ms(lat.p50_ms),
                    _ms(lat.p90_ms),
                    _ms(lat.p99_ms),
                    _ms(lat.max_ms),
                    f"{result.rate:.0f} {result.rate_unit}" if result.rate_unit else "",
                    _notes(result),
                ]
            )
        out += _table(header, rows)
    for heading, text in sections:
        out += ["", heading, "", text]
    out.append("")
    return "\n".join(out)


def _notes(result: LatencyResult) -> str:
    extra = result.extra
    notes = []
    if "offered_rate_per_s" in extra:
        notes.append(f"offered {extra['offered_rate_per_s']:g}/s")
        if extra.get("missing"):
            notes.append(f"missing {extra['missing']}")
        if extra.get("skipped_over_max_in_flight"):
            notes.append(f"skipped {extra['skipped_over_max_in_flight']}")
        if extra.get("errors"):
            notes.append(f"errors {sum(extra['errors'].values())}")
        if extra.get("server_cpu_ms_per_call") is not None:
            notes.append(f"cpu {extra['server_cpu_ms_per_call']:.3f} ms/call")
    if "iterations" in extra:
        notes.append(f"{extra['iterations']} enforcements")
    if "first_to_last_start_s" in extra:
        notes.append(f"first→last start {extra['first_to_last_start_s']:.2f} s")
        if extra.get("submission_ended_before_T_ms", 0) < 0:
            notes.append("late submissions!")
    return ", ".join(notes)


def write_json(
    *,
    results_dir: Path,
    started: datetime,
    backend: str,
    machine: dict[str, Any],
    config: dict[str, Any],
    env: dict[str, str],
    baseline: LoadResult | None,
    throughput: Sequence[ThroughputRow],
    latency: Sequence[LatencyResult],
    table: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes the run's JSON; `extra` adds top-level entries (memory, peers, targets)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{backend}.json"
    document = {
        "schema": SCHEMA_VERSION,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "backend": backend,
        "machine": machine,
        "config": config,
        "tai_env": env,
        "baseline": baseline.as_dict() if baseline is not None else None,
        "scenarios": [row.as_dict(baseline) for row in throughput]
        + [result.as_dict() for result in latency],
        "table": table,
        **(extra or {}),
    }
    path.write_text(json.dumps(_no_nan(document), indent=2, allow_nan=False) + "\n")
    return path


def _no_nan(value: Any) -> Any:
    """NaN (no samples) becomes null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value
