"""Google's Firestore emulator for tests: one JVM per session, on a free loopback port, in its
own process group, waited on until it answers, and always stopped.

Tests share the emulator and keep apart by project id: `new_project()` hands out a fresh one,
and `wipe(project)` deletes its documents afterwards (keeps the emulator's memory flat).
The `firestore_emulator` fixture is imported by the conftest of the suites that use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.processes import free_port

EMULATOR = Path(
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"
)
HOST_VARIABLE = "FIRESTORE_EMULATOR_HOST"
# Loopback calls never go through a proxy the environment may configure.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# A JVM start on 2 shared cores takes 5-20 s.
START_TIMEOUT_S = 60.0


class FirestoreEmulator:
    """A running emulator process; `start` makes one."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.log_path = log_path

    @classmethod
    def start(cls, log_path: Path, timeout: float = START_TIMEOUT_S) -> FirestoreEmulator:
        """Starts the emulator and waits until `GET /` answers `Ok`.

        Raises:
            pytest.fail.Exception: the emulator is not installed, exited, or never answered.
        """
        if not EMULATOR.exists():
            pytest.fail(
                f"the Firestore emulator is not installed at {EMULATOR} (Debian package "
                "google-cloud-cli-firestore-emulator); the Firestore store tests need it",
                pytrace=False,
            )
        port = free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(EMULATOR), "start", "--host=127.0.0.1", f"--port={port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: the launcher script forks the JVM, and both must go.
                start_new_session=True,
            )
        emulator = cls(process, port, log_path)
        try:
            emulator._wait_ready(timeout)
        except BaseException:
            emulator.stop()
            raise
        return emulator

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"the Firestore emulator exited with {self.process.returncode}:\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            # Refused, reset or timed out (all OSError): not up yet.
            with (
                contextlib.suppress(OSError),
                _http.open(f"http://{self.host}/", timeout=2) as reply,
            ):
                if reply.read().strip() == b"Ok":
                    return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the Firestore emulator did not answer within {timeout}s:\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @staticmethod
    def new_project() -> str:
        """A project id no other test uses (ids: 6-30 lowercase letters, digits, hyphens)."""
        return f"tai-test-{uuid.uuid4().hex[:16]}"

    @contextlib.contextmanager
    def environ(self) -> Iterator[None]:
        """Sets FIRESTORE_EMULATOR_HOST while clients are made (they read it when created)."""
        previous = os.environ.get(HOST_VARIABLE)
        os.environ[HOST_VARIABLE] = self.host
        try:
            yield
        finally:
            if previous is None:
                del os.environ[HOST_VARIABLE]
            else:
                os.environ[HOST_VARIABLE] = previous

    def wipe(self, project: str, database: str = "(default)") -> None:
        """Deletes every document of `project` (the emulator's own REST endpoint).

        The emulator answers 409 while a transaction of a killed process still holds locks
        (they lapse after a few seconds), so a conflict is retried for a while.
        """
        url = f"http://{self.host}/emulator/v1/projects/{project}/databases/{database}/documents"
        for attempt in range(30):
            request = urllib.request.Request(url, method="DELETE")
            try:
                with _http.open(request, timeout=10) as reply:
                    reply.read()
                return
            except urllib.error.HTTPError as error:
                if error.code != 409 or attempt == 29:
                    raise
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left of it after a grace period.

        The launcher script may exit before the JVM it started, so the group, not the
        launcher, is waited on.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _group_alive(self.process.pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            deadline = time.monotonic() + 10.0
            while _group_alive(self.process.pid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a reused id owned by someone else
        return False
    return True


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirestoreEmulator]:
    """The session's emulator, started on first use."""
    log_path = tmp_path_factory.mktemp("firestore-emulator") / "emulator.log"
    emulator = FirestoreEmulator.start(log_path)
    try:
        yield emulator
    finally:
        emulator.stop()
