"""`python -m chaos` (what `make chaos` runs): starts the suite, puts it under a steady load,
injects each fault in turn (the fault, its outage, then a settling time with the load still
on), stops the load, checks, and prints what was injected, the error rate in each fault's
window, and what was checked. Exits 1 when a check fails.

`--short` is the form CI runs (tests/chaos): the same faults and checks, 3 s outages.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tai_client import CoordinatorClient, TaiError, open_channel

from bench.scenarios import wait_policy_revision
from bench.suite import BACKENDS
from chaos.checks import Check, Checker
from chaos.cluster import Cluster, balanced_channel
from chaos.faults import FAULTS
from chaos.workload import Rates, Workload, close_quietly


@dataclass(frozen=True)
class Timing:
    steady_s: float
    outage_s: float
    settle_s: float
    drain_s: float


FULL = Timing(steady_s=10, outage_s=10, settle_s=10, drain_s=180)
SHORT = Timing(steady_s=3, outage_s=3, settle_s=5, drain_s=120)


@dataclass
class Phase:
    name: str
    started_at: float
    ended_at: float = 0.0
    injected: str = ""
    healed: str = ""
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.calls if self.calls else 0.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Inject faults into a running TAI suite under load and check that no "
        "accepted write is lost, no task runs twice, every event is delivered and every "
        "stream resumes.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="mixed",
        help="mixed (default: SQLite store, Pub/Sub emulator, Redis; every fault), emulators "
        "(Firestore too) or embedded (no Redis or bus faults)",
    )
    parser.add_argument("--short", action="store_true", help="3 s outages (CI's form)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--signals", type=float, default=Rates.signals, help="signals/s (10)")
    parser.add_argument("--tasks", type=float, default=Rates.tasks, help="tasks/s (5)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    timing = SHORT if args.short else FULL
    rates = Rates(signals=args.signals, tasks=args.tasks)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="tai-chaos-"))
    print(f"chaos: backend {args.backend}, logs in {workdir}", flush=True)
    cluster = await Cluster.start(args.backend, workdir)
    channels = (
        balanced_channel([cluster.governor]),
        balanced_channel(cluster.coordinators),
        balanced_channel(cluster.schedulers),
    )
    # Each StreamActions client starts on its own Coordinator replica (so killing one breaks
    # a stream) and moves to the other when that one is down.
    stream_channels = [
        balanced_channel([cluster.coordinators[i], cluster.coordinators[1 - i]], "pick_first")
        for i in range(2)
    ]
    workload = Workload(run_id, *channels, rates, stream_channels)
    try:
        phases, last_heal_at = await _inject_under_load(cluster, workload, timing)
        checks = await Checker(cluster, workload, cluster.suite.ledger_path).run(
            timing.drain_s, last_heal_at
        )
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        await workload.close()
        await close_quietly(*channels, *stream_channels)
        await cluster.stop()
    _count_calls(workload, phases)
    not_injected = [p.name for p in phases if p.injected.startswith("NOT INJECTED")]
    checks.append(
        Check(
            "every fault was injected",
            not not_injected,
            f"not injected: {not_injected}" if not_injected else f"{len(phases) - 1} faults",
        )
    )
    passed = all(c.passed for c in checks)
    if not passed:
        print(cluster.log_tails(), file=sys.stderr)
    return {
        "backend": args.backend,
        "short": args.short,
        "timing": asdict(timing),
        "rates": asdict(rates),
        "workdir": str(workdir),
        "phases": [
            {**asdict(p), "error_rate": p.error_rate, "seconds": p.ended_at - p.started_at}
            for p in phases
        ],
        "streams": {name: asdict(s) for name, s in workload.streams.items()},
        "checks": [asdict(c) for c in checks],
        "passed": passed,
    }


async def _inject_under_load(
    cluster: Cluster, workload: Workload, timing: Timing
) -> tuple[list[Phase], float]:
    await workload.setup()
    revision = workload.setup_revision
    for process in cluster.coordinators:
        async with open_channel(process.target) as channel:
            await wait_policy_revision(CoordinatorClient(channel), revision)
    workload.start_streams()
    workload.start_load()
    loop_time = time.monotonic
    phases = [Phase("steady load, no fault", loop_time())]
    await asyncio.sleep(timing.steady_s)
    phases[-1].ended_at = loop_time()
    last_heal_at = loop_time()
    for fault in FAULTS:
        phase = Phase(fault.name, loop_time())
        phases.append(phase)
        if not fault.applies(cluster):
            phase.injected = f"not applicable to the {cluster.suite.backend} backend"
            phase.ended_at = phase.started_at
            continue
        print(f"chaos: {fault.name}", flush=True)
        try:
            phase.injected = await fault.inject(cluster, workload)
        except TaiError as error:
            # The fault needed a call (e.g. the change the relay must not publish) that failed.
            phase.injected = f"NOT INJECTED: {error.code.name} ({error.message})"
            phase.ended_at = loop_time()
            continue
        if fault.lasts:
            await asyncio.sleep(timing.outage_s)
        phase.healed = await fault.heal(cluster, workload)
        last_heal_at = loop_time()
        await asyncio.sleep(timing.settle_s)
        phase.ended_at = loop_time()
    await workload.stop_load()
    # One more policy change after every fault: each StreamPolicies client must see it.
    workload.record_policy(
        await workload.governor.propose(
            policy_type="operational",
            name=f"chaos-{workload.run_id}-final",
            request_id=f"chaos-{workload.run_id}-final",
        )
    )
    return phases, last_heal_at


def _count_calls(workload: Workload, phases: list[Phase]) -> None:
    for phase in phases:
        window = [o for o in workload.outcomes if phase.started_at <= o.at < phase.ended_at]
        phase.calls = len(window)
        phase.errors = dict(
            collections.Counter(f"{o.method} {o.code}" for o in window if o.code != "OK")
        )


def render(report: dict[str, Any]) -> str:
    form = "short" if report["short"] else "full"
    lines = [f"chaos report (backend {report['backend']}, {form})", ""]
    lines.append(f"{'fault':<22} {'window':>7} {'calls':>6} {'errors':>7}  injected / healed")
    for p in report["phases"]:
        errors = sum(p["errors"].values())
        lines.append(
            f"{p['name']:<22} {p['seconds']:>6.1f}s {p['calls']:>6} "
            f"{errors:>4} {p['error_rate']:>5.1%}  {p['injected'] or '-'}"
            + (f"; then {p['healed']}" if p["healed"] else "")
        )
        if p["errors"]:
            lines.append(f"{'':<22} errors: {p['errors']}")
    lines.append("")
    for c in report["checks"]:
        lines.append(f"[{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    lines.append("")
    lines.append("all checks passed" if report["passed"] else "SOME CHECKS FAILED")
    return "\n".join(lines)
