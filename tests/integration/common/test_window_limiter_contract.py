"""One contract for every WindowLimiter adapter, on real servers: the store-kept windows on SQLite
and on the Firestore emulator, and the Redis-kept windows on a redis-server and on a Redis
Cluster of three. Every admission runs in a store transaction, as the Coordinator's do."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.firestore_emulator import FirestoreEmulator
from support.redis_server import (
    RedisCluster,
    RedisServer,
    redis_cli,
    running_redis,
    running_redis_cluster,
)
from tai_common.core import ServiceSettings, StartupError
from tai_common.factory import open_window_limiter
from tai_common.gcp import FirestoreStore
from tai_common.messaging import StoreWindowLimiter
from tai_common.messaging.window_limiter import WINDOWS, window_document_id
from tai_common.ports import Admission, AdmissionRequest, DocumentStore, Transaction
from tai_common.redis import RedisWindowLimiter
from tai_common.sqlite import SqliteStore

SECOND_NS = 1_000_000_000
WINDOW_NS = 600 * SECOND_NS  # "at most 3 in 10 minutes"
LIMIT = 3
# An epoch time of today's magnitude, so that every adapter handles real clocks' values.
T0 = 1_700_000_000 * SECOND_NS


@dataclass
class Replica:
    """What one Coordinator replica holds: its store and its limiter."""

    store: DocumentStore
    limiter: StoreWindowLimiter | RedisWindowLimiter

    async def admit(
        self,
        key: str,
        member: str,
        now_ns: int,
        *,
        limit: int = LIMIT,
        window_ns: int = WINDOW_NS,
    ) -> Admission:
        """`admit` in a transaction of its own."""

        async def admit(tx: Transaction) -> Admission:
            return await self.limiter.admit(
                tx, key, member, limit=limit, window_ns=window_ns, now_ns=now_ns
            )

        return await self.store.run_transaction(admit, max_attempts=100)

    async def close(self) -> None:
        await self.limiter.close()
        await self.store.close()


@dataclass
class Backend:
    name: str
    # Whether the windows live in the store, in the callers' transactions.
    in_store: bool
    # Opens another replica on the same windows; the fixture closes it.
    open_replica: Callable[[], Awaitable[Replica]]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    with running_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "firestore", "redis", "redis-cluster"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    sqlite_path = tmp_path / "tai.db"

    async def open_sqlite() -> DocumentStore:
        return await SqliteStore.open(sqlite_path)

    firestore_project = ""
    emulator: FirestoreEmulator | None = None
    open_store = open_sqlite
    if request.param == "firestore":
        # Looked up here, so that a run without Firestore tests never starts the JVM.
        emulator = request.getfixturevalue("firestore_emulator")
        firestore_project = emulator.new_project()

        async def open_firestore() -> DocumentStore:
            with emulator.environ():
                return await FirestoreStore.open(firestore_project)

        open_store = open_firestore

    redis_url = ""
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_server").url
    elif request.param == "redis-cluster":
        redis_url = request.getfixturevalue("redis_cluster").url
    # Each test's windows apart from the other tests' on the module's Redis.
    prefix = f"test-{request.node.name}:"

    opened: list[Replica] = []

    async def open_replica() -> Replica:
        store = await open_store()
        limiter: StoreWindowLimiter | RedisWindowLimiter = (
            RedisWindowLimiter.from_url(redis_url, prefix=prefix)
            if redis_url
            else StoreWindowLimiter()
        )
        opened.append(Replica(store, limiter))
        return opened[-1]

    yield Backend(request.param, not redis_url, open_replica)
    for replica in opened:
        await replica.close()
    if emulator is not None:
        emulator.wipe(firestore_project)


@pytest.fixture
async def replica(backend: Backend) -> Replica:
    return await backend.open_replica()


async def test_admits_up_to_the_limit_then_refuses_until_the_oldest_leaves(
    replica: Replica,
) -> None:
    assert await replica.admit("k", "a", T0) == Admission(True, 1)
    assert await replica.admit("k", "b", T0 + SECOND_NS) == Admission(True, 2)
    assert await replica.admit("k", "c", T0 + 2 * SECOND_NS) == Admission(True, 3)
    assert await replica.admit("k", "d", T0 + 3 * SECOND_NS) == Admission(False, 3, T0 + WINDOW_NS)


async def test_a_slot_frees_when_the_oldest_leaves_the_window(replica: Replica) -> None:
    for offset, member in enumerate("abc"):
        await replica.admit("k", member, T0 + offset * SECOND_NS)
    # One nanosecond before `a` leaves the window: still full.
    assert await replica.admit("k", "d", T0 + WINDOW_NS - 1) == Admission(False, 3, T0 + WINDOW_NS)
    # `a` has left: `d` takes its slot, and the window (b, c, d) is full again until `b` leaves.
    assert await replica.admit("k", "d", T0 + WINDOW_NS) == Admission(True, 3)
    assert await replica.admit("k", "e", T0 + WINDOW_NS) == Admission(
        False, 3, T0 + SECOND_NS + WINDOW_NS
    )
    # Long after: the whole window has emptied.
    assert await replica.admit("k", "f", T0 + 3 * WINDOW_NS) == Admission(True, 1)


async def test_the_same_member_twice_counts_once(replica: Replica) -> None:
    assert await replica.admit("k", "a", T0) == Admission(True, 1)
    assert await replica.admit("k", "a", T0 + SECOND_NS) == Admission(True, 1)
    assert await replica.admit("k", "b", T0 + 2 * SECOND_NS) == Admission(True, 2)
    assert await replica.admit("k", "c", T0 + 3 * SECOND_NS) == Admission(True, 3)
    # A member already counted is admitted again even when the window is full.
    assert await replica.admit("k", "a", T0 + 4 * SECOND_NS) == Admission(True, 3)
    assert not (await replica.admit("k", "d", T0 + 4 * SECOND_NS)).allowed


async def test_keys_are_independent(replica: Replica) -> None:
    for offset, member in enumerate("abc"):
        await replica.admit("policy:p1", member, T0 + offset)
    assert not (await replica.admit("policy:p1", "d", T0 + 3)).allowed
    assert await replica.admit("policy:p2", "d", T0 + 3) == Admission(True, 1)
    assert await replica.admit("service:api", "d", T0 + 3) == Admission(True, 1)


async def test_limits_and_windows_are_the_callers(replica: Replica) -> None:
    """Each admission says its own limit and window: one key can be read with another."""
    assert await replica.admit("k", "a", T0, limit=1, window_ns=SECOND_NS) == Admission(True, 1)
    assert await replica.admit("k", "b", T0 + 1, limit=1, window_ns=SECOND_NS) == Admission(
        False, 1, T0 + SECOND_NS
    )
    assert await replica.admit("k", "b", T0 + 1, limit=2, window_ns=SECOND_NS) == Admission(True, 2)


async def test_admit_all_admits_each_request_in_order(replica: Replica) -> None:
    """Several limits on one event (its policy's, its target service's), and a key named twice:
    a request sees the admissions of the requests before it."""
    requests = [
        AdmissionRequest("policy:p1", "a", limit=1, window_ns=WINDOW_NS),
        AdmissionRequest("service:api", "a", limit=2, window_ns=WINDOW_NS),
        AdmissionRequest("policy:p1", "b", limit=1, window_ns=WINDOW_NS),
        AdmissionRequest("service:api", "b", limit=2, window_ns=WINDOW_NS),
        AdmissionRequest("service:api", "c", limit=2, window_ns=WINDOW_NS),
    ]

    async def admit_all(tx: Transaction) -> list[Admission]:
        return await replica.limiter.admit_all(tx, requests, T0)

    assert await replica.store.run_transaction(admit_all) == [
        Admission(True, 1),
        Admission(True, 1),
        Admission(False, 1, T0 + WINDOW_NS),
        Admission(True, 2),
        Admission(False, 2, T0 + WINDOW_NS),
    ]
    # What it admitted is committed, and counted by later admissions.
    assert await replica.admit("policy:p1", "a", T0 + 1, limit=1) == Admission(True, 1)
    assert await replica.admit("service:api", "d", T0 + 1, limit=2) == Admission(
        False, 2, T0 + WINDOW_NS
    )


async def test_limit_and_window_must_be_positive(replica: Replica) -> None:
    with pytest.raises(ValueError, match="limit"):
        await replica.admit("k", "a", T0, limit=0)
    with pytest.raises(ValueError, match="window_ns"):
        await replica.admit("k", "a", T0, window_ns=0)


class _Rollback(Exception):
    pass


async def test_an_admission_whose_transaction_fails(backend: Backend, replica: Replica) -> None:
    """Kept in the store, the admission rolls back with its transaction; kept in Redis, it holds
    its slot (fewer events, never more) and the transaction run again admits the same member
    without counting it twice."""

    async def admit_then_fail(tx: Transaction) -> None:
        admission = await replica.limiter.admit(
            tx, "k", "a", limit=LIMIT, window_ns=WINDOW_NS, now_ns=T0
        )
        assert admission.allowed
        raise _Rollback

    with pytest.raises(_Rollback):
        await replica.store.run_transaction(admit_then_fail)

    held = 0 if backend.in_store else 1
    assert await replica.admit("k", "b", T0 + 1) == Admission(True, held + 1)
    # Run again (or retried): (b, a) either way.
    assert await replica.admit("k", "a", T0 + 2) == Admission(True, 2)


async def test_the_window_expires_after_its_newest_member(
    backend: Backend, replica: Replica, request: pytest.FixtureRequest
) -> None:
    """A key no longer used goes once its newest member has left the window."""
    await replica.admit("k", "a", T0)
    await replica.admit("k", "b", T0 + SECOND_NS)
    if backend.in_store:
        document = await replica.store.get(WINDOWS, window_document_id("k"))
        assert document is not None
        assert document.data == {
            "key": "k",
            "admitted": [{"member": "a", "at_ns": T0}, {"member": "b", "at_ns": T0 + SECOND_NS}],
            "expires_at_ns": T0 + SECOND_NS + WINDOW_NS,
        }
    else:
        if backend.name == "redis":
            port = request.getfixturevalue("redis_server").port
        else:
            port = request.getfixturevalue("redis_cluster").nodes[0].port
        ttl_ms = int(await _redis_cli(port, "PTTL", f"test-{request.node.name}:k"))
        # The newest member (1 s after the first) leaves the window in 10 minutes.
        assert WINDOW_NS // 1_000_000 - 5_000 < ttl_ms <= WINDOW_NS // 1_000_000


async def _redis_cli(port: int, *args: str) -> str:
    """One command through redis-cli (-c: following a cluster's redirection)."""
    process = await asyncio.create_subprocess_exec(
        redis_cli(), "-c", "-p", str(port), *args, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    return stdout.decode().strip()


@pytest.mark.timeout(180)
async def test_concurrent_admissions_never_exceed_the_limit(backend: Backend) -> None:
    """Matching signals arriving together on two replicas: exactly `limit` are admitted. Each
    admission is a transaction of its own; on Firestore, contended transactions wait seconds for
    their locks, hence fewer of them."""
    concurrent = 8 if backend.name == "firestore" else 30
    replicas = [await backend.open_replica(), await backend.open_replica()]
    admissions = await asyncio.gather(
        *(replicas[n % 2].admit("service:api", f"signal-{n}", T0 + n) for n in range(concurrent))
    )
    assert sum(admission.allowed for admission in admissions) == LIMIT
    assert all(a.counted == LIMIT for a in admissions if not a.allowed)
    # The window holds exactly the admitted members.
    admitted = {f"signal-{n}" for n, a in enumerate(admissions) if a.allowed}
    for member in admitted:
        assert await replicas[0].admit("service:api", member, T0 + concurrent) == Admission(
            True, LIMIT
        )
    assert not (await replicas[1].admit("service:api", "late", T0 + concurrent)).allowed


_ADMIT_FROM_A_PROCESS = """
import asyncio, pathlib, sys
from tai_common.messaging import StoreWindowLimiter
from tai_common.sqlite import SqliteStore

async def main(path, name, ready, go, concurrent, limit, window_ns, now_ns):
    store = await SqliteStore.open(path, busy_timeout_ms=5000)
    limiter = StoreWindowLimiter()

    async def admit(member):
        async def run(tx):
            return await limiter.admit(
                tx, "service:api", member, limit=limit, window_ns=window_ns, now_ns=now_ns
            )
        return await store.run_transaction(run, max_attempts=100)

    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():  # start together, so the processes contend
        await asyncio.sleep(0.005)
    admissions = await asyncio.gather(*(admit(f"{name}-{n}") for n in range(concurrent)))
    print(sum(a.allowed for a in admissions))
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:])))
"""


@pytest.mark.slow
async def test_processes_sharing_a_sqlite_store_never_exceed_the_limit(tmp_path: Path) -> None:
    """The embedded default with several Coordinator processes on one SQLite file."""
    db, go = tmp_path / "tai.db", tmp_path / "go"
    workers, concurrent = 2, 15
    ready = [tmp_path / f"ready-{w}" for w in range(workers)]
    # Created up front, so that the workers do not race to create the tables.
    await (await SqliteStore.open(db)).close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ADMIT_FROM_A_PROCESS,
            str(db),
            f"p{w}",
            str(ready[w]),
            str(go),
            *map(str, (concurrent, LIMIT, WINDOW_NS, T0)),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for w in range(workers)
    ]
    try:
        for _ in range(6000):
            if all(path.exists() for path in ready) or any(p.returncode is not None for p in procs):
                break
            await asyncio.sleep(0.01)
        go.touch()
        admitted = 0
        for proc in procs:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, stderr.decode()
            admitted += int(stdout)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert admitted == LIMIT

    store = await SqliteStore.open(db)
    try:
        document = await store.get(WINDOWS, window_document_id("service:api"))
        assert document is not None
        assert len(document.data["admitted"]) == LIMIT
    finally:
        await store.close()


async def test_the_factory_keeps_windows_in_redis_when_limits_or_the_cache_use_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "tai.db")
    try:
        assert isinstance(
            open_window_limiter(ServiceSettings(cache="memory://"), store), StoreWindowLimiter
        )
        for key, settings in (
            ("via-cache", ServiceSettings(cache=redis_server.url)),
            ("via-limits", ServiceSettings(cache="memory://", rate_limit_store=redis_server.url)),
        ):
            limiter = open_window_limiter(settings, store)
            assert isinstance(limiter, RedisWindowLimiter)
            try:
                assert (await Replica(store, limiter).admit(key, "a", T0)).allowed
            finally:
                await limiter.close()
            # It reached that Redis: the window is there.
            assert redis_server.command("EXISTS", f"tai:wl:{key}").strip() == "1"
        # A URL that cannot work: one line naming the setting, never the password.
        with pytest.raises(StartupError, match=r"^TAI_RATE_LIMIT_STORE: ") as caught:
            open_window_limiter(
                ServiceSettings(rate_limit_store="redis://:s3cret@node-a:notaport/0"), store
            )
        assert "s3cret" not in str(caught.value)
    finally:
        await store.close()
