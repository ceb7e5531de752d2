"""Redis clients from TAI's settings URLs, for the cache and the shared rate limits.

- `redis://[user:password@]host:port[/db]` (`rediss://` with TLS): one Redis server.
- `redis+cluster://[user:password@]host:port[,host:port…]` (`rediss+cluster://` with TLS): a
  Redis Cluster, through redis-py's `RedisCluster`, which routes each key to the node holding
  its slot and follows MOVED/ASK redirections. The addresses are where it discovers the
  cluster, at start and again after a failure: a discovery endpoint (Memorystore for Redis
  Cluster) or some or all of the nodes. A cluster has only database 0.

Query parameters (`?ssl_ca_certs=/path/ca.pem`, `socket_timeout=…`) go to redis-py as its own
`from_url` takes them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from tai_common.core import StartupError

RedisClient = redis.Redis | RedisCluster

SINGLE_SCHEMES = ("redis", "rediss")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
EXPECTED = "redis://host:port/db or redis+cluster://host:port[,host:port…]"

# What a Redis being unavailable raises: redis-py's errors, the cluster client's own (not
# RedisErrors: e.g. no node reachable to learn the slots from), and socket errors.
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

_AUTHORITY = re.compile(r"^(?P<authority>[^/?#]*)(?P<rest>.*)$", re.DOTALL)
# host[:port] or [IPv6][:port]
_ADDRESS = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<v6port>[^:]*))?|(?P<host>[^:\[\]]+)(?::(?P<port>[^:]*))?"
)


class RedisUrlError(StartupError, ValueError):
    """A Redis URL that cannot work; the message, one line, names the setting and hides any
    password."""


def is_redis_url(url: str) -> bool:
    """Whether `url` names a Redis server or a Redis Cluster (by its scheme)."""
    return _scheme(url) in SINGLE_SCHEMES + CLUSTER_SCHEMES


def open_redis(url: str, setting: str, **options: Any) -> RedisClient:
    """A client for `url` (not yet connected: the first command connects). `options` are
    redis-py's (timeouts); the URL's query parameters win over them. Raises `RedisUrlError`
    naming `setting` (e.g. "TAI_CACHE") for a URL that cannot work."""
    scheme = _scheme(url)
    try:
        if scheme in SINGLE_SCHEMES:
            return redis.Redis.from_url(url, **options)
        if scheme in CLUSTER_SCHEMES:
            return _open_cluster(url, scheme, **options)
    except (ValueError, TypeError, RedisClusterException) as error:
        raise RedisUrlError(
            f"{setting}: {error} in {_redacted(url)!r} (expected {EXPECTED})"
        ) from None
    raise RedisUrlError(f"{setting}: not a Redis URL: {_redacted(url)!r} (expected {EXPECTED})")


def _open_cluster(url: str, scheme: str, **options: Any) -> RedisCluster:
    authority, rest = _split_authority(url.split("://", 1)[1])
    userinfo, _, hosts = authority.rpartition("@")
    if not hosts:
        raise RedisUrlError("no node address")
    nodes = [_host_port(address) for address in hosts.split(",")]
    path = urlsplit(rest).path.strip("/")
    if path not in ("", "0"):
        raise RedisUrlError(f"database {path!r}: a Redis Cluster has only database 0")
    # The first address as redis-py's own URL (credentials, TLS, query parameters); the others
    # as further startup nodes.
    first_host, first_port = nodes[0]
    single = scheme.removesuffix("+cluster")
    credentials = f"{userinfo}@" if userinfo else ""
    first = f"{single}://{credentials}{_bracketed(first_host)}:{first_port}{rest}"
    return RedisCluster.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],
        # Rediscover the cluster through the URL's addresses only: a discovery endpoint is not
        # among the nodes CLUSTER SLOTS lists, yet it is the address that stays valid.
        dynamic_startup_nodes=False,
        # One more try after a connection error, on the topology learnt again (a failover may
        # have moved the slot), and no pause in between: the adapters pause after a failure
        # themselves, and a slow cache is worse than no cache.
        retry=Retry(NoBackoff(), retries=1),
        **options,
    )


def _split_authority(after_scheme: str) -> tuple[str, str]:
    match = _AUTHORITY.match(after_scheme)
    assert match is not None  # the pattern matches any string
    return match["authority"], match["rest"]


def _host_port(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a host alone (port 6379)."""
    match = _ADDRESS.fullmatch(address)
    if match is None:
        raise RedisUrlError(f"bad node address {address!r}")
    host = match["v6"] or match["host"]
    port_text = match["v6port"] if match["v6"] else match["port"]
    if port_text is None:
        return host, 6379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RedisUrlError(f"bad port in node address {address!r}")
    return host, int(port_text)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _redacted(url: str) -> str:
    """`url` with the password (if any) replaced by ***."""
    if "://" not in url:
        return url
    scheme, after = url.split("://", 1)
    authority, rest = _split_authority(after)
    userinfo, at, hosts = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}{rest}"
