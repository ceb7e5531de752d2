"""The rate-limit interceptor: a token bucket per caller and method. Every response carries
`x-ratelimit-limit` (the bucket size), `x-ratelimit-remaining` and `x-ratelimit-reset` (Unix
time, in seconds, when the bucket is full again) as trailing metadata; a call over the limit
gets RESOURCE_EXHAUSTED."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from tai_common.auth import current_principal, is_open
from tai_common.core import ResourceExhausted, metrics
from tai_common.grpc.interceptors import Context, GuardInterceptor
from tai_common.ports import Bucket, RateLimiter


class RateLimits:
    def __init__(
        self,
        limiter: RateLimiter,
        per_second: float,
        burst: float,
        per_method: Mapping[str, float] | None = None,
    ) -> None:
        """`per_method` maps a method's short name ("SubmitSignal") to its own rate; the burst
        scales with it."""
        self._limiter = limiter
        self._default = Bucket(per_second, burst or per_second)
        self._per_method = {
            name: Bucket(rate, rate * (self._default.burst / per_second))
            for name, rate in (per_method or {}).items()
        }

    def interceptor(self) -> GuardInterceptor:
        return GuardInterceptor(self.check)

    async def close(self) -> None:
        await self._limiter.close()

    async def check(self, method: str, context: Context) -> None:
        if is_open(method):
            return
        short_name = method.rsplit("/", 1)[-1]
        bucket = self._per_method.get(short_name, self._default)
        caller = current_principal().name
        decision = await self._limiter.take(f"{caller}|{method}", bucket)
        context.set_trailing_metadata(
            (
                ("x-ratelimit-limit", str(int(bucket.burst))),
                ("x-ratelimit-remaining", str(decision.remaining)),
                ("x-ratelimit-reset", str(math.ceil(time.time() + decision.reset_seconds))),
            )
        )
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(grpc_method=short_name).inc()
            raise ResourceExhausted(
                f"rate limit of {bucket.rate:g} calls/s for {short_name} exceeded by "
                f"{caller}; retry after a short wait"
            )
