"""The local Envoy gateway for the end-to-end tests: rendered from the same template as
`make run`'s, on free ports, in its own process group, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.processes import ServiceProcess, free_port
from support.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from render_envoy import GatewayConfig, render  # noqa: E402

__all__ = ["Gateway", "GatewayConfig", "GatewaySuite", "envoy_binary"]


def envoy_binary() -> Path:
    import envoy._bin

    return Path(envoy._bin.__file__).parent / "envoy"


class Gateway:
    def __init__(self, config: GatewayConfig, directory: Path) -> None:
        config.listen_port = free_port()
        config.admin_port = free_port()
        config.descriptor = str(ROOT / "build" / "tai_descriptor.binpb")
        self.config = config
        self.config_file = directory / f"envoy-{config.listen_port}.yaml"
        self.log_file = directory / f"envoy-{config.listen_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.config.listen_port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}"

    def start(self, timeout: float = 30.0) -> Gateway:
        self.config_file.write_text(render(self.config))
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(envoy_binary()),
                    "-c",
                    str(self.config_file),
                    "--use-dynamic-base-id",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited:\n{self.log_file.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                ready = f"http://127.0.0.1:{self.config.admin_port}/ready"
                with urllib.request.urlopen(ready, timeout=1) as reply:
                    if reply.status == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("envoy did not become ready")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@dataclass
class GatewaySuite:
    """The services as processes behind a gateway, with the issuer of their tokens."""

    gateway: Gateway
    services: dict[str, ServiceProcess]
    issuer: TokenIssuer
    jwks_file: Path
    directory: Path

    def token(self, role: str, subject: str = "alice") -> str:
        return self.issuer.token(subject, [role])
