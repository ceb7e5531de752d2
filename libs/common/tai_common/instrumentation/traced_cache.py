"""A Cache decorator that puts each cache operation in a span (`cache.<op>`)."""

from __future__ import annotations

from opentelemetry import trace

from tai_common.core import tracer
from tai_common.ports import Cache, CacheEntry


class TracedCache:
    def __init__(self, inner: Cache) -> None:
        self.inner = inner

    async def get(self, key: str) -> CacheEntry | None:
        with tracer().start_as_current_span("cache.get", kind=trace.SpanKind.CLIENT) as span:
            entry = await self.inner.get(key)
            span.set_attribute("tai.cache.hit", entry is not None)
            return entry

    async def put(self, key: str, value: bytes, version: int, ttl_seconds: float) -> bool:
        with tracer().start_as_current_span("cache.put", kind=trace.SpanKind.CLIENT):
            return await self.inner.put(key, value, version, ttl_seconds)

    async def invalidate(self, key: str, version: int, ttl_seconds: float) -> None:
        with tracer().start_as_current_span("cache.invalidate", kind=trace.SpanKind.CLIENT):
            await self.inner.invalidate(key, version, ttl_seconds)

    async def close(self) -> None:
        await self.inner.close()
