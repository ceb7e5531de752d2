"""`make run` (scripts/run_local.py) as a user runs it: a subprocess on free ports with its own
state folder, so it never meets a user's `make run`. With authentication it prints tokens that
drive the whole loop; Ctrl-C stops it in any phase; killing it leaves no service behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from support.processes import free_port, health_status
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import (
    ChannelOptions,
    CoordinatorClient,
    GovernorClient,
    PermissionDenied,
    SchedulerClient,
    Unauthenticated,
    open_channel,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "run_local.py"
GRACE_SECONDS = 10.0
SERVICES = ("governor", "coordinator", "scheduler")

pytestmark = pytest.mark.slow


class RunLocal:
    """scripts/run_local.py on free ports, its output in a file."""

    ports: dict[str, int]
    metrics_port: int
    console_port: int
    gateway_port: int
    gateway_admin_port: int

    def __init__(
        self, directory: Path, *args: str, same_ports_as: RunLocal | None = None, **env: str
    ) -> None:
        if same_ports_as is not None:
            self.ports = same_ports_as.ports
            self.metrics_port = same_ports_as.metrics_port
            self.console_port = same_ports_as.console_port
            self.gateway_port = same_ports_as.gateway_port
            self.gateway_admin_port = same_ports_as.gateway_admin_port
        else:
            self.ports = {name: free_port() for name in SERVICES}
            self.metrics_port = free_port()
            self.console_port = free_port()
            self.gateway_port, self.gateway_admin_port = free_port(), free_port()
        self.output_path = directory / f"run_local-{time.monotonic_ns()}.out"
        self.seen_children: set[int] = set()
        settings = {
            "TAI_RUN_STATE_DIR": str(directory / "state"),
            "TAI_RUN_GATEWAY_PORT": str(self.gateway_port),
            "TAI_RUN_GATEWAY_ADMIN_PORT": str(self.gateway_admin_port),
            "TAI_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            **{f"TAI_RUN_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
            "TAI_RUN_METRICS_PORT": str(self.metrics_port),
            "TAI_RUN_CONSOLE_PORT": str(self.console_port),
            **env,
        }
        # The user's shell may carry settings of its own; these runs start from the defaults.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TAI_")}
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPT), *args],
                env={**inherited, **settings},
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    @property
    def all_ports(self) -> list[int]:
        return [
            *self.ports.values(),
            self.metrics_port,
            self.console_port,
            self.gateway_port,
            self.gateway_admin_port,
        ]

    async def wait_banner(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops everything." not in (output := self.output()):
            assert self.process.poll() is None, f"run_local exited:\n{output}"
            assert time.monotonic() < deadline, f"no banner after {timeout}s:\n{output}"
            await asyncio.sleep(0.2)
        return output

    def children(self) -> list[int]:
        """The processes it started (the server, the console and the gateway)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _stat(int(entry.name))[1] == self.process.pid:
                found.append(int(entry.name))
        self.seen_children.update(found)
        return found

    async def exit_time_after(self, signum: signal.Signals) -> float:
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            await asyncio.to_thread(self.process.wait, GRACE_SECONDS + 20)
        except subprocess.TimeoutExpired:
            return float("inf")
        return time.monotonic() - sent

    def kill_everything(self) -> None:
        """Cleanup, whatever the test left: the script and every child it was seen with."""
        if self.process.poll() is None:
            self.children()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(10)
        for pid in self.seen_children:
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process; ("", 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no port: it only waits to be reaped)."""
    return _stat(pid)[0] not in ("", "Z")


def port_free(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


@pytest.fixture
def run_local(tmp_path: Path) -> Iterator[type[RunLocal]]:
    """Makes RunLocal instances (`run_local(tmp_path, "--auth")`), all killed at the end."""
    made: list[RunLocal] = []

    class Tracked(RunLocal):
        def __init__(
            self, directory: Path, *args: str, same_ports_as: RunLocal | None = None, **env: str
        ) -> None:
            super().__init__(directory, *args, same_ports_as=same_ports_as, **env)
            made.append(self)

    yield Tracked
    for each in made:
        each.kill_everything()
        print(f"--- {each.output_path.name} ---\n{each.output()[-5000:]}", file=sys.stderr)


def printed_tokens(output: str) -> dict[str, str]:
    """The role -> token pairs of the banner's export lines."""
    return {
        role.lower(): token
        for role, token in re.findall(r"^\s*export TAI_([A-Z]+)_TOKEN=(\S+)$", output, re.M)
    }


def gateway_get(url: str, token: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_make_run_with_auth_prints_tokens_that_drive_the_loop(
    run_local: type[RunLocal], tmp_path: Path
) -> None:
    suite = run_local(tmp_path, "--auth")
    tokens = printed_tokens(await suite.wait_banner())
    assert set(tokens) == {"admin", "operator", "viewer"}

    operator = ChannelOptions(bearer_token=tokens["operator"])
    admin = ChannelOptions(bearer_token=tokens["admin"])
    viewer = ChannelOptions(bearer_token=tokens["viewer"])
    async with (
        open_channel(suite.target("governor"), operator) as governor_as_operator,
        open_channel(suite.target("governor"), admin) as governor_as_admin,
        open_channel(suite.target("governor"), viewer) as governor_as_viewer,
        open_channel(suite.target("governor")) as governor_anonymous,
        open_channel(suite.target("coordinator"), operator) as coordinator_as_operator,
        open_channel(suite.target("scheduler"), operator) as scheduler_as_operator,
    ):
        receipt = await GovernorClient(governor_as_operator).propose(
            policy_type="operational",
            name="scale-api",
            condition='signal.type == "alert" && signal.priority >= 8',
            action=governor_pb2.ActionTemplate(
                action_type="scale", target_service="api", parameters={"replicas": "+2"}
            ),
        )
        policy_id = receipt.resource_id
        await GovernorClient(governor_as_admin).enforce(policy_id)

        coordinator = CoordinatorClient(coordinator_as_operator)
        stream = coordinator.stream_actions("api")
        # The Coordinator learns of the enforcement through the bus: signal until it acts.
        action_ids: list[str] = []
        deadline = time.monotonic() + 30
        while not action_ids:
            assert time.monotonic() < deadline, "no action for the signal"
            signal_receipt = await coordinator.submit_signal(signal_type="alert", priority=9)
            action_ids = list(signal_receipt.action_ids)
            if not action_ids:
                await asyncio.sleep(0.2)
        action = await asyncio.wait_for(stream.read(), timeout=30)
        assert isinstance(action, coordinator_pb2.Action)
        assert (action.id, action.policy_id) == (action_ids[0], policy_id)
        assert dict(action.parameters) == {"replicas": "+2"}

        # The Scheduler's executor calls the Coordinator with the Scheduler's own token.
        await SchedulerClient(scheduler_as_operator).submit(
            task_type="request_action",
            parameters={"action_type": "restart", "target_service": "api", "action_id": "r-1"},
        )
        action = await asyncio.wait_for(stream.read(), timeout=30)
        stream.cancel()
        assert isinstance(action, coordinator_pb2.Action)
        assert (action.id, action.action_type) == ("r-1", "restart")

        with pytest.raises(PermissionDenied) as refused:
            await GovernorClient(governor_as_viewer).propose(
                policy_type="operational", name="not-mine", condition='signal.type == "x"'
            )
        assert "operator" in refused.value.message

        with pytest.raises(Unauthenticated):
            await GovernorClient(governor_anonymous).get(policy_id)

    # The gateway checks the same tokens (Envoy's jwt_authn, with the printed JWKS).
    url = f"http://127.0.0.1:{suite.gateway_port}/v1/policies"
    status, body = await asyncio.to_thread(gateway_get, url, tokens["viewer"])
    assert status == 200, body
    assert policy_id in [p["id"] for p in json.loads(body)["policies"]]
    status, body = await asyncio.to_thread(gateway_get, url)
    assert status == 401, body
    # The console loads without a token (it asks for one), and knows that it must.
    console = f"http://127.0.0.1:{suite.gateway_port}/"
    assert f"Console: {console}" in suite.output()
    status, body = await asyncio.to_thread(gateway_get, console)
    assert status == 200, body
    assert "<html" in body.lower()
    status, body = await asyncio.to_thread(gateway_get, f"{console}config.json")
    assert (status, json.loads(body)) == (
        200,
        {"auth": "jwt", "namespaces_claim": "tai_namespaces"},
    )

    assert await suite.exit_time_after(signal.SIGINT) < GRACE_SECONDS
    assert suite.process.returncode == 0

    # `TAI_AUTH=jwt make run` does the same, with the key the first run made: the tokens it
    # printed still work.
    again = run_local(tmp_path, same_ports_as=suite, TAI_AUTH="jwt")
    assert set(printed_tokens(await again.wait_banner())) == {"admin", "operator", "viewer"}
    async with open_channel(again.target("governor"), viewer) as governor_as_viewer:
        policy = await GovernorClient(governor_as_viewer).get(policy_id)
    assert policy.state == governor_pb2.POLICY_STATE_ENFORCED


async def test_ctrl_c_while_a_service_waits_to_start_stops_everything_in_the_grace_period(
    run_local: type[RunLocal], tmp_path: Path
) -> None:
    # The Coordinator's Governor is elsewhere (a closed port): it never becomes ready.
    suite = run_local(tmp_path, TAI_GOVERNOR_TARGET=f"127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 60
    while (
        await health_status(suite.target("coordinator"))
        != health_pb2.HealthCheckResponse.NOT_SERVING
    ):
        assert suite.process.poll() is None, suite.output()
        assert time.monotonic() < deadline, suite.output()
        await asyncio.sleep(0.1)
    children = suite.children()
    # The server (every service), the console, the gateway, and the health check waiting.
    assert len(children) == 4

    took = await suite.exit_time_after(signal.SIGINT)

    assert took < GRACE_SECONDS, f"took {took:.1f}s"
    assert [pid for pid in children if running(pid)] == []
    assert "TAI is running" not in suite.output()


async def test_killing_make_run_leaves_no_process_holding_its_ports(
    run_local: type[RunLocal], tmp_path: Path
) -> None:
    suite = run_local(tmp_path)
    await suite.wait_banner()
    children = suite.children()
    assert len(children) == 3

    suite.process.kill()
    suite.process.wait(10)

    # Gone within a few seconds, their ports with them (a process shown as a zombie may still
    # be closing its files for a moment, so the ports are polled too).
    deadline = time.monotonic() + 10
    while True:
        left = [pid for pid in children if running(pid)]
        held = [port for port in suite.all_ports if not port_free(port)]
        if not left and not held:
            break
        assert time.monotonic() < deadline, f"still running: {left}; ports held: {held}"
        await asyncio.sleep(0.1)

    # ...so the next run starts on the same ports.
    again = run_local(tmp_path, same_ports_as=suite)
    await again.wait_banner()
