"""In-process adapters, one per process and nothing to run: the cache and the rate limiter."""

from tai_common.memory.cache import MemoryCache
from tai_common.memory.rate_limiter import MemoryRateLimiter

__all__ = ["MemoryCache", "MemoryRateLimiter"]
