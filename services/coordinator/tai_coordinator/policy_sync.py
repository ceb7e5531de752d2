"""Keeps each namespace's PolicyBook current: policy events from the bus as they come (each
handled inside its namespace), and a full listing from the Governor when the namespace is first
seen (the default at start; another at its first signal or policy event), every few minutes,
and whenever the book stays behind the Governor's revision (an event was missed: lost in an
outage, or published while this replica was not subscribed). Each listing carries the
namespace's revision; asking every `check_seconds` costs one small call per namespace. Calls made
inside a namespace carry it, so the Governor answers with that namespace's policies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from tai.v1 import events_pb2, governor_pb2
from tai_client import (
    ChannelOptions,
    GovernorClient,
    PermissionDenied,
    TaiError,
    Unauthenticated,
    open_channel,
)
from tai_client import NotFound as ClientNotFound
from tai_common.core import NotFound, Unavailable
from tai_common.core.namespace import current_namespace, in_namespace
from tai_common.messaging import events
from tai_common.namespacing import NamespaceDirectory

from tai_coordinator.policy_book import LIVE_STATES, PolicyBook, PolicyBooks

log = logging.getLogger(__name__)


@dataclass
class _Resync:
    """When a namespace's book is next listed in full, and the Governor revision it must have
    reached by the next check."""

    next_full: float
    target: int = 0


class PolicySync:
    def __init__(
        self,
        books: PolicyBooks,
        governor_target: str,
        channel_options: ChannelOptions,
        resync_seconds: float = 300.0,
        retry_seconds: float = 1.0,
        check_seconds: float = 2.0,
    ) -> None:
        self._books = books
        self._target = governor_target
        self._options = channel_options
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds
        self._check_seconds = check_seconds
        self._resyncs: dict[str, _Resync] = {}
        # One listing at a time per namespace: a burst of first signals waits for one load.
        self._loading: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_policy_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to `tai-policies` (run inside the
        event's namespace). A namespace seen for the first time gets its book loaded."""
        payload = events.unpack(event, events_pb2.PolicyEvent)
        namespace = current_namespace()
        book = self._books.of(namespace)
        book.apply(payload.policy)
        if not book.loaded:
            # Not awaited: the bus handler must not wait on the Governor.
            task = asyncio.create_task(self._load_quietly(namespace), name=f"policies-{namespace}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def book(self) -> PolicyBook:
        """The current namespace's book, listed from the Governor first when this replica has
        not loaded it yet; `Unavailable` when the Governor cannot answer."""
        namespace = current_namespace()
        book = self._books.of(namespace)
        if book.loaded:
            return book
        try:
            await self._load(namespace, force=False)
        except TaiError as error:
            self._log_refusal(error)
            raise Unavailable(
                f"the Coordinator has not loaded namespace {namespace!r}'s policies yet; "
                "retry shortly"
            ) from error
        return book

    async def load(self) -> None:
        """Reads every live policy of the current namespace from the Governor (the default's
        at start); retries until it answers (cancel it to give up, e.g. when the service is
        asked to stop while starting)."""
        namespace = current_namespace()
        attempt = 0
        while True:
            try:
                await self._load(namespace, force=True)
                log.info(
                    "loaded %d active policies of namespace %s from the Governor",
                    len(self._books.of(namespace)),
                    namespace,
                )
                return
            except TaiError as error:
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    self._log_refusal(error)
                await asyncio.sleep(self._retry_seconds)

    async def close(self) -> None:
        """Cancels the loads started by policy events."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _load_quietly(self, namespace: str) -> None:
        # Logged by `book`; the namespace's next signal tries again.
        with in_namespace(namespace), contextlib.suppress(Unavailable):
            await self.book()

    def _log_refusal(self, error: TaiError) -> None:
        code = error.code
        if isinstance(error, Unauthenticated | PermissionDenied):
            # Not a Governor still starting: this service's credentials are refused, and
            # retrying alone will not fix it.
            log.error(
                "the Governor at %s refuses this service's policy listing (%s: %s); give it a "
                "token with the viewer role (TAI_SERVICE_TOKEN or TAI_SERVICE_TOKEN_FILE) or "
                "a certificate (TAI_TLS_*); retrying",
                self._target,
                code.name,
                error.message,
            )
            return
        log.warning(
            "cannot list policies from the Governor at %s yet (%s); retrying",
            self._target,
            code.name,
        )

    async def run(self, namespaces: NamespaceDirectory) -> None:
        """Every `check_seconds` (a worker), checks each namespace this replica holds a book
        for, in it (`check`), and forgets the books of namespaces no longer served."""
        while True:
            await asyncio.sleep(self._check_seconds)
            serving = set(await namespaces.serving())
            self._books.retain(serving)
            for gone in [n for n in self._resyncs if n not in serving]:
                del self._resyncs[gone]
            for namespace in self._books.namespaces():
                with in_namespace(namespace):
                    try:
                        await self.check(namespace)
                    except TaiError as error:
                        log.warning(
                            "policy resync of namespace %s failed (%s); keeping the current set",
                            namespace,
                            error.code,
                        )

    async def check(self, namespace: str) -> None:
        """Lists the namespace's policies again when `resync_seconds` passed or its book is
        still behind the revision the Governor had reached one check earlier (run inside the
        namespace). A book not loaded yet is left to its first use."""
        book = self._books.get(namespace)
        if book is None or not book.loaded:
            return
        loop = asyncio.get_running_loop()
        resync = self._resyncs.get(namespace)
        if resync is None:
            resync = self._resyncs[namespace] = _Resync(loop.time() + self._resync_seconds)
        if book.revision < resync.target or loop.time() >= resync.next_full:
            if book.revision < resync.target:
                log.warning(
                    "policy book of namespace %s at revision %d, the Governor was at %d: an "
                    "event was missed; listing the policies again",
                    namespace,
                    book.revision,
                    resync.target,
                )
            await self._load(namespace, force=True)
            resync.next_full = loop.time() + self._resync_seconds
        resync.target = await self._governor_revision()

    async def fetch_policy(self, policy_id: str, version: int) -> governor_pb2.Policy:
        """One stored policy version of the current namespace from the Governor (`version` 0:
        the latest)."""
        try:
            async with open_channel(self._target, self._options) as channel:
                return await GovernorClient(channel, self._options).get(policy_id, version=version)
        except ClientNotFound as error:
            raise NotFound("policy", f"{policy_id} v{version}" if version else policy_id) from error
        except TaiError as error:
            raise Unavailable(
                f"cannot read policy {policy_id!r} from the Governor ({error.code.name}); "
                "retry shortly"
            ) from error

    async def _governor_revision(self) -> int:
        """The Governor's policy revision in the current namespace (each namespace numbers its
        changes on its own), from a one-policy listing, which carries it."""
        async with open_channel(self._target, self._options) as channel:
            page = await GovernorClient(channel, self._options).list_page(
                states=list(LIVE_STATES), page_size=1
            )
        return page.revision

    async def _load(self, namespace: str, *, force: bool) -> None:
        lock = self._loading.setdefault(namespace, asyncio.Lock())
        async with lock:
            book = self._books.of(namespace)
            if book.loaded and not force:
                return  # loaded by the caller this one waited for
            # The revision first: the listing that follows reflects at least every change up
            # to it.
            revision = await self._governor_revision()
            async with open_channel(self._target, self._options) as channel:
                client = GovernorClient(channel, self._options)
                live: list[governor_pb2.Policy] = [
                    p async for p in client.list_all(states=list(LIVE_STATES))
                ]
            book.replace_all(live, as_of_revision=revision)
