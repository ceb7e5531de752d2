"""The RateLimiter port: take one token from a bucket, or learn when there will be one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Bucket:
    """`rate` tokens a second flow into a bucket that holds at most `burst`."""

    rate: float
    burst: float


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Whole tokens left after this request.
    remaining: int
    # Seconds until the bucket is full again.
    reset_seconds: float


class RateLimiter(Protocol):
    async def take(self, key: str, bucket: Bucket) -> Decision: ...

    async def close(self) -> None: ...
