"""What only the SQLite bus promises: OS processes share one file (delivery both ways, recovery
from a consumer killed with SIGKILL), its janitor (abandoned ephemeral subscriptions, retention)
and its error mapping.

The child processes run this file as a script (see `_child_main`): a consumer that reports each
delivery as a JSON line on stdout and stops when its stdin closes, or a publisher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tai_common.core import StartupError, SystemClock, Unavailable
from tai_common.ports import Message, OutgoingMessage, SubscriptionSpec
from tai_common.sqlite import SqliteBus

WAIT_SECONDS = 10.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the child process ---------------------------------------------------------------------


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def _child_consume(args: argparse.Namespace) -> None:
    bus = await SqliteBus.open(
        args.db,
        poll_interval=0.005,
        ephemeral_ttl_seconds=args.ephemeral_ttl,
        single_process=args.single_process,
    )

    async def handler(message: Message) -> None:
        _emit(
            event="message",
            id=message.message_id,
            data=message.data.decode(),
            attempt=message.delivery_attempt,
        )
        if args.hold:
            # Never ack: the parent kills this process while it holds the leases.
            await asyncio.Event().wait()
        await asyncio.sleep(args.work)

    spec = SubscriptionSpec(
        args.topic,
        args.subscription,
        ack_deadline_seconds=args.ack_deadline,
        max_concurrency=args.max_concurrency,
        ephemeral=args.ephemeral,
        start_at_latest=args.ephemeral,
    )
    await bus.subscribe(spec, handler)
    _emit(event="ready")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await bus.close()


async def _child_publish(args: argparse.Namespace) -> None:
    try:
        bus = await SqliteBus.open(args.db)
    except StartupError as error:
        _emit(event="refused", error=str(error))
        return
    ids = await bus.publish_many(
        [OutgoingMessage(args.topic, f"child-{i}".encode()) for i in range(args.count)]
    )
    _emit(event="published", ids=ids)
    await bus.close()


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["consume", "publish"])
    parser.add_argument("db")
    parser.add_argument("topic")
    parser.add_argument("--subscription", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--ephemeral", action="store_true")
    parser.add_argument("--ephemeral-ttl", type=float, default=180.0)
    parser.add_argument("--ack-deadline", type=float, default=30.0)
    parser.add_argument("--max-concurrency", type=int, default=8)
    parser.add_argument("--single-process", action="store_true")
    parser.add_argument("--work", type=float, default=0.0, help="seconds each handler takes")
    args = parser.parse_args(argv)
    asyncio.run(_child_consume(args) if args.mode == "consume" else _child_publish(args))


# --- the parent side -----------------------------------------------------------------------


class Child:
    """A child process in its own process group, read one JSON event at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    async def next_event(self, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"child exited early ({await self.process.wait()})")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        while sum(e["event"] == kind for e in self.events) < count:
            await self.next_event()
        return [e for e in self.events if e["event"] == kind]

    async def stop(self) -> int:
        """Closes stdin (the child's signal to close its bus) and waits for it to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.process.wait()

    async def kill(self) -> int:
        os.killpg(self.process.pid, signal.SIGKILL)
        return await self.process.wait()


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    """Starts children running this file; kills whatever is left at the end of the test."""
    children: list[Child] = []

    async def start(*args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        child = Child(process)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.process.returncode is None:
            await child.kill()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tai.db"


@pytest.fixture
async def bus(db_path: Path) -> AsyncIterator[SqliteBus]:
    bus = await SqliteBus.open(db_path, poll_interval=0.005)
    yield bus
    await bus.close()


class Inbox:
    """A handler collecting deliveries; `wait_until` polls a condition on them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def ids(self) -> set[str]:
        return {m.message_id for m in self.messages}


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Polls: some conditions live in the SQLite file, where no event announces them."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def query(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql, params).fetchall()


# --- the tests -----------------------------------------------------------------------------


async def test_consumer_in_another_process_receives_what_this_process_publishes(
    bus: SqliteBus, db_path: Path, spawn: Callable[..., Any]
) -> None:
    topic = unique("topic")
    child = await spawn("consume", str(db_path), topic, "--subscription", unique("sub"))
    await child.wait_for("ready")

    ids = await bus.publish_many([OutgoingMessage(topic, f"m{i}".encode()) for i in range(20)])

    received = await child.wait_for("message", 20)
    assert {e["id"] for e in received} == set(ids)
    assert {e["attempt"] for e in received} == {1}
    assert await child.stop() == 0


async def test_this_process_receives_what_another_process_publishes(
    bus: SqliteBus, db_path: Path, spawn: Callable[..., Any]
) -> None:
    topic = unique("topic")
    inbox = Inbox()
    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), inbox)

    child = await spawn("publish", str(db_path), topic, "--count", "20")
    (published,) = await child.wait_for("published")

    await wait_until(lambda: inbox.ids() == set(published["ids"]))
    assert await child.stop() == 0


async def test_messages_held_by_a_killed_consumer_go_to_a_survivor(
    bus: SqliteBus, db_path: Path, spawn: Callable[..., Any]
) -> None:
    topic, name = unique("topic"), unique("sub")
    child = await spawn(
        "consume", str(db_path), topic, "--subscription", name,
        "--hold", "--max-concurrency", "4", "--ack-deadline", "5.0",
    )  # fmt: skip
    await child.wait_for("ready")
    ids = await bus.publish_many([OutgoingMessage(topic, f"m{i}".encode()) for i in range(10)])
    held = {e["id"] for e in await child.wait_for("message", 4)}

    survivor = Inbox()
    await bus.subscribe(SubscriptionSpec(topic, name, ack_deadline_seconds=5.0), survivor)
    # The child's leases (5 s, never renewed) keep its messages from the survivor meanwhile.
    await wait_until(lambda: survivor.ids() == set(ids) - held)
    assert await child.kill() == -signal.SIGKILL

    # They come back once those leases lapse.
    await wait_until(lambda: survivor.ids() == set(ids), timeout=20)
    assert {m.delivery_attempt for m in survivor.messages if m.message_id in held} == {2}
    assert len(survivor.messages) == len(ids)


async def test_a_single_process_owner_killed_midway_resumes_from_its_written_cursor(
    db_path: Path, spawn: Callable[..., Any]
) -> None:
    topic, name = unique("topic"), unique("sub")
    publisher = await SqliteBus.open(db_path)
    ids = await publisher.publish_many(
        [OutgoingMessage(topic, f"m{i}".encode()) for i in range(200)]
    )
    await publisher.close()
    args = ["consume", str(db_path), topic, "--subscription", name, "--single-process"]
    slow = ["--max-concurrency", "1", "--work", "0.005"]

    first = await spawn(*args, *slow)
    await first.wait_for("ready")
    # Long enough for several cursor writes (every 0.1 s), then a crash.
    handled_first = {e["id"] for e in await first.wait_for("message", 80)}
    assert await first.kill() == -signal.SIGKILL

    second = await spawn(*args)
    await second.wait_for("ready")
    await second.wait_for("message", 1)
    while {e["id"] for e in second.events if e["event"] == "message"} | handled_first != set(ids):
        await second.next_event()
    handled_second = [e["id"] for e in second.events if e["event"] == "message"]
    # Nothing accepted is lost; what was settled before the last written cursor is not
    # delivered again (a restart is not a replay of the whole log).
    assert len(handled_second) < len(ids)
    assert set(handled_second) >= set(ids) - handled_first
    assert await second.stop() == 0


async def test_a_single_process_owner_and_processes_sharing_the_file_exclude_each_other(
    db_path: Path, spawn: Callable[..., Any]
) -> None:
    owner = await SqliteBus.open(db_path, single_process=True)
    try:
        child = await spawn("publish", str(db_path), unique("topic"), "--count", "1")
        (refused,) = await child.wait_for("refused")
        assert "owned by a single-process TAI server" in refused["error"]
    finally:
        await owner.close()

    sharing = await SqliteBus.open(db_path)
    try:
        with pytest.raises(StartupError, match="in use by other TAI processes"):
            await SqliteBus.open(db_path, single_process=True)
    finally:
        await sharing.close()
    # Once every sharing bus is closed, the file may be owned again.
    await (await SqliteBus.open(db_path, single_process=True)).close()


async def test_ephemeral_subscription_of_a_killed_process_is_removed_by_a_janitor(
    db_path: Path, spawn: Callable[..., Any]
) -> None:
    name = unique("replica")
    child = await spawn(
        "consume", str(db_path), unique("topic"), "--subscription", name,
        "--ephemeral", "--ephemeral-ttl", "0.3",
    )  # fmt: skip
    await child.wait_for("ready")
    assert query(db_path, "SELECT count(*) FROM bus_subscriptions WHERE name = ?", name) == [(1,)]

    await child.kill()
    janitor = await SqliteBus.open(db_path, janitor_interval=0.05)
    try:
        await wait_until(
            lambda: (
                query(db_path, "SELECT count(*) FROM bus_subscriptions WHERE name = ?", name)
                == [(0,)]
            )
        )
    finally:
        await janitor.close()


async def test_ephemeral_subscription_is_deleted_on_close(bus: SqliteBus, db_path: Path) -> None:
    topic, name = unique("topic"), unique("replica")
    inbox = Inbox()
    spec = SubscriptionSpec(topic, name, ephemeral=True, start_at_latest=True)
    subscription = await bus.subscribe(spec, inbox)
    await bus.publish(OutgoingMessage(topic, b"x"))
    await wait_until(lambda: len(inbox.messages) == 1)

    await subscription.close()

    assert query(db_path, "SELECT count(*) FROM bus_subscriptions WHERE name = ?", name) == [(0,)]
    assert query(db_path, "SELECT count(*) FROM bus_deliveries WHERE subscription = ?", name) == [
        (0,)
    ]


class ShiftedClock(SystemClock):
    """The real clock, moved into the future."""

    def __init__(self, seconds: float) -> None:
        self._shift_ns = int(seconds * 1e9)

    def now_ns(self) -> int:
        return super().now_ns() + self._shift_ns


async def test_retention_deletes_old_messages_once_every_subscription_settled_them(
    bus: SqliteBus, db_path: Path
) -> None:
    settled, unread, pinned = unique("settled"), unique("unread"), unique("pinned")
    inbox = Inbox()
    await bus.subscribe(SubscriptionSpec(settled, unique("sub")), inbox)
    # A durable subscription without a running consumer keeps its topic's messages.
    await (await bus.subscribe(SubscriptionSpec(pinned, unique("sub")), Inbox())).close()
    settled_ids = await bus.publish_many([OutgoingMessage(settled, b"s") for _ in range(3)])
    await bus.publish_many([OutgoingMessage(topic, b"x") for topic in (unread, unread, pinned)])
    await wait_until(lambda: inbox.ids() == set(settled_ids))

    def count(topic: str) -> int:
        (row,) = query(db_path, "SELECT count(*) FROM bus_messages WHERE topic = ?", topic)
        return int(row[0])

    week_later = await SqliteBus.open(
        db_path, clock=ShiftedClock(8 * 24 * 3600), janitor_interval=0.05
    )
    try:
        await wait_until(lambda: count(settled) == 0 and count(unread) == 0)
    finally:
        await week_later.close()
    assert count(pinned) == 1


async def test_a_key_busy_with_a_long_backlog_does_not_hold_up_other_keys(bus: SqliteBus) -> None:
    """A claim looks past the messages a busy ordering key holds back (a few hundred here, more
    than a scan's first window) to the next key's."""
    topic = unique("topic")
    await bus.publish_many(
        [OutgoingMessage(topic, f"a{i}".encode(), ordering_key="a") for i in range(300)]
        + [OutgoingMessage(topic, b"b0", ordering_key="b")]
    )
    other_key_handled = asyncio.Event()
    handled: list[bytes] = []

    async def handler(message: Message) -> None:
        handled.append(message.data)
        if message.ordering_key == "b":
            other_key_handled.set()
        elif message.data == b"a0":
            # Key a stays busy until key b's message got through.
            await asyncio.wait_for(other_key_handled.wait(), WAIT_SECONDS)

    await bus.subscribe(SubscriptionSpec(topic, unique("sub"), max_concurrency=2), handler)
    await wait_until(lambda: len(handled) == 301)
    assert handled[:2] == [b"a0", b"b0"]
    assert [d for d in handled if d.startswith(b"a")] == [f"a{i}".encode() for i in range(300)]


async def test_handlers_in_flight_may_still_publish_while_the_bus_closes(db_path: Path) -> None:
    bus = await SqliteBus.open(db_path, poll_interval=0.005)
    topic, replies = unique("topic"), unique("replies")
    started = asyncio.Event()

    async def reply(message: Message) -> None:
        started.set()
        await asyncio.sleep(0.1)
        await bus.publish(OutgoingMessage(replies, message.data))

    await bus.subscribe(SubscriptionSpec(topic, unique("sub")), reply)
    await bus.publish(OutgoingMessage(topic, b"ping"))
    await started.wait()

    await bus.close()

    assert query(db_path, "SELECT data FROM bus_messages WHERE topic = ?", replies) == [(b"ping",)]


async def test_publish_waits_out_a_busy_database_then_reports_unavailable(db_path: Path) -> None:
    bus = await SqliteBus.open(db_path, busy_timeout_ms=50)
    # Another process's writer, holding the write lock longer than busy_timeout.
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, writer.execute, "COMMIT")
        await bus.publish(OutgoingMessage("topic", b"after the lock"))

        writer.execute("BEGIN IMMEDIATE")
        with pytest.raises(Unavailable):
            await bus.publish(OutgoingMessage("topic", b"never"))
        writer.execute("COMMIT")
    finally:
        writer.close()
        await bus.close()
    assert query(db_path, "SELECT data FROM bus_messages") == [(b"after the lock",)]


async def test_publish_on_a_closed_bus_is_unavailable(db_path: Path) -> None:
    bus = await SqliteBus.open(db_path)
    await bus.close()

    with pytest.raises(Unavailable):
        await bus.publish(OutgoingMessage("topic", b"x"))


async def test_opening_a_file_that_is_not_a_database_is_unavailable(db_path: Path) -> None:
    await asyncio.to_thread(db_path.write_bytes, b"not a database" * 100)

    with pytest.raises(Unavailable):
        await SqliteBus.open(db_path)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
