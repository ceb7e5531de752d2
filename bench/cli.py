"""`python -m bench` (what `make bench` runs): starts the suite, measures the empty-handler
baseline, then each scenario, prints the table and writes the JSON results."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, targets
from bench.cpu import IDLE_CORES, CpuSampler, wait_until_idle
from bench.latency import LATENCY, LatencyOptions, LatencyResult
from bench.load import CallSpec, LoadConfig, LoadResult, run_load
from bench.memory import MemoryResult, measure_make_run
from bench.scenarios import EMPTY, THROUGHPUT, Context, Throughput, check_once, request_factory
from bench.simulation import NAME as SIMULATION
from bench.simulation import SimulationResult, run_simulation
from bench.suite import BACKENDS, TOPOLOGIES, Suite, make_suite, tai_overrides
from bench.task_starts import executions_per_task

# `memory` measures `make run` itself, before the suite starts.
ALL = [s.name for s in THROUGHPUT] + list(LATENCY) + [SIMULATION, "memory"]
DEFAULTS: dict[str, Any] = {
    "duration": 10.0,
    "warmup": 5.0,
    "concurrency": 32,
    "tasks": 1000,
    "iterations": 20,
    "simulation_signals": 200_000,
}
SMOKE: dict[str, Any] = {
    "duration": 1.0,
    "warmup": 0.5,
    "concurrency": 4,
    "tasks": 100,
    "iterations": 3,
    "simulation_signals": 2_000,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load the TAI services and print requests/s and latency percentiles, "
        "beside an empty unary gRPC handler loaded the same way.",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="embedded")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="single",
        help="single: every service in one tai-server process (as make run); "
        "services: a process each",
    )
    parser.add_argument(
        "--scenarios",
        default="all",
        help=f"comma-separated, from: {', '.join(ALL)} (default: all)",
    )
    parser.add_argument("--duration", type=float, help="measured seconds (10; smoke: 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (5; smoke: 0.5)")
    parser.add_argument(
        "--concurrency", type=int, help="concurrent callers per process (32; smoke: 4)"
    )
    parser.add_argument("--processes", type=int, default=1, help="client processes (1)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="send rate per second of the fan-out and delivery scenarios "
        "(default: half the peak of the same call measured in this run)",
    )
    parser.add_argument("--tasks", type=int, help="due tasks, dispatch lag (1000; smoke: 100)")
    parser.add_argument(
        "--iterations", type=int, help="enforcements, policy propagation (20; smoke: 3)"
    )
    parser.add_argument(
        "--simulation-signals",
        type=int,
        help="stored signals SimulatePolicy scans (200000; smoke: 2000)",
    )
    parser.add_argument("--subscribers", type=int, default=50, help="fan-out subscribers (50)")
    parser.add_argument(
        "--policy-subscribers", type=int, default=20, help="StreamPolicies subscribers (20)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="then the same task workload on Temporal's dev server and Celery (make bench "
        "PEERS=1), at the steady rate TAI's dispatch_lag offered",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a fast end-to-end check with smaller defaults (explicit options still apply)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=report.RESULTS_DIR,
        help="where the JSON results go (bench/results)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the services' state and logs here (default: a temporary directory)",
    )
    parser.add_argument("--start-timeout", type=float, default=None, help="per process (s)")
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.start_timeout is None:
        args.start_timeout = 120.0 if args.backend == "emulators" else 60.0
    names = ALL if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",")]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {ALL}")
    args.names = [n for n in ALL if n in names]  # always in the documented order
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.processes < 1:
        parser.error("--duration > 0, --warmup >= 0, --concurrency >= 1, --processes >= 1")
    if args.simulation_signals < 1:
        parser.error("--simulation-signals >= 1")
    return args


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _target(ctx: Context, service: str) -> str:
    return {
        "governor": ctx.governor,
        "coordinator": ctx.coordinator,
        "scheduler": ctx.scheduler,
        "empty": ctx.empty,
        "empty_stack": ctx.empty_stack,
        "empty_stack_traced": ctx.empty_stack_traced,
    }[service]


async def _load(
    ctx: Context, scenario: Throughput, config: LoadConfig, name_suffix: str = ""
) -> LoadResult:
    """Loads `scenario`; `name_suffix` keeps the names a second pass creates new."""
    key = scenario.setup.__name__
    if key not in ctx.setups:
        ctx.setups[key] = await scenario.setup(ctx)
    params = ctx.setups[key]
    if "prefix" in params:
        params = {**params, "prefix": params["prefix"] + name_suffix}
    target = _target(ctx, scenario.service)
    await check_once(target, scenario.method, request_factory(scenario.name, params, 999)(0))
    spec = CallSpec(target, scenario.method, scenario.name, params)
    await _settle(ctx)
    sampler = CpuSampler(ctx.server_pids)
    sampling = asyncio.create_task(sampler.run()) if CpuSampler.available() else None
    try:
        result = await asyncio.to_thread(run_load, spec, config)
    finally:
        if sampling is not None:
            sampler.sample()  # the window's end, before the task stops
            sampling.cancel()
    result = replace(
        result,
        server_cpu_s=sampler.between(
            result.measured_from_s, result.measured_from_s + config.duration_s
        ),
    )
    errors = f", errors {result.errors}" if result.errors else ""
    cpu = result.cpu_ms_per_call
    paced = f" at {config.rate_per_s:.0f}/s (open loop)" if config.rate_per_s else ""
    _log(
        f"{scenario.title}{paced}: {result.rps:.0f} rps, p50 {result.latency.p50_ms:.2f} ms, "
        f"p99 {result.latency.p99_ms:.2f} ms"
        + (f", server CPU {cpu:.3f} ms/call" if cpu is not None else "")
        + errors
    )
    return result


async def _settle(ctx: Context) -> None:
    """Lets the suite finish what the previous scenario left behind before the next one."""
    if not CpuSampler.available():
        return
    waited, cores = await wait_until_idle(ctx.server_pids)
    if cores >= IDLE_CORES:
        _log(f"the servers still use {cores:.2f} cores after {waited:.0f} s; measuring anyway")


def _half_load(scenario: Throughput, result: LoadResult) -> LatencyResult:
    """A paced run's figures as a latency row (latency from each call's scheduled time)."""
    assert result.config.rate_per_s is not None
    return LatencyResult(
        f"{scenario.name}_half_load",
        f"{scenario.title}, at half of its peak (open loop)",
        result.latency,
        rate=result.rps,
        rate_unit="calls/s",
        extra={
            "offered_rate_per_s": round(result.config.rate_per_s, 1),
            "errors": result.errors,
            "server_cpu_ms_per_call": result.cpu_ms_per_call,
        },
    )


async def run(
    args: argparse.Namespace, suite: Suite
) -> tuple[
    LoadResult | None, list[report.ThroughputRow], list[LatencyResult], SimulationResult | None
]:
    _log(f"starting the suite ({args.backend}, {args.topology}) in {suite.workdir}")
    await suite.start(args.start_timeout)
    ctx = Context(
        run_id=uuid.uuid4().hex[:6],
        governor=suite.governor_target,
        coordinator=suite.coordinator_target,
        scheduler=suite.scheduler_target,
        empty=suite.empty_target,
        empty_stack=suite.empty_stack_target,
        empty_stack_traced=suite.empty_stack_traced_target,
        server_pids=suite.pids(),
        ledger=suite.ledger_path,
    )
    config = LoadConfig(
        processes=args.processes,
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
    )
    selected = [s for s in THROUGHPUT if s.name in args.names]
    baseline: LoadResult | None = None
    rows: list[report.ThroughputRow] = []
    if selected or SIMULATION in args.names:
        # Right before the scenarios, with the same load: ratios hold on a noisy machine.
        baseline = await _load(ctx, EMPTY, config)
    for scenario in selected:
        result = await _load(ctx, scenario, config)
        ctx.peak_rps[scenario.name] = result.rps
        setup = ctx.setups[scenario.setup.__name__]
        extra = {k: v for k, v in setup.items() if k in ("active_policies",)}
        rows.append(
            report.ThroughputRow(scenario.name, scenario.title, scenario.method, result, extra)
        )

    latency: list[LatencyResult] = []
    if selected and baseline is not None:
        # The same calls at half of the peak each reached above, sent on a fixed schedule.
        peaks = [
            (EMPTY, baseline),
            *((s, row.result) for s, row in zip(selected, rows, strict=True)),
        ]
        for scenario, peak in peaks:
            half = replace(config, rate_per_s=max(1.0, peak.rps / 2))
            latency.append(_half_load(scenario, await _load(ctx, scenario, half, "-half")))

    options = LatencyOptions(
        warmup_s=args.warmup,
        duration_s=args.duration,
        rate=args.rate,
        fanout_subscribers=args.subscribers,
        policy_subscribers=args.policy_subscribers,
        propagation_iterations=args.iterations,
        tasks=args.tasks,
        start_timeout_s=args.start_timeout,
    )
    for name in args.names:
        if name not in LATENCY:
            continue
        await _settle(ctx)
        _log(f"{name} …")
        produced = await LATENCY[name](ctx, suite, options)
        for item in produced:
            _log(
                f"{item.title}: p50 {item.latency.p50_ms:.2f} ms, "
                f"p99 {item.latency.p99_ms:.2f} ms (n={item.latency.count})"
            )
        latency.extend(produced)

    simulation: SimulationResult | None = None
    if SIMULATION in args.names:
        # Last: its stored signals must not weigh on the other scenarios.
        await _settle(ctx)
        simulation = await run_simulation(
            ctx, suite, baseline, signals=args.simulation_signals, log=_log
        )
    return baseline, rows, latency, simulation


def _steady_rate(args: argparse.Namespace, latency: Sequence[LatencyResult]) -> float:
    """The rate TAI's steady dispatch phase offered (the peers get the same), else --rate."""
    for result in latency:
        if result.name == "dispatch_lag_steady_executor":
            return float(result.extra["offered_rate_per_s"])
    return args.rate or 190.0


async def _run_peers(
    args: argparse.Namespace, workdir: Path, latency: Sequence[LatencyResult]
) -> list[Any]:
    from bench.peers import run_peers  # their SDKs are loaded only when asked for

    rate = _steady_rate(args, latency)
    _log(f"peers: Temporal and Celery, {args.tasks} tasks, steady {rate:.0f}/s …")
    return await run_peers(
        workdir, tasks=args.tasks, steady_rate=rate, submit_seconds=args.duration
    )


def _peers_section(
    args: argparse.Namespace,
    peers: Sequence[Any],
    throughput: dict[str, LoadResult],
    latency: Sequence[LatencyResult],
    duplicates: int | None,
) -> tuple[str, str]:
    """The peers' table, with TAI's row from this run's own figures first."""
    from bench.peers import PeerResult, format_table

    by_name = {result.name: result for result in latency}
    tai = PeerResult(
        system="tai (this run)",
        version="",
        tasks=args.tasks,
        steady_rate=_steady_rate(args, latency),
    )
    burst = by_name.get("dispatch_lag_executor")
    if burst is not None:
        tai.burst_all_started_s = burst.latency.max_ms / 1000
        tai.burst_lag_p50_ms = burst.latency.p50_ms
        tai.burst_lag_p99_ms = burst.latency.p99_ms
    steady = by_name.get("dispatch_lag_steady_executor")
    if steady is not None:
        tai.steady_lag_p50_ms = steady.latency.p50_ms
        tai.steady_lag_p99_ms = steady.latency.p99_ms
    if "submit_task" in throughput:
        tai.submit_per_s = throughput["submit_task"].rps
    tai.duplicate_starts = duplicates
    return (
        "Beside the peers — the same task workload (bench/peers; times in ms, but T→all in s)",
        format_table([tai, *peers]),
    )


def _duplicate_starts(ledger: Path) -> int | None:
    """Executor starts beyond one per task in TAI's ledger (as the peers count theirs)."""
    if not ledger.exists():
        return None
    return sum(count - 1 for count in executions_per_task(ledger).values())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    machine = report.machine_info()
    config: dict[str, Any] = {
        "scenarios": args.names,
        "topology": args.topology,
        "processes": args.processes,
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "rate": args.rate,
        "tasks": args.tasks,
        "iterations": args.iterations,
        "subscribers": args.subscribers,
        "policy_subscribers": args.policy_subscribers,
        "simulation_signals": args.simulation_signals,
        "smoke": args.smoke,
        "call_timeout_s": LoadConfig().call_timeout_s,
    }
    memory: MemoryResult | None = None
    peers: list[Any] = []
    duplicates: int | None = None
    simulation: SimulationResult | None = None
    with tempfile.TemporaryDirectory(prefix="tai-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        suite: Suite | None = None
        try:
            if "memory" in args.names:
                # First, with nothing else of the benchmark running.
                _log("memory of make run …")
                memory = asyncio.run(measure_make_run(workdir))
                _log(f"memory of make run: {memory.total_mib:.0f} MiB {memory.processes}")
            suite = make_suite(args.backend, workdir, args.topology)
            baseline, rows, latency, simulation = asyncio.run(run(args, suite))
        except BaseException as error:
            tails = suite.log_tails() if suite is not None else ""
            _log(f"failed: {error!r}\n{tails}")
            return 130 if isinstance(error, KeyboardInterrupt) else 1
        finally:
            if suite is not None:
                suite.stop()
        if args.peers:
            # After TAI's suite has stopped: one system on the machine at a time.
            peers = asyncio.run(_run_peers(args, workdir / "peers", latency))
            if suite is not None:
                duplicates = _duplicate_starts(suite.ledger_path)
    results = {row.name: row.result for row in rows}
    checked = targets.check(baseline, results, latency, memory)
    sections: list[tuple[str, str]] = []
    if simulation is not None:
        sections.append(simulation.section())
    if args.peers:
        sections.append(_peers_section(args, peers, results, latency, duplicates))
    if checked:
        sections.append(
            (
                "Targets — this run's figures against the performance targets",
                report.table(
                    ["figure", "measured", "target", "met"],
                    [[t.figure, t.measured, t.target, "yes" if t.met else "NO"] for t in checked],
                ),
            )
        )
    table = report.render(
        backend=args.backend,
        machine=machine,
        config=config,
        baseline=baseline,
        throughput=rows,
        latency=latency,
        sections=sections,
    )
    print(table, flush=True)
    path = report.write_json(
        results_dir=args.results_dir,
        started=started,
        backend=args.backend,
        machine=machine,
        config=config,
        env=tai_overrides(),
        baseline=baseline,
        throughput=rows,
        latency=latency,
        table=table,
        extra={
            "memory": memory.as_dict() if memory is not None else None,
            "peers": [p.as_dict() for p in peers],
            "targets": [t.as_dict() for t in checked],
            "simulation": simulation.as_dict() if simulation is not None else None,
        },
    )
    print(f"results: {path}", flush=True)
    return 0
