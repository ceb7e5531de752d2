"""The outbox relay on the Firestore emulator: a relay that dies inside its claim transaction
must not stop other processes from writing their outbox entries.

A Firestore transaction whose process dies keeps its locks until it expires (60 s after its
last request, on the emulator and in production), and a query inside a transaction locks the
whole collection. So the claim reads its candidates by key inside the transaction; this test
kills a relay right after those reads and checks that a new entry commits at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from support.firestore_emulator import FirestoreEmulator
from tai.v1 import events_pb2
from tai_common.bus import events
from tai_common.bus.outbox import OUTBOX, add_event
from tai_common.clock import SystemClock, UuidFactory
from tai_common.store.firestore_store import FirestoreStore
from tai_common.store.port import Transaction

# Runs a relay whose claim transaction stops for good after its reads (the process is then
# SIGKILLed, so its Firestore transaction is never committed nor rolled back). Only the store
# wrapper is made up; the relay, the adapter and the emulator are the real ones.
_DYING_RELAY = textwrap.dedent(
    """
    import asyncio, sys
    from tai_common.bus.outbox import OutboxRelay
    from tai_common.clock import SystemClock
    from tai_common.store.firestore_store import FirestoreStore

    class StopsAfterReads:
        def __init__(self, tx):
            self._tx = tx

        async def _stop(self, result):
            print("READ", flush=True)
            await asyncio.sleep(3600)
            return result

        async def get(self, *args):
            return await self._stop(await self._tx.get(*args))

        async def get_many(self, *args):
            return await self._stop(await self._tx.get_many(*args))

        async def query(self, *args):
            return await self._stop(await self._tx.query(*args))

    class Store:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        async def run_transaction(self, fn, **kwargs):
            return await self._inner.run_transaction(
                lambda tx: fn(StopsAfterReads(tx)), **kwargs
            )

    async def main():
        store = await FirestoreStore.open(sys.argv[1])
        relay = OutboxRelay(Store(store), bus=None, clock=SystemClock(), owner="dying")
        await relay.drain()

    asyncio.run(main())
    """
)


@pytest.fixture
async def unwiped_project(firestore_emulator: FirestoreEmulator) -> str:
    """A project of this test's own that is not wiped afterwards: wiping would wait out the
    dead transaction's locks (a minute), and nothing else uses the project."""
    return firestore_emulator.new_project()


async def test_a_relay_killed_inside_its_claim_does_not_block_other_writers(
    unwiped_project: str, firestore_emulator: FirestoreEmulator
) -> None:
    with firestore_emulator.environ():
        firestore_store = await FirestoreStore.open(unwiped_project)
    try:
        await _kill_a_relay_inside_its_claim_then_write(
            firestore_store, unwiped_project, firestore_emulator.host
        )
    finally:
        await firestore_store.close()


async def _kill_a_relay_inside_its_claim_then_write(
    firestore_store: FirestoreStore, project: str, emulator_host: str
) -> None:
    factory = events.EventFactory("test", SystemClock(), UuidFactory())

    async def write_entry(tx: Transaction) -> None:
        event = factory.build(
            event_type="policy.proposed",
            aggregate_type="policy",
            aggregate_id="p",
            aggregate_version=1,
            payload=events_pb2.PolicyEvent(),
        )
        add_event(tx, "tai-test", event)

    await firestore_store.run_transaction(write_entry)
    env = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host}
    relay = subprocess.Popen(  # noqa: ASYNC220 (a child to kill, not awaited)
        [sys.executable, "-c", _DYING_RELAY, project],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(relay.stdout.readline), 30)
        assert line.strip() == "READ", f"the relay did not reach its claim: {line!r}"
    finally:
        relay.send_signal(signal.SIGKILL)
        relay.wait()

    # Another process's change and its outbox entry, while the dead relay's locks live on. A
    # blocked writer would wait out the lock's 60 s; 15 s tells the two apart on a busy machine.
    await asyncio.wait_for(firestore_store.run_transaction(write_entry), 15)
    assert await firestore_store.count(OUTBOX) == 2
