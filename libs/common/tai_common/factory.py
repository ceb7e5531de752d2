"""Adapter selection: the one place that turns settings URLs into port implementations (store,
bus, cache, secret source, rate limiter, window limiter). Each backend's package is imported
only when chosen, so a process never loads the client libraries of the backends it does not
use."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

from tai_common.core import Clock, IdFactory, ServiceSettings, TimeOrderedIds, UuidFactory
from tai_common.messaging import topics
from tai_common.ports import (
    Cache,
    DocumentStore,
    EventBus,
    RateLimiter,
    SecretSource,
    WindowLimiter,
)

if TYPE_CHECKING:
    from tai_common.sqlite import SqliteEventLog


class UnsupportedUrl(ValueError):
    """A settings URL names an adapter this build does not have."""


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel/path` → rel/path; `sqlite:////abs/path` → /abs/path."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite" or not parsed.path.startswith("/"):
        raise UnsupportedUrl(f"not a sqlite URL: {url!r}")
    return Path(parsed.path[1:])


@dataclass(frozen=True)
class StoreAndBus:
    store: DocumentStore
    bus: EventBus


async def open_store_and_bus(settings: ServiceSettings, clock: Clock) -> StoreAndBus:
    """The DocumentStore named by `settings.store` and the EventBus named by `settings.bus`."""
    # The bus first: when both are one SQLite file, the store's transactions publish into the
    # bus's log (no outbox entry and no relay between a change and its event), whose tables
    # the bus creates.
    bus = await open_bus(settings, clock)
    try:
        event_log = None
        if _one_sqlite_file(settings):
            from tai_common.sqlite import SqliteBus

            if isinstance(bus, SqliteBus):  # what `open_bus` opens for a sqlite URL
                event_log = bus.event_log()
        store = await open_store(settings, event_log=event_log)
    except BaseException:
        await bus.close()
        raise
    return StoreAndBus(store, bus)


def _one_sqlite_file(settings: ServiceSettings) -> bool:
    """Whether the store and the bus are one SQLite file."""
    if urlparse(settings.store).scheme != "sqlite" or urlparse(settings.bus).scheme != "sqlite":
        return False
    return sqlite_path(settings.store).resolve() == sqlite_path(settings.bus).resolve()


async def open_store(
    settings: ServiceSettings, event_log: SqliteEventLog | None = None
) -> DocumentStore:
    """The DocumentStore named by `settings.store`; a SQLite store given `event_log` (the
    bus's, in the same file) publishes in its transactions."""
    scheme = urlparse(settings.store).scheme
    if scheme == "sqlite":
        from tai_common.sqlite import SqliteStore

        return await SqliteStore.open(
            sqlite_path(settings.store),
            synchronous=settings.sqlite_synchronous,
            event_log=event_log,
        )
    if scheme == "firestore":
        from tai_common.gcp import FirestoreStore

        # firestore://PROJECT or firestore://PROJECT/DATABASE; the emulator, if any, comes from
        # FIRESTORE_EMULATOR_HOST.
        parsed = urlparse(settings.store)
        database = parsed.path.strip("/") or "(default)"
        return await FirestoreStore.open(parsed.netloc, database=database)
    raise UnsupportedUrl(
        f"TAI_STORE: unsupported store {settings.store!r} "
        "(expected sqlite:///path or firestore://PROJECT)"
    )


async def open_bus(
    settings: ServiceSettings, clock: Clock, *, required_topics: Collection[str] = topics.ALL
) -> EventBus:
    """The EventBus named by `settings.bus`.

    On Pub/Sub and Kafka, `required_topics` (by default the suite's, which every service
    publishes to or consumes) must exist, or are created with `settings.bus_create_missing`;
    else `tai_common.ports.MissingBusResource` names the first missing one.
    """
    scheme = urlparse(settings.bus).scheme
    if scheme == "sqlite":
        from tai_common.sqlite import SqliteBus

        path = sqlite_path(settings.bus)
        path.parent.mkdir(parents=True, exist_ok=True)
        return await SqliteBus.open(
            path,
            clock=clock,
            synchronous=settings.sqlite_synchronous,
            single_process=settings.sqlite_single_process,
        )
    if scheme == "pubsub":
        from tai_common.gcp import PubSubBus

        # pubsub://PROJECT; the emulator, if any, comes from PUBSUB_EMULATOR_HOST.
        return await PubSubBus.open(
            urlparse(settings.bus).netloc,
            clock=clock,
            create_missing=settings.bus_create_missing,
            required_topics=required_topics,
            bus_url=settings.bus,
        )
    if scheme == "kafka":
        from tai_common.kafka import KafkaBus

        # kafka://HOST:PORT[,HOST:PORT…][?idempotence=false] — idempotent producers are on
        # unless the broker cannot do them (Tansu, used in the tests, cannot).
        parsed = urlparse(settings.bus)
        options = parse_qs(parsed.query)
        idempotence = options.get("idempotence", ["true"])[0].lower() not in ("0", "false", "no")
        return await KafkaBus.open(
            parsed.netloc,
            clock=clock,
            create_missing=settings.bus_create_missing,
            enable_idempotence=idempotence,
            required_topics=required_topics,
            bus_url=settings.bus,
        )
    raise UnsupportedUrl(
        f"TAI_BUS: unsupported bus {settings.bus!r} "
        "(expected sqlite:///path, pubsub://PROJECT or kafka://HOST:PORT)"
    )


def open_ids(settings: ServiceSettings) -> IdFactory:
    """Where new ids come from: time-ordered on the embedded SQLite store (new rows go to the
    end of its B-trees), random on Firestore (spread over its tablets)."""
    if urlparse(settings.store).scheme == "sqlite":
        return TimeOrderedIds()
    return UuidFactory()


def cache_in_process(settings: ServiceSettings) -> bool:
    """Whether `settings.cache` names the per-process memory cache (no network hop)."""
    return urlparse(settings.cache).scheme == "memory"


def open_cache(settings: ServiceSettings) -> Cache:
    """The Cache named by `settings.cache`: `memory://` (per process), `redis://host:port/db`
    (one server) or `redis+cluster://host:port[,host:port…]` (a Redis Cluster)."""
    if cache_in_process(settings):
        from tai_common.memory import MemoryCache

        return MemoryCache()
    from tai_common.redis import is_redis_url

    if is_redis_url(settings.cache):
        from tai_common.redis import RedisCache

        # A URL that cannot work raises RedisUrlError (a StartupError naming TAI_CACHE).
        return RedisCache.from_url(settings.cache, setting="TAI_CACHE")
    raise UnsupportedUrl(
        f"TAI_CACHE: unsupported cache {settings.cache!r} "
        "(expected memory://, redis://host:port/db or redis+cluster://host:port[,host:port…])"
    )


async def open_secrets(settings: ServiceSettings) -> SecretSource:
    """The SecretSource named by `settings.secrets`: `env://[?dir=…]` (mounted files and
    `TAI_SECRET_<NAME>__<KEY>` variables) or `vault://host:port?…` (Vault or OpenBao, logged in
    with the credentials from settings, its token kept alive in the background)."""
    scheme = urlparse(settings.secrets).scheme
    try:
        if scheme == "env":
            from tai_common.env import EnvSecrets

            return EnvSecrets.from_url(settings.secrets)
        if scheme == "vault":
            from tai_common.vault import VaultConfig, VaultCredentials, VaultSecrets

            credentials = VaultCredentials(
                token=settings.vault_token,
                token_file=settings.vault_token_file,
                role_id=settings.vault_role_id,
                role_id_file=settings.vault_role_id_file,
                secret_id=settings.vault_secret_id,
                secret_id_file=settings.vault_secret_id_file,
                kubernetes_token_file=settings.vault_kubernetes_token_file,
            )
            return await VaultSecrets.open(VaultConfig.from_url(settings.secrets, credentials))
    except ValueError as error:
        raise UnsupportedUrl(f"TAI_SECRETS: {error}") from None
    raise UnsupportedUrl(
        f"TAI_SECRETS: unsupported secret source {settings.secrets!r} "
        "(expected env:// or vault://host:port?…)"
    )


def open_rate_limiter(settings: ServiceSettings, *, required: bool = False) -> RateLimiter | None:
    """The RateLimiter that enforces the rate limits, or None when calls are unlimited
    (`TAI_RATE_LIMIT_PER_SECOND` 0, and not `required` for the namespaces' own limits). Shared
    through Redis (one server or a cluster) when `TAI_RATE_LIMIT_STORE` names it, or else the
    cache is Redis; per process otherwise."""
    if settings.rate_limit_per_second <= 0 and not required:
        return None
    shared = _shared_limits_redis(settings)
    if shared is not None:
        from tai_common.redis import RedisRateLimiter

        # A URL that cannot work raises RedisUrlError (a StartupError naming the setting).
        return RedisRateLimiter.from_url(shared.url, shared.setting)
    from tai_common.memory import MemoryRateLimiter

    return MemoryRateLimiter()


def open_window_limiter(settings: ServiceSettings, store: DocumentStore) -> WindowLimiter:
    """The WindowLimiter that keeps the blast-radius limits' windows: in Redis (one server or a
    cluster) when `TAI_RATE_LIMIT_STORE` names it, or else the cache is Redis (as the rate
    limits); otherwise in `store`, through the transactions the callers run on it and pass to
    `admit` (so the limiter itself holds no reference to `store`)."""
    shared = _shared_limits_redis(settings)
    if shared is not None:
        from tai_common.redis import RedisWindowLimiter

        # A URL that cannot work raises RedisUrlError (a StartupError naming the setting).
        return RedisWindowLimiter.from_url(shared.url, shared.setting)
    from tai_common.messaging import StoreWindowLimiter

    return StoreWindowLimiter()


@dataclass(frozen=True)
class _RedisSetting:
    setting: str
    url: str


def _shared_limits_redis(settings: ServiceSettings) -> _RedisSetting | None:
    """The Redis that shares limits between replicas, with the setting that named it:
    `TAI_RATE_LIMIT_STORE` when set, else `TAI_CACHE` when it is Redis; None for neither."""
    from tai_common.redis import is_redis_url

    if settings.rate_limit_store:
        return _RedisSetting("TAI_RATE_LIMIT_STORE", settings.rate_limit_store)
    if is_redis_url(settings.cache):
        return _RedisSetting("TAI_CACHE", settings.cache)
    return None
