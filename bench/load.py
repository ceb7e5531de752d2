"""The closed-loop load generator: `processes` worker processes (multiprocessing, spawn), each
running one asyncio loop with `concurrency` callers that call one unary method back to back on
one channel, for a warm-up and then `duration` seconds.

Requests and responses are raw bytes on the wire (no protobuf parsing of responses on the
client), so the client's cost per call is the same for every scenario and for the empty
baseline. Each worker builds its requests with `bench.scenarios.request_factory`, from the
scenario name and the parameters its setup produced (both picklable).

With `LoadConfig.rate_per_s`, the callers are replaced by an open loop: calls go out on a fixed
schedule at that rate whatever the answers do, and a latency counts from the call's scheduled
time (the "at half of peak load" measurement: a slow answer cannot hold the next send back).

Latencies of the calls *started* inside the measured window are recorded with
`time.perf_counter_ns` into an `array('q')`, sent back to the parent as bytes and merged there;
requests/s = successful calls started in the window / window length.
"""

from __future__ import annotations

import array
import asyncio
import gc
import itertools
import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from typing import Any

import grpc

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CallSpec:
    """What to call: `method` (full path) at `target`, with requests built by
    `bench.scenarios.request_factory(scenario, params, worker)`."""

    target: str
    method: str
    scenario: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadConfig:
    processes: int = 1
    concurrency: int = 32
    warmup_s: float = 5.0
    duration_s: float = 10.0
    # Deadline of one call.
    call_timeout_s: float = 10.0
    # None: closed loop (`concurrency` callers back to back). A rate: open loop, calls sent on a
    # fixed schedule of this many per second (over all processes) whatever the answers do, and
    # each latency counted from the call's scheduled time, so a stall shows in the percentiles
    # instead of slowing the senders down (no coordinated omission).
    rate_per_s: float | None = None
    # Open loop: calls in flight per process at most; a call due beyond it is counted as an
    # error ("SKIPPED_OVER_MAX_IN_FLIGHT") instead of sent.
    max_in_flight: int = 2000


@dataclass(frozen=True)
class Summary:
    """Percentiles (nearest rank) of a set of latencies, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, latencies_ns: Sequence[int]) -> Summary:
        values = sorted(latencies_ns)
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            count=len(values),
            p50_ms=percentile(values, 50) / NS_PER_MS,
            p90_ms=percentile(values, 90) / NS_PER_MS,
            p99_ms=percentile(values, 99) / NS_PER_MS,
            max_ms=values[-1] / NS_PER_MS,
            mean_ms=sum(values) / len(values) / NS_PER_MS,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
        }


def percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil(n * pct / 100), at least 1
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


@dataclass(frozen=True)
class LoadResult:
    config: LoadConfig
    window_s: float
    latency: Summary
    errors: dict[str, int]
    # Wall-clock (epoch seconds) start of the measured window.
    measured_from_s: float = 0.0
    # CPU seconds the servers spent in the measured window (bench/cpu.py); None: not measured.
    server_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.latency.count / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_ms_per_call(self) -> float | None:
        """The servers' CPU per successful call measured, in milliseconds."""
        if self.server_cpu_s is None or not self.latency.count:
            return None
        return 1000 * self.server_cpu_s / self.latency.count

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": self.rps,
            "window_s": self.window_s,
            "latency": self.latency.as_dict(),
            "errors": dict(self.errors),
            "server_cpu_ms_per_call": self.cpu_ms_per_call,
            "processes": self.config.processes,
            "concurrency": self.config.concurrency,
            "warmup_s": self.config.warmup_s,
            "duration_s": self.config.duration_s,
        }


def run_load(spec: CallSpec, config: LoadConfig, ready_timeout_s: float = 60.0) -> LoadResult:
    """Runs the load (blocking: call it from a thread when inside an event loop)."""
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[int | str] = ctx.Queue()
    results: multiprocessing.Queue[tuple[int, bytes, dict[str, int]]] = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(index, spec, config, ready, go, start_at, results),
            name=f"bench-load-{index}",
            daemon=True,
        )
        for index in range(config.processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            message = ready.get(timeout=ready_timeout_s)
            if isinstance(message, str):
                raise RuntimeError(f"a load worker failed to start: {message}")
        # Every worker is connected: all start together, a moment from now.
        start_at.value = time.time() + 0.2
        go.set()
        total_s = 0.2 + config.warmup_s + config.duration_s + config.call_timeout_s + 30.0
        collected: list[tuple[int, bytes, dict[str, int]]] = [
            results.get(timeout=total_s) for _ in workers
        ]
    except queue.Empty:
        raise RuntimeError(f"load workers did not report ({spec.scenario})") from None
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    latencies = array.array("q")
    errors: Counter[str] = Counter()
    for _, raw, worker_errors in collected:
        latencies.frombytes(raw)
        errors.update(worker_errors)
    return LoadResult(
        config,
        config.duration_s,
        Summary.of(latencies),
        dict(errors),
        measured_from_s=start_at.value + config.warmup_s,
    )


def _worker_main(
    index: int,
    spec: CallSpec,
    config: LoadConfig,
    ready: multiprocessing.Queue[int | str],
    go: EventType,
    start_at: Any,
    results: multiprocessing.Queue[tuple[int, bytes, dict[str, int]]],
) -> None:
    announced: list[bool] = []
    try:
        latencies, errors = asyncio.run(
            _worker(index, spec, config, ready, go, start_at, announced)
        )
    except BaseException as error:
        if announced:  # the parent waits for results now
            results.put((index, b"", {f"worker failed: {error!r}": 1}))
        else:
            ready.put(f"worker {index}: {error!r}")
        raise
    results.put((index, latencies.tobytes(), errors))


async def _worker(
    index: int,
    spec: CallSpec,
    config: LoadConfig,
    ready: multiprocessing.Queue[int | str],
    go: EventType,
    start_at: Any,
    announced: list[bool],
) -> tuple[array.array[int], dict[str, int]]:
    from bench.scenarios import request_factory

    make_request = request_factory(spec.scenario, spec.params, index)
    async with grpc.aio.insecure_channel(
        spec.target,
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ],
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        # No (de)serializers: bytes in, bytes out.
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(spec.method)
        # The generator's own full collections would show in every scenario's tail: what exists
        # now lives to the end, so the collector need not walk it (the services do the same).
        gc.collect()
        gc.freeze()
        ready.put(index)
        announced.append(True)
        await asyncio.to_thread(go.wait)

        # Wall-clock start shared by every worker, turned into this process's perf counter.
        offset_ns = int((start_at.value - time.time()) * NS_PER_S)
        begin_ns = time.perf_counter_ns() + offset_ns
        measure_from = begin_ns + int(config.warmup_s * NS_PER_S)
        measure_to = measure_from + int(config.duration_s * NS_PER_S)
        await asyncio.sleep(max(0.0, (begin_ns - time.perf_counter_ns()) / NS_PER_S))

        latencies: array.array[int] = array.array("q")
        errors: Counter[str] = Counter()
        sequence = itertools.count()

        async def one(request: bytes, scheduled: int) -> str:
            """One call, its latency counted from `scheduled`; returns its error code or ""."""
            code = ""
            try:
                await call(request, timeout=config.call_timeout_s)
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            if scheduled >= measure_from:
                if code:
                    errors[code] += 1
                else:
                    latencies.append(time.perf_counter_ns() - scheduled)
            return code

        async def caller() -> None:
            while True:
                request = make_request(next(sequence))
                started = time.perf_counter_ns()
                if started >= measure_to:
                    return
                if await one(request, started):
                    # A failing target must not turn into a busy loop.
                    await asyncio.sleep(0.01)

        async def paced(rate_per_s: float) -> None:
            interval_ns = int(NS_PER_S / rate_per_s)
            # Processes start a fraction of an interval apart, so their sends interleave.
            next_ns = begin_ns + interval_ns * index // config.processes
            in_flight: set[asyncio.Task[Any]] = set()
            while next_ns < measure_to:
                await asyncio.sleep(max(0.0, (next_ns - time.perf_counter_ns()) / NS_PER_S))
                if len(in_flight) >= config.max_in_flight:
                    if next_ns >= measure_from:
                        errors["SKIPPED_OVER_MAX_IN_FLIGHT"] += 1
                else:
                    request = make_request(next(sequence))
                    sent = asyncio.create_task(one(request, next_ns))
                    in_flight.add(sent)
                    sent.add_done_callback(in_flight.discard)
                next_ns += interval_ns
            await asyncio.gather(*in_flight)

        if config.rate_per_s is not None:
            await paced(config.rate_per_s / config.processes)
        else:
            await asyncio.gather(*(caller() for _ in range(config.concurrency)))
    return latencies, dict(errors)
