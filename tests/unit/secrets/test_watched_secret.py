"""WatchedSecret over a scripted in-memory source (the Vault path is covered end to end in
tests/integration/secrets)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from tai_common.caching import WatchedSecret
from tai_common.core import FailedPrecondition, TaiError, Unavailable
from tai_common.ports import Secret


class ScriptedSource:
    """Answers the current `secret`, or raises `failure` when set."""

    def __init__(self, secret: Secret) -> None:
        self.secret = secret
        self.failure: Exception | None = None
        self.reads = 0

    async def get(self, name: str) -> Secret:
        self.reads += 1
        if self.failure is not None:
            raise self.failure
        return self.secret

    async def close(self) -> None:
        pass


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_start_reads_and_a_change_runs_sync_and_async_callbacks() -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "v1"}))
    watched = WatchedSecret(source, "jwt", refresh_seconds=60)
    assert (await watched.start()).reveal("key") == "v1"
    seen_sync: list[int] = []
    seen_async: list[int] = []

    async def record(secret: Secret) -> None:
        seen_async.append(secret.version)

    watched.on_change(lambda secret: seen_sync.append(secret.version))
    watched.on_change(record)

    assert not await watched.refresh()
    source.secret = Secret.of("jwt", 2, {"key": "v2"})
    assert await watched.refresh()

    assert (seen_sync, seen_async) == ([2], [2])
    assert watched.current.reveal("key") == "v2"
    await watched.close()


async def test_the_periodic_refresh_notices_a_rotation() -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "v1"}))
    changed = asyncio.Event()
    async with WatchedSecret(source, "jwt", refresh_seconds=0.01) as watched:
        watched.on_change(lambda _secret: changed.set())
        source.secret = Secret.of("jwt", 2, {"key": "v2"})
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert watched.current.version == 2


async def test_same_version_different_content_counts_as_a_change() -> None:
    # A KV v2 secret deleted with its metadata and written again starts over at version 1.
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "v1"}))
    watched = WatchedSecret(source, "jwt")
    await watched.start()
    source.secret = Secret.of("jwt", 1, {"key": "recreated"})
    assert await watched.refresh()
    await watched.close()


async def test_a_failed_refresh_keeps_the_last_value_and_logs_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "kept-value-1"}))
    async with WatchedSecret(source, "jwt", refresh_seconds=0.01) as watched:
        source.failure = Unavailable("vault down")
        reads = source.reads
        await eventually(lambda: source.reads >= reads + 3)
        assert watched.current.reveal("key") == "kept-value-1"

        source.failure = None
        source.secret = Secret.of("jwt", 2, {"key": "kept-value-2"})
        await eventually(lambda: watched.current.version == 2)
    assert "refresh failed (vault down); keeping version 1" in caplog.text
    assert "kept-value" not in caplog.text


async def test_a_failing_callback_neither_stops_the_others_nor_logs_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "v1"}))
    watched = WatchedSecret(source, "jwt")
    await watched.start()
    seen: list[int] = []

    def broken(secret: Secret) -> None:
        raise ValueError(f"cannot parse {secret.reveal('key')}")

    watched.on_change(broken)
    watched.on_change(lambda secret: seen.append(secret.version))
    source.secret = Secret.of("jwt", 2, {"key": "parsed-value-2"})
    with caplog.at_level(logging.ERROR):
        assert await watched.refresh()

    assert seen == [2]
    assert "broken failed with ValueError" in caplog.text
    assert "parsed-value-2" not in caplog.text
    await watched.close()


async def test_unregister_and_errors_before_start() -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {"key": "v1"}))
    watched = WatchedSecret(source, "jwt")
    with pytest.raises(FailedPrecondition):
        _ = watched.current
    seen: list[int] = []
    unregister = watched.on_change(lambda secret: seen.append(secret.version))
    await watched.start()
    unregister()
    unregister()  # twice is harmless
    source.secret = Secret.of("jwt", 2, {"key": "v2"})
    await watched.refresh()
    assert seen == []
    await watched.close()
    await watched.close()


async def test_start_fails_when_the_first_read_fails() -> None:
    source = ScriptedSource(Secret.of("jwt", 1, {}))
    source.failure = Unavailable("vault down")
    watched = WatchedSecret(source, "jwt")
    with pytest.raises(TaiError, match="vault down"):
        await watched.start()
    await watched.close()


def test_refresh_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        WatchedSecret(ScriptedSource(Secret.of("jwt", 1, {})), "jwt", refresh_seconds=0)
