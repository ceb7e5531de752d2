"""The replica's feed of policy changes for its StreamPolicies clients: in revision order, with
no gaps.

Changes arrive as bus events, which are fast but come in no set order across policies, and can
be missed: published before this replica subscribed (it restarted), or lost in an outage. A
stream that sent revision 22 before 21, or never sent 21, would make a client resuming "after
22" miss 21 for good. Revisions have no gaps (every change takes the next one in the same
transaction), so the feed holds a change back until the ones before it are out, and reads what
is missing from the store: at once when a later change shows a gap, and every `poll_seconds`
when the store's last revision is ahead of the feed (a missed change no later event reveals).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from tai_common.core import wait_event

from tai_governor.policy import PolicyVersion

log = logging.getLogger(__name__)


class ChangeLog(Protocol):
    """Where the changes are kept (the PolicyRepository)."""

    async def last_revision(self) -> int: ...

    def iter_changes_after(self, revision: int) -> AsyncIterator[PolicyVersion]: ...


class PolicyFeed:
    def __init__(
        self,
        repo: ChangeLog,
        publish: Callable[[PolicyVersion], None],
        recovered: Callable[[PolicyVersion], Awaitable[None]],
        *,
        gap_wait_seconds: float = 0.2,
        poll_seconds: float = 1.0,
    ) -> None:
        """`publish` receives each change once, in revision order; `recovered` is awaited for
        each change read from the store because its event did not come."""
        self._repo = repo
        self._publish = publish
        self._recovered = recovered
        self._gap_wait = gap_wait_seconds
        self._poll = poll_seconds
        # The revision to publish next; changes after it wait in `_held`.
        self._next = 0
        self._held: dict[int, PolicyVersion] = {}
        self._gap = asyncio.Event()

    @property
    def revision(self) -> int:
        """The last revision published."""
        return self._next - 1

    async def start(self) -> None:
        """Starts after the store's last revision (earlier changes are the streams' history)."""
        self._next = await self._repo.last_revision() + 1

    def offer(self, policy: PolicyVersion) -> None:
        """A change from the bus (or the store): published now, or held until its turn."""
        if policy.revision < self._next:
            return  # published already (a redelivered or recovered change)
        self._held[policy.revision] = policy
        while self._next in self._held:
            self._publish(self._held.pop(self._next))
            self._next += 1
        if self._held:
            self._gap.set()

    async def run(self) -> None:
        """Fills gaps from the store (a worker, for a feed of its own)."""
        while True:
            if await wait_event(self._gap, self._poll):
                # Give a change that is merely late on the bus a moment to arrive.
                await asyncio.sleep(self._gap_wait)
            await self.catch_up_if_behind()

    async def catch_up_if_behind(self) -> None:
        """Reads the changes the bus did not bring, if a gap or the store says some are
        missing (one pass; the Governor runs it per namespace)."""
        self._gap.clear()
        if self._held or await self._repo.last_revision() >= self._next:
            await self._catch_up()

    async def _catch_up(self) -> None:
        missed = 0
        async for policy in self._repo.iter_changes_after(self.revision):
            if policy.revision >= self._next and policy.revision not in self._held:
                missed += 1
                await self._recovered(policy)
            self.offer(policy)
        if missed:
            log.info("read %d policy change(s) from the store that the bus did not bring", missed)
