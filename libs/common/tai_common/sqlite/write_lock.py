"""The write lock of one SQLite file, shared by every process and connection that writes it.

SQLite serialises writers itself, but a writer that finds the lock taken polls for it: the busy
handler sleeps 1, 2, 5, 10, 15, 20, 25… ms between tries. Under steady writes from several
processes (the three services, their relays and bus consumers on one embedded file) a waiting
writer sleeps long after the lock was freed, and often loses it again to the process that held
it: calls waited tens to hundreds of milliseconds for a lock held for one. An `flock` on a file
beside the database waits in the kernel and wakes the next writer as soon as it is released, so
`BEGIN IMMEDIATE` taken under it almost never meets SQLite's busy handler.

Written by hand: the maintained file-lock libraries (filelock, portalocker) poll with sleeps
too, which is what this replaces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from tai_common.core import Unavailable

__all__ = ["SqliteWriteLock"]


class SqliteWriteLock:
    """An asyncio lock for this process's writers on a connection, then an `flock` for the file.

    Each instance opens its own descriptor of `<database>-writelock`, so two instances exclude
    each other even inside one process (flock locks belong to the open file description). Use
    it as `async with lock:`.
    """

    def __init__(self, database: Path) -> None:
        self._local = asyncio.Lock()
        self._fd = os.open(f"{database}-writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._closed = False
        # One thread that may block in flock: only the holder of `_local` ever waits on it.
        self._waiter = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-write-lock"
        )

    async def __aenter__(self) -> None:
        await self._local.acquire()
        if self._closed:
            self._local.release()
            raise Unavailable("sqlite: the database is closed")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except BaseException:
            self._local.release()
            raise
        future = asyncio.get_running_loop().run_in_executor(
            self._waiter, fcntl.flock, self._fd, fcntl.LOCK_EX
        )
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread may still get the file lock: keep this process's lock until it has,
            # then give both back.
            future.add_done_callback(self._abandon)
            raise
        except BaseException:
            self._local.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def _abandon(self, future: asyncio.Future[None]) -> None:
        try:
            if not future.cancelled() and future.exception() is None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def close(self) -> None:
        """Releases the descriptor (and with it any lock still held) and the waiting thread."""
        self._closed = True
        self._waiter.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            os.close(self._fd)
