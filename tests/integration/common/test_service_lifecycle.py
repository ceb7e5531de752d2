"""A service process from start to stop, as its entry point (`python -m tai_…`) runs it: a stop
signal is obeyed in every phase, health says SERVING only once everything the process serves
is up, and a setting that cannot work stops it with one line instead of a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.processes import free_port, health_status
from support.tokens import ISSUER, TokenIssuer

GRACE_SECONDS = 3.0


@dataclass
class Started:
    """A service process the test started, with the ports it was given."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Starts `python -m <module>` with TAI_* settings, without waiting for it; kills what is
    left at the end."""
    started: list[Started] = []

    def start(module: str, **env: str) -> Started:
        grpc_port, metrics_port = free_port(), free_port()
        settings = {
            "TAI_GRPC_PORT": str(grpc_port),
            "TAI_METRICS_PORT": str(metrics_port),
            "TAI_AUTH": "off",
            "TAI_STORE": f"sqlite:///{tmp_path}/tai.db",
            "TAI_BUS": f"sqlite:///{tmp_path}/tai.db",
            "TAI_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            "TAI_LOG_FORMAT": "text",
            **env,
        }
        log_path = tmp_path / f"{module}-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**os.environ, **settings},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Started(process, grpc_port, metrics_port, log_path))
        return started[-1]

    yield start
    for each in started:
        if each.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(each.process.pid, signal.SIGKILL)
            each.process.wait(10)
        print(f"--- {each.log_path.name} ---\n{each.log()[-3000:]}", file=sys.stderr)


async def wait_health(started: Started, wanted: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await health_status(started.target) != wanted:
        if started.process.poll() is not None:
            raise AssertionError(f"exited with {started.process.returncode}:\n{started.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"health never {wanted} within {timeout}s:\n{started.log()}")
        await asyncio.sleep(0.05)


def scrape(port: int) -> tuple[int | None, str]:
    """/metrics: its HTTP status and body, or None and why it could not be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except (OSError, urllib.error.URLError) as error:
        return None, repr(error)


async def exit_time_after(started: Started, signum: signal.Signals) -> float:
    """Sends `signum` and returns how long the process took to exit (inf if it did not)."""
    sent = time.monotonic()
    started.process.send_signal(signum)
    try:
        await asyncio.to_thread(started.process.wait, GRACE_SECONDS + 10)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - sent


def coordinator_without_governor(spawn: Callable[..., Started]) -> Started:
    """A Coordinator that cannot finish starting: its Governor's port is closed, so its
    policy listing keeps failing and it stays NOT_SERVING."""
    return spawn("tai_coordinator", TAI_GOVERNOR_TARGET=f"127.0.0.1:{free_port()}")


NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_service_still_starting_stops_within_the_grace_period(
    spawn: Callable[..., Started], signum: signal.Signals
) -> None:
    coordinator = coordinator_without_governor(spawn)
    await wait_health(coordinator, NOT_SERVING)
    # Several listing attempts, so the signal lands while it waits for the Governor.
    await asyncio.sleep(1.5)

    took = await exit_time_after(coordinator, signum)

    assert took < GRACE_SECONDS, f"took {took:.1f}s:\n{coordinator.log()}"
    assert coordinator.process.returncode == 0
    assert "stopped" in coordinator.log()


async def test_a_serving_service_stops_within_the_grace_period(
    spawn: Callable[..., Started],
) -> None:
    governor = spawn("tai_governor")
    await wait_health(governor, SERVING)

    took = await exit_time_after(governor, signal.SIGTERM)

    assert took < GRACE_SECONDS, f"took {took:.1f}s:\n{governor.log()}"
    assert governor.process.returncode == 0


async def test_metrics_answer_while_a_service_is_still_starting(
    spawn: Callable[..., Started],
) -> None:
    """The metrics endpoint is up before the gRPC port opens: a scrape during a long start
    sees the process, with tai_ready 0."""
    coordinator = coordinator_without_governor(spawn)
    await wait_health(coordinator, NOT_SERVING)

    status, body = await asyncio.to_thread(scrape, coordinator.metrics_port)
    assert status == 200, body
    assert "\ntai_ready 0.0\n" in body


async def watch_until_serving(service: Started, timeout: float = 30.0) -> None:
    """Returns the moment health reports SERVING: a Watch gets the update as it is set, not
    at the next poll."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):  # not listening yet
                async for reply in stub.Watch(health_pb2.HealthCheckRequest()):
                    if reply.status == SERVING:
                        return
            assert service.process.poll() is None, service.log()
            assert time.monotonic() < deadline, service.log()
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("module", ["tai_governor", "tai_scheduler"])
async def test_metrics_answer_the_moment_health_says_serving(
    spawn: Callable[..., Started], module: str
) -> None:
    for _ in range(3):
        service = spawn(module)
        await watch_until_serving(service)
        status, body = await asyncio.to_thread(scrape, service.metrics_port)
        assert status == 200, body
        service.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(service.process.wait, 20)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"TAI_STORE": "mongodb://127.0.0.1/tai"}, "TAI_STORE"),
        ({"TAI_AUTH": "jwt"}, "TAI_JWT_JWKS_FILE"),
        ({"TAI_SHUTDOWN_GRACE_SECONDS": "soon"}, "TAI_SHUTDOWN_GRACE_SECONDS"),
        ({"TAI_AUTH": "maybe"}, "TAI_AUTH"),
    ],
    ids=["unsupported-store", "auth-without-keys", "not-a-number", "not-a-choice"],
)
async def test_a_setting_that_cannot_work_stops_the_service_with_one_line(
    spawn: Callable[..., Started], setting: dict[str, str], named: str
) -> None:
    governor = spawn("tai_governor", **setting)

    code = await asyncio.to_thread(governor.process.wait, 30)

    output = governor.log()
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("governor: ")]
    assert len(lines) == 1, output
    assert named in lines[0]


async def test_a_port_in_use_stops_the_service_with_one_line(
    spawn: Callable[..., Started],
) -> None:
    first = spawn("tai_governor")
    await wait_health(first, SERVING)
    second = spawn("tai_governor", TAI_METRICS_PORT=str(first.metrics_port))

    code = await asyncio.to_thread(second.process.wait, 30)

    output = second.log()
    assert code == 2, output
    assert "Traceback" not in output
    assert f"TAI_METRICS_PORT: 127.0.0.1:{first.metrics_port} is in use" in output


async def test_a_grpc_port_in_use_stops_the_service_with_one_line(
    spawn: Callable[..., Started],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        governor = spawn("tai_governor", TAI_GRPC_PORT=str(port))

        code = await asyncio.to_thread(governor.process.wait, 30)

    output = governor.log()
    assert code == 2, output
    assert "Traceback" not in output
    assert f"TAI_GRPC_PORT: 127.0.0.1:{port} is in use" in output


async def test_a_coordinator_whose_credentials_the_governor_refuses_says_so_and_still_stops(
    spawn: Callable[..., Started], tmp_path: Path
) -> None:
    jwks = TokenIssuer().write_jwks(tmp_path / "jwks.json")
    auth = {"TAI_AUTH": "jwt", "TAI_JWT_JWKS_FILE": str(jwks), "TAI_JWT_ISSUER": ISSUER}
    governor = spawn("tai_governor", **auth)
    await wait_health(governor, SERVING)
    # No TAI_SERVICE_TOKEN: its policy listing is refused.
    coordinator = spawn("tai_coordinator", TAI_GOVERNOR_TARGET=governor.target, **auth)
    await wait_health(coordinator, NOT_SERVING)
    deadline = time.monotonic() + 20
    while "refuses this service's policy listing" not in coordinator.log():
        assert time.monotonic() < deadline, coordinator.log()
        await asyncio.sleep(0.1)
    assert "UNAUTHENTICATED" in coordinator.log()
    assert "TAI_SERVICE_TOKEN" in coordinator.log()

    took = await exit_time_after(coordinator, signal.SIGTERM)

    assert took < GRACE_SECONDS, f"took {took:.1f}s:\n{coordinator.log()}"
