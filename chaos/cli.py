"""`python -m chaos` (what `make chaos` runs): starts the suite, puts it under a steady load,
injects each fault in turn (the fault, its outage, then a settling time with the load still
on), stops the load, checks, and prints what was injected, the error rate in each fault's
window, and what was checked. Exits 1 when a check fails.

By default it does so twice: on the single process (`--topology single`, what `make run`
starts) on the embedded backend, then on the services as separate processes
(`--topology services`) on the mixed backend. `--topology` runs one of them, `--backend` puts
each run on that backend.

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
from bench.suite import BACKENDS, TOPOLOGIES
from chaos.checks import Check, Checker
from chaos.cluster import Cluster, balanced_channel
from chaos.faults import faults_for
from chaos.workload import Rates, Workload, close_quietly


@dataclass(frozen=True)
class Timing:
    steady_s: float
    outage_s: float
    settle_s: float
    drain_s: float


FULL = Timing(steady_s=10, outage_s=10, settle_s=10, drain_s=180)
SHORT = Timing(steady_s=3, outage_s=3, settle_s=5, drain_s=120)
# Each topology's backend unless --backend names one: the single process on the embedded
# default it is made for (one SQLite file it owns, its bus consumers in memory); the separate
# processes on the production bus and cache, where every fault applies.
DEFAULT_BACKENDS = {"single": "embedded", "services": "mixed"}


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
        "--topology",
        choices=(*TOPOLOGIES, "both"),
        default="both",
        help="single (the suite in one tai-server process, killed and restarted whole), "
        "services (a process per replica: a Governor, two Coordinators, two Schedulers) or "
        "both (default: single, then services)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="mixed (SQLite store, Pub/Sub emulator, Redis; every fault), emulators "
        "(Firestore too) or embedded (no Redis or bus faults); default: embedded for single, "
        "mixed for services",
    )
    parser.add_argument("--short", action="store_true", help="3 s outages (CI's form)")
    parser.add_argument(
        "--json",
        type=Path,
        help="also write the report here: {passed, runs: [one report per topology]}",
    )
    parser.add_argument("--signals", type=float, default=Rates.signals, help="signals/s (10)")
    parser.add_argument("--tasks", type=float, default=Rates.tasks, help="tasks/s (5)")
    return parser.parse_args(argv)


def runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(topology, backend) of each run, in order."""
    topologies = TOPOLOGIES if args.topology == "both" else (args.topology,)
    return [(t, args.backend or DEFAULT_BACKENDS[t]) for t in topologies]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reports = asyncio.run(run_all(args))
    passed = all(r["passed"] for r in reports)
    if len(reports) > 1:
        print("\n" + "\n".join(_summary(r) for r in reports))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"passed": passed, "runs": reports}, indent=2))
    return 0 if passed else 1


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each run in turn (one event loop for all, as gRPC's asyncio support prefers)."""
    reports = []
    for topology, backend in runs(args):
        report = await run(args, topology, backend)
        print(render(report), flush=True)
        reports.append(report)
    return reports


def _summary(report: dict[str, Any]) -> str:
    outcome = "all checks passed" if report["passed"] else "SOME CHECKS FAILED"
    return f"{report['topology']} on {report['backend']}: {outcome} ({report['seconds']:.0f} s)"


async def run(args: argparse.Namespace, topology: str, backend: str) -> dict[str, Any]:
    timing = SHORT if args.short else FULL
    rates = Rates(signals=args.signals, tasks=args.tasks)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"tai-chaos-{topology}-"))
    print(f"chaos: topology {topology}, backend {backend}, logs in {workdir}", flush=True)
    began = time.monotonic()
    cluster = await Cluster.start(backend, workdir, topology)
    targets = cluster.targets
    channels = (
        balanced_channel(targets["governor"]),
        balanced_channel(targets["coordinator"]),
        balanced_channel(targets["scheduler"]),
    )
    # Each StreamActions client starts on its own Coordinator replica when there are two (so
    # killing one breaks a stream) and moves to the other when that one is down.
    coordinators = targets["coordinator"]
    stream_channels = [
        balanced_channel(coordinators[i:] + coordinators[:i], "pick_first")
        for i in (0, 1 % len(coordinators))
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
    skipped = [p.name for p in phases if p.injected.startswith("not applicable")]
    injected = len(phases) - 1 - len(not_injected) - len(skipped)
    checks.append(
        Check(
            "every fault was injected",
            not not_injected,
            f"not injected: {not_injected}"
            if not_injected
            else f"{injected} faults"
            + (f" ({', '.join(skipped)}: not applicable to {backend})" if skipped else ""),
        )
    )
    passed = all(c.passed for c in checks)
    if not passed:
        print(cluster.log_tails(), file=sys.stderr)
    return {
        "topology": topology,
        "backend": backend,
        "short": args.short,
        "seconds": time.monotonic() - began,
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
    for target in cluster.targets["coordinator"]:
        async with open_channel(target) as channel:
            await wait_policy_revision(CoordinatorClient(channel), revision)
    workload.start_streams()
    workload.start_load()
    loop_time = time.monotonic
    phases = [Phase("steady load, no fault", loop_time())]
    await asyncio.sleep(timing.steady_s)
    phases[-1].ended_at = loop_time()
    last_heal_at = loop_time()
    for fault in faults_for(cluster.topology):
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
    lines = [
        f"chaos report ({report['topology']} on backend {report['backend']}, {form}, "
        f"{report['seconds']:.0f} s)",
        "",
    ]
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
