"""The WindowLimiter port: admit at most N events per sliding window, shared by every replica.

The Coordinator's blast-radius limits use it: "at most 3 restarts of `api` in 10 minutes".
An admission names its event (`member`): admitting the same member again admits it again
without counting it twice, so a caller whose transaction runs again on contention, or that
retries, never uses up the window by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tai_common.ports.store import Transaction


@dataclass(frozen=True)
class Admission:
    allowed: bool
    # Events the window counts, this one included when allowed.
    counted: int
    # When not allowed: when the oldest counted event leaves the window (a slot frees).
    retry_at_ns: int = 0


@dataclass(frozen=True)
class AdmissionRequest:
    """Admit `member` under `key` if fewer than `limit` others were in the last `window_ns`."""

    key: str
    member: str
    limit: int
    window_ns: int


class WindowLimiter(Protocol):
    async def admit(
        self,
        tx: Transaction,
        key: str,
        member: str,
        *,
        limit: int,
        window_ns: int,
        now_ns: int,
    ) -> Admission:
        """Admits `member` under `key` when fewer than `limit` other members were admitted in
        (now_ns - window_ns, now_ns]. An adapter that keeps its windows in the store writes in
        `tx`, so the admission commits (or not) with the caller's writes; one that keeps them
        elsewhere (Redis) admits at once, and an admission whose transaction then fails holds
        its slot until it leaves the window (the limit errs on the side of fewer events)."""
        ...

    async def admit_all(
        self, tx: Transaction, requests: Sequence[AdmissionRequest], now_ns: int
    ) -> list[Admission]:
        """`admit` for each request, in order; a store-kept adapter reads every window before
        it writes any (as a Firestore transaction requires), so the caller may make it its
        transaction's last reads."""
        ...

    async def close(self) -> None:
        """Releases what the adapter holds (a Redis connection); nothing for the store's."""
        ...
