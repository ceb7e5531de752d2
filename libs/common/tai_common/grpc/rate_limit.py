"""The rate-limit interceptor: a token bucket per namespace, caller and method (a namespace's
`rate_limit_per_second` quota, when set, replaces the installation's rate in it; with neither,
calls are not limited). Every limited response carries
`x-ratelimit-limit` (the bucket size), `x-ratelimit-remaining` and `x-ratelimit-reset` (Unix
time, in seconds, when the bucket is full again) as trailing metadata; a call over the limit
gets RESOURCE_EXHAUSTED."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tai_common.auth import current_principal, is_open
from tai_common.core import ResourceExhausted, metrics
from tai_common.core.namespace import DEFAULT_NAMESPACE, namespace_or_none
from tai_common.grpc.interceptors import Context, GuardInterceptor
from tai_common.ports import Bucket, RateLimiter

if TYPE_CHECKING:
    from tai_common.namespacing import NamespaceDirectory


class RateLimits:
    def __init__(
        self,
        limiter: RateLimiter,
        per_second: float,
        burst: float,
        per_method: Mapping[str, float] | None = None,
        namespaces: NamespaceDirectory | None = None,
    ) -> None:
        """`per_method` maps a method's short name ("SubmitSignal") to its own rate; the burst
        scales with it."""
        self._limiter = limiter
        self._default = Bucket(per_second, burst or per_second) if per_second > 0 else None
        burst_ratio = (burst or per_second) / per_second if per_second > 0 else 1.0
        self._per_method = {
            name: Bucket(rate, rate * burst_ratio) for name, rate in (per_method or {}).items()
        }
        self._namespaces = namespaces

    def interceptor(self) -> GuardInterceptor:
        return GuardInterceptor(self.check)

    async def close(self) -> None:
        await self._limiter.close()

    async def check(self, method: str, context: Context) -> None:
        if is_open(method):
            return
        short_name = method.rsplit("/", 1)[-1]
        namespace = namespace_or_none() or DEFAULT_NAMESPACE
        bucket = self._per_method.get(short_name, self._default)
        if self._namespaces is not None and (
            bucket is not None or self._namespaces.sets_rate_limits
        ):
            own = (await self._namespaces.quotas(namespace)).rate_limit_per_second
            if own > 0:
                bucket = Bucket(own, own)
        if bucket is None:
            return
        caller = current_principal().name
        decision = await self._limiter.take(f"{namespace}|{caller}|{method}", bucket)
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
                f"{caller} in namespace {namespace!r}; retry after a short wait"
            )
