"""A secret kept current in memory: re-read periodically, with callbacks on rotation.

A consumer that must follow rotations live (the JWT key set, a database password) holds a
`WatchedSecret` instead of reading once at start:

    watched = WatchedSecret(source, "jwt-signing", refresh_seconds=30)
    key_set = KeySet.from_secret(await watched.start())
    watched.on_change(key_set.replace)
    ...
    await watched.close()

A failed refresh keeps the last good value (a Vault outage must not take keys away from a
running service) and is retried at the next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from tai_common.core import FailedPrecondition, TaiError
from tai_common.ports import Secret, SecretSource

log = logging.getLogger(__name__)

ChangeCallback = Callable[[Secret], Awaitable[None] | None]


class WatchedSecret:
    """The current version of one secret, refreshed every `refresh_seconds`.

    Args:
        source: Where to read the secret.
        name: The secret's name.
        refresh_seconds: Time between two reads; also the longest a rotation goes unseen.
    """

    def __init__(self, source: SecretSource, name: str, refresh_seconds: float = 60.0) -> None:
        if refresh_seconds <= 0:
            raise ValueError("refresh_seconds must be positive")
        self._source = source
        self._name = name
        self._refresh_seconds = refresh_seconds
        self._current: Secret | None = None
        self._callbacks: list[ChangeCallback] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def current(self) -> Secret:
        """The latest version read.

        Raises:
            FailedPrecondition: `start` has not succeeded yet.
        """
        if self._current is None:
            raise FailedPrecondition(f"secret {self._name!r} is watched but not started")
        return self._current

    async def start(self) -> Secret:
        """Reads the secret (errors propagate: a service should not start without it) and
        starts the periodic refresh. Idempotent."""
        if self._current is None:
            await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name=f"watch-{self._name}")
        return self.current

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Calls `callback(new_secret)` (plain or async) after each change of version or content.

        Returns:
            A function that unregisters the callback.
        """
        self._callbacks.append(callback)

        def unregister() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unregister

    async def refresh(self) -> bool:
        """Reads the secret now and runs the callbacks if it changed.

        Returns:
            Whether it changed (the first read counts as no change: nothing to notify).

        Raises:
            The source's errors (NotFound, PermissionDenied, Unavailable…); the current value is
            kept.
        """
        async with self._lock:
            latest = await self._source.get(self._name)
            previous = self._current
            self._current = latest
            if previous is None or (
                previous.version == latest.version and previous.data == latest.data
            ):
                return False
            log.info(
                "secret %r: version %d replaces version %d",
                self._name,
                latest.version,
                previous.version,
            )
            for callback in list(self._callbacks):
                await self._notify(callback, latest)
            return True

    async def close(self) -> None:
        """Stops the refresh. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> WatchedSecret:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except TaiError as error:
                # TAI's errors are written never to carry a value: the message is safe to log.
                log.warning(
                    "secret %r: refresh failed (%s); keeping version %d",
                    self._name,
                    error.message,
                    self.current.version,
                )
            except Exception as error:
                # A source bug must not end the watch; its message could quote anything, so
                # only the type is logged.
                log.error(
                    "secret %r: refresh failed with %s; keeping version %d",
                    self._name,
                    type(error).__name__,
                    self.current.version,
                )

    async def _notify(self, callback: ChangeCallback, secret: Secret) -> None:
        try:
            result = callback(secret)
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            # One consumer failing must not stop the others from seeing the rotation. The
            # message is left out: a consumer parsing the value may quote it in its error.
            log.error(
                "secret %r: change callback %s failed with %s",
                self._name,
                getattr(callback, "__qualname__", repr(callback)),
                type(error).__name__,
            )
