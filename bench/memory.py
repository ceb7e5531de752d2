"""The memory of `make run`: scripts/run_local.py started as a user starts it (on free ports, a
state folder of its own), and the resident memory (RSS, from /proc) of every process it runs
once the banner is out and the suite has settled: the supervisor, the server, the console and
the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.suite import ROOT, SERVICES, free_port

BANNER_END = b"Ctrl-C stops everything."
SETTLE_S = 3.0
KIB_PER_MIB = 1024


@dataclass
class MemoryResult:
    # Process (as `make run` names it in its output, or "supervisor") -> RSS in MiB.
    processes: dict[str, float] = field(default_factory=dict)

    @property
    def total_mib(self) -> float:
        return sum(self.processes.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": "memory",
            "kind": "memory",
            "rss_mib": self.processes,
            "total_mib": self.total_mib,
        }


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB; 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / KIB_PER_MIB
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        args = (Path(f"/proc/{pid}/cmdline").read_bytes()).split(b"\0")
        if b"tai_server" in args:
            return "tai-server"
        if b"tai_console" in args:
            return "console (tai-console)"
        if any(arg.endswith(b"envoy") for arg in args):
            return "gateway (Envoy)"
        return Path(args[0].decode()).name
    return str(pid)


async def measure_make_run(workdir: Path, timeout: float = 90.0) -> MemoryResult:
    """Starts `make run`'s supervisor, waits for its banner and `SETTLE_S`, reads every
    process's RSS, then stops it with SIGINT (Ctrl-C)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAI_")}
    env |= {
        "TAI_RUN_STATE_DIR": str(workdir / "make-run-state"),
        "TAI_RUN_METRICS_PORT": str(free_port()),
        "TAI_RUN_GATEWAY_PORT": str(free_port()),
        "TAI_RUN_GATEWAY_ADMIN_PORT": str(free_port()),
        **{f"TAI_RUN_{name.upper()}_PORT": str(free_port()) for name in SERVICES},
    }
    log_path = workdir / "make-run.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "run_local.py"),
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + timeout
        while BANNER_END not in log_path.read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make run did not start:\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE_S)
        result = MemoryResult({"supervisor (run_local.py)": rss_mib(process.pid)})
        for pid in children(process.pid):
            result.processes[_name(pid)] = rss_mib(pid)
        return result
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
