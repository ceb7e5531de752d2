"""The performance targets (issue 17), checked against one run's figures: each row says what was
measured, the target, and whether it is met. Rows whose scenario did not run are left out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.latency import LatencyResult
from bench.load import LoadResult
from bench.memory import MemoryResult

READS = ("get_policies", "get_policy")
WRITES = ("propose_policy", "submit_signal", "request_action", "submit_task")


@dataclass(frozen=True)
class Target:
    figure: str
    measured: str
    target: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "measured": self.measured,
            "target": self.target,
            "met": self.met,
        }


def check(
    baseline: LoadResult | None,
    throughput: dict[str, LoadResult],
    latency: Sequence[LatencyResult],
    memory: MemoryResult | None,
) -> list[Target]:
    """The targets this run's figures can say something about."""
    by_name = {result.name: result for result in latency}
    targets: list[Target] = []

    def ratio_rows(names: Sequence[str], figure: str, floor: float) -> None:
        if baseline is None or not baseline.rps:
            return
        ratios = {n: throughput[n].rps / baseline.rps for n in names if n in throughput}
        if ratios:
            measured = ", ".join(f"{n} {r:.3f}" for n, r in ratios.items())
            targets.append(
                Target(figure, measured, f"≥ {floor:.2f}", min(ratios.values()) >= floor)
            )

    ratio_rows(("empty_stack",), "empty handler in TAI's stack: rps ÷ empty", 0.9)
    ratio_rows(READS, "reads: rps ÷ empty", 0.75)
    ratio_rows(WRITES, "durable writes: rps ÷ empty", 0.30)

    half = {
        name.removesuffix("_half_load"): result
        for name, result in by_name.items()
        if name.endswith("_half_load") and name.removesuffix("_half_load") in (*READS, *WRITES)
    }
    if half:
        worst = max(half.items(), key=lambda item: _p99(item[1]))
        targets.append(
            Target(
                "every unary call: p99 at half of its own peak (open loop)",
                f"worst {_p99(worst[1]):.1f} ms ({worst[0]})",
                "< 10 ms",
                all(_p99(r) < 10 for r in half.values()),
            )
        )

    def latency_row(
        name: str, figure: str, limit_ms: float, value: Callable[[LatencyResult], float] = _p99
    ) -> None:
        result = by_name.get(name)
        if result is not None:
            measured = value(result)
            targets.append(
                Target(figure, f"{measured:.1f} ms", f"< {limit_ms:g} ms", measured < limit_ms)
            )

    latency_row("signal_delivery", "signal → action on a stream, p99 (half of the peak)", 20)
    latency_row("stream_fanout", "RequestAction fan-out to the streams, p99 (half of the peak)", 50)
    latency_row("policy_propagation_streams", "policy propagation to every subscriber, p99", 20)
    latency_row(
        "policy_propagation_coordinators", "policy propagation to every Coordinator, p99", 20
    )
    latency_row(
        "dispatch_lag_executor",
        "tasks due at once: the last one started, after their time",
        1000,
        lambda r: r.latency.max_ms,
    )
    latency_row("dispatch_lag_steady_executor", "tasks due one after another: lag p99", 2)
    if memory is not None:
        parts = ", ".join(f"{name} {mib:.0f}" for name, mib in memory.processes.items())
        targets.append(
            Target(
                "memory of `make run`, every process (RSS)",
                f"{memory.total_mib:.0f} MiB ({parts})",
                "≤ 150 MiB",
                memory.total_mib <= 150,
            )
        )
    return targets


def _p99(result: LatencyResult) -> float:
    value = result.latency.p99_ms
    return math.inf if math.isnan(value) else value
