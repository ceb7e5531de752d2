"""Server CPU per call: the CPU time (user + system) the suite's processes spent during a load's
measured window, divided by the calls measured in it.

Requests/s moves with everything else on the machine (another tenant's CPU steal, the load
generator's own share of the cores); the CPU a call costs the servers barely does, so it shows
whether a change made the servers do less work when throughput alone is too noisy to tell.
It includes the suite's background work (polling loops, relays, consumers) in the window, so it
means "per call" under a full load (`make bench`'s defaults), not at `--smoke`'s trickle.
Read from /proc (Linux); elsewhere it is not measured.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import Sequence
from pathlib import Path

SAMPLE_EVERY_S = 0.1
# Below this many cores (all server processes together) the suite counts as idle: its polling
# loops and timers use a few per cent of a core.
IDLE_CORES = 0.3
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # utime and stime are the 14th and 15th fields; the command name before them may hold
    # spaces, so count from the closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def total_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of all `pids` so far."""
    return sum(process_cpu_s(pid) for pid in pids)


class CpuSampler:
    """Samples the total CPU time of `pids` every `SAMPLE_EVERY_S` while `run` runs."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._times: list[float] = []
        self._cpu: list[float] = []

    @staticmethod
    def available() -> bool:
        return Path("/proc/self/stat").exists()

    def sample(self) -> None:
        self._times.append(time.time())
        self._cpu.append(total_cpu_s(self._pids))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds spent from `start` to `end` (wall-clock), interpolated between samples;
        None when the samples do not cover the interval."""
        if not self._times or self._times[0] > start or self._times[-1] < end:
            return None
        return self._at(end) - self._at(start)

    def _at(self, when: float) -> float:
        i = bisect.bisect_left(self._times, when)
        if i == 0:
            return self._cpu[0]
        t0, t1 = self._times[i - 1], self._times[i]
        c0, c1 = self._cpu[i - 1], self._cpu[i]
        return c0 + (c1 - c0) * ((when - t0) / (t1 - t0) if t1 > t0 else 1.0)


async def wait_until_idle(
    pids: Sequence[int],
    *,
    max_cores: float = IDLE_CORES,
    window_s: float = 0.5,
    timeout_s: float = 60.0,
) -> tuple[float, float]:
    """Waits until `pids` together use less than `max_cores` over a `window_s` window, or
    `timeout_s` passed; returns (seconds waited, cores used in the last window).

    A scenario leaves work behind it (outbox relays, consumers and deliveries draining what it
    created); measuring the next one meanwhile would charge it that work and its CPU."""
    began = time.monotonic()
    while True:
        start_cpu, start = total_cpu_s(pids), time.monotonic()
        await asyncio.sleep(window_s)
        cores = (total_cpu_s(pids) - start_cpu) / (time.monotonic() - start)
        waited = time.monotonic() - began
        if cores < max_cores or waited >= timeout_s:
            return waited, cores
