"""Redis, one server or a cluster: the shared cache (`RedisCache`), rate limiter
(`RedisRateLimiter`) and window limiter (`RedisWindowLimiter`), on the client and URL rules of
`client`."""

from tai_common.redis.cache import RedisCache
from tai_common.redis.client import RedisClient, RedisUrlError, is_redis_url, open_redis
from tai_common.redis.rate_limiter import RedisRateLimiter
from tai_common.redis.window_limiter import RedisWindowLimiter

__all__ = [
    "RedisCache",
    "RedisClient",
    "RedisRateLimiter",
    "RedisUrlError",
    "RedisWindowLimiter",
    "is_redis_url",
    "open_redis",
]
