"""Google's Pub/Sub emulator for the tests: one JVM per session, on a free loopback port, in its
own process group, always killed at the end.

Load it with `pytest_plugins = ["support.pubsub_emulator"]` in the test modules that need it: a
plugin's fixtures are registered once, so every module shares the one session emulator.

The emulator keeps everything in memory and has no reset: tests isolate themselves with a
project id of their own (the emulator accepts any).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.processes import free_port

EMULATOR_BINARY = Path(
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
)
# A JVM: a cold start on a busy machine takes a while.
START_TIMEOUT_SECONDS = 60.0


class PubSubEmulator:
    """The emulator process; `stop()` and `start()` again simulate an outage on the same port.

    Every start begins with no topics or subscriptions.
    """

    def __init__(self, binary: Path, port: int, log_path: Path) -> None:
        self.binary = binary
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The value for `PUBSUB_EMULATOR_HOST`."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Starts the emulator and waits until its HTTP root answers `Ok`."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: the launcher script forks the JVM, and stop() kills both.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Pub/Sub emulator exited with {self.process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the Pub/Sub emulator did not answer within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Kills the whole process group (the launcher and the JVM) and waits for it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as reply:
                return bool(reply.read().decode(errors="replace").strip() == "Ok")
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """The session's Pub/Sub emulator. Tests that stop it must start it again."""
    if not os.access(EMULATOR_BINARY, os.X_OK):
        pytest.fail(
            f"the Pub/Sub emulator is not installed at {EMULATOR_BINARY} "
            "(Debian package google-cloud-cli-pubsub-emulator); the Pub/Sub tests need it",
            pytrace=False,
        )
    emulator = PubSubEmulator(
        EMULATOR_BINARY, free_port(), tmp_path_factory.mktemp("pubsub") / "emulator.log"
    )
    try:
        emulator.start()
        yield emulator
    finally:
        emulator.stop()
