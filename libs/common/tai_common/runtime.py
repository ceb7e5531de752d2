"""A service process's lifecycle: the metrics endpoint, store, bus, outbox relay, background
workers and the gRPC server — started in order, stopped in reverse on SIGTERM or SIGINT,
whatever phase the process is in. Also where the layers below are put together: the adapters
the factory chose, wrapped in their instrumentation; the interceptors around the server; the
channel options of the calls to the other services."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import grpc
import prometheus_client
import pydantic
from tai.v1 import common_pb2
from tai_rpc.channel import ChannelOptions

from tai_common import factory
from tai_common.core import (
    Clock,
    IdFactory,
    ServiceSettings,
    StartupError,
    SystemClock,
    UuidFactory,
    metrics,
)
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace, namespace_or_none
from tai_common.grpc import DeniedHook, GrpcServer, Registrar, security
from tai_common.instrumentation import (
    ServerMetricsInterceptor,
    ServerTracingInterceptor,
    TracedBus,
    TracedCache,
    TracedStore,
    client_interceptors,
    configure_logging,
    configure_tracing,
    tracing_enabled,
)
from tai_common.messaging import OUTBOX_INDEXES, AuditTrail, EventFactory, OutboxRelay, audit
from tai_common.namespacing import (
    NamespacedBus,
    NamespaceDirectory,
    NamespacedStore,
    Quotas,
    for_each_namespace,
)
from tai_common.ports import Cache, DocumentStore, EventBus, IndexSpec, SecretSource

if TYPE_CHECKING:
    from tai_common.auth.jwt_verifier import JwksLoader

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


# A service's own settings class (covariant: the runtime reads any service's settings as the
# base `ServiceSettings`).
SettingsT = TypeVar("SettingsT", bound=ServiceSettings, covariant=True)
S = TypeVar("S", bound=ServiceSettings)


@dataclass
class Dependencies(Generic[SettingsT]):
    """What a service's domain code is built from: `settings` is the service's own settings
    class, so its `create_app` reads its fields typed."""

    settings: SettingsT
    store: DocumentStore
    bus: EventBus
    cache: Cache
    secrets: SecretSource
    clock: Clock = field(default_factory=SystemClock)
    ids: IdFactory = field(default_factory=UuidFactory)
    # False for a view that shares another's adapters (`shared_with`): the owner closes them.
    owns_adapters: bool = True
    _closed: bool = field(default=False, init=False, repr=False)

    @classmethod
    async def open(cls, settings: S) -> Dependencies[S]:
        """Opens the adapters the settings name."""
        clock = SystemClock()
        try:
            opened = await factory.open_store_and_bus(settings, clock)
        except factory.UnsupportedUrl as error:
            raise StartupError(str(error)) from None
        store, bus = opened.store, opened.bus
        try:
            secrets = await factory.open_secrets(settings)
            cache = factory.open_cache(settings)
        except BaseException as error:
            await bus.close()
            await store.close()
            if isinstance(error, factory.UnsupportedUrl):
                raise StartupError(str(error)) from None
            raise
        ids = factory.open_ids(settings)
        if tracing_enabled(settings):
            # Every adapter is traced (spans per store and cache operation, per message
            # published and handled): the one place they are wrapped. Not the in-process
            # cache: a lookup there takes microseconds, and a span for it cost cached reads
            # ~5 % of their CPU.
            store, bus = TracedStore(store), TracedBus(bus)
            cache = cache if factory.cache_in_process(settings) else TracedCache(cache)
        # Outermost: the store keeps each namespace's documents under it, and consumers handle
        # each message in its namespace.
        return Dependencies(
            settings=settings,
            store=NamespacedStore(store),
            bus=NamespacedBus(bus),
            cache=cache,
            secrets=secrets,
            clock=clock,
            ids=ids,
        )

    def shared_with(self, settings: S) -> Dependencies[S]:
        """The same adapters for another service of this process (`tai-server`), under its own
        settings; closing the view leaves them open."""
        return Dependencies(
            settings=settings,
            store=self.store,
            bus=self.bus,
            cache=self.cache,
            secrets=self.secrets,
            clock=self.clock,
            ids=self.ids,
            owns_adapters=False,
        )

    async def close(self) -> None:
        """Closes the adapters (their threads and connections would keep the process alive)."""
        if not self.owns_adapters or self._closed:
            return
        self._closed = True
        await self.bus.close()
        await self.cache.close()
        await self.secrets.close()
        await self.store.close()


@dataclass(frozen=True)
class InterceptorStack:
    """What every service's server runs around its handlers (see `GrpcServer` for the order)."""

    # Outermost: they see every call as the client does, final status included.
    outer: list[grpc.aio.ServerInterceptor]
    # Inside the error mapping: authentication, then the rate limits (if any).
    inner: list[grpc.aio.ServerInterceptor]
    # Releases the rate limiter's connection, when there is one.
    close: Hook | None


def interceptor_stack(
    settings: ServiceSettings,
    on_denied: DeniedHook | None,
    jwks_loader: JwksLoader | None,
    namespaces: NamespaceDirectory | None = None,
) -> InterceptorStack:
    """Tracing, metrics, authentication (and the call's namespace) and rate limits as
    `settings` ask (the benchmark's baseline builds the same stack around an empty handler)."""
    inner: list[grpc.aio.ServerInterceptor] = [
        security.authenticator(settings, on_denied, jwks_loader, namespaces).interceptor()
    ]
    close: Hook | None = None
    # With namespaces, a namespace's own rate limit applies even where the installation sets
    # none.
    limiter = factory.open_rate_limiter(settings, required=namespaces is not None)
    if limiter is not None:
        limits = security.rate_limits(settings, limiter, namespaces)
        inner.append(limits.interceptor())
        close = limits.close
    outer: list[grpc.aio.ServerInterceptor] = [ServerMetricsInterceptor()]
    if tracing_enabled(settings):
        outer.insert(0, ServerTracingInterceptor())
    return InterceptorStack(outer=outer, inner=inner, close=close)


def internal_channel_options(settings: ServiceSettings, timeout: float = 10.0) -> ChannelOptions:
    """How this service calls the others: mutual TLS with its own certificate when configured,
    and its service token when it has one; every call measured (grpc_client_*) and, when
    tracing is enabled, traced."""
    tracing: tuple[grpc.aio.ClientInterceptor, ...] = ()
    if tracing_enabled(settings):
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        tracing = tuple(aio_client_interceptors())  # type: ignore[no-untyped-call]
    return ChannelOptions(
        default_timeout_seconds=timeout,
        tls=security.tls_files(settings),
        bearer_token=security.service_token(settings),
        # A call made while working in a namespace works in it on the other service too.
        namespace=lambda: namespace_or_none() or "",
        interceptors=(*client_interceptors(), *tracing),
    )


class ServiceRuntime:
    """Runs one service: call `add_startup`, `add_worker` and `add_shutdown` while wiring the
    service, `attach_server` once, then `serve()` (or `start()`/`stop()` in tests)."""

    def __init__(
        self, deps: Dependencies[ServiceSettings], *, index_specs: Sequence[IndexSpec] = ()
    ) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.relay = OutboxRelay(
            deps.store,
            deps.bus,
            deps.clock,
            owner=deps.settings.replica_id,
        )
        self.events = EventFactory(deps.settings.service_name, deps.clock, deps.ids)
        self.namespaces = NamespaceDirectory(
            deps.store,
            deps.clock,
            refresh_seconds=deps.settings.namespace_refresh_seconds,
            max_namespaces=deps.settings.max_namespaces,
            default_quotas=Quotas(
                max_enforced_policies=deps.settings.namespace_max_enforced_policies,
                max_signals_per_second=deps.settings.namespace_max_signals_per_second,
                max_open_tasks=deps.settings.namespace_max_open_tasks,
            ),
        )
        self.audit = AuditTrail(deps.store, deps.clock, deps.ids, self.events, self.relay.notify)
        self._index_specs = [*OUTBOX_INDEXES, *audit.INDEXES, *index_specs]
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._workers: list[tuple[str, Hook]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server: GrpcServer | None = None
        self._metrics_server: tuple[Any, Any] | None = None
        self._server_started = False
        self._started_monotonic = time.monotonic()
        self.ready = False
        # Extra lines for the seed's HealthCheck answer (e.g. how current a cache is).
        self.health_details: list[Callable[[], str]] = []

    @property
    def server(self) -> GrpcServer:
        if self._server is None:
            raise RuntimeError("attach_server() was not called")
        return self._server

    def attach_server(
        self,
        registrars: Sequence[Registrar],
        service_names: Sequence[str],
        jwks_loader: JwksLoader | None = None,
    ) -> GrpcServer:
        """The server, with authentication (and the audit of refused calls) and rate limits
        as the settings ask."""
        stack = interceptor_stack(
            self.settings,
            self.audit.record_refusal,
            jwks_loader
            or (
                security.jwks_from_secret(self.deps.secrets, self.settings.jwt_jwks_secret)
                if self.settings.jwt_jwks_secret
                else None
            ),
            self.namespaces,
        )
        if stack.close is not None:
            self.add_shutdown(stack.close)
        self._server = GrpcServer(
            self.settings,
            registrars=registrars,
            service_names=service_names,
            outer_interceptors=stack.outer,
            interceptors=stack.inner,
            credentials=security.server_credentials(self.settings),
        )
        return self._server

    def add_startup(self, hook: Hook) -> None:
        """Runs before the server reports SERVING (e.g. subscribing, loading caches)."""
        self._startup.append(hook)

    def add_shutdown(self, hook: Hook) -> None:
        """Runs after the server stopped, before the adapters close."""
        self._shutdown.append(hook)

    def add_worker(self, name: str, run: Hook) -> None:
        """A background loop, restarted with backoff if it ever fails. It runs outside any
        namespace: work on namespaced data goes through `for_each_namespace` (or
        `add_namespace_pass`), or the store refuses it."""
        self._workers.append((name, run))

    def add_namespace_pass(
        self, name: str, work: Callable[[str], Awaitable[Any]], every_seconds: float
    ) -> None:
        """A background pass run in every active namespace in turn (`work(namespace)`, inside
        it), then again `every_seconds` later. One namespace's failure is logged and does not
        hold the others up."""

        async def run_in_each(namespace: str) -> None:
            try:
                await work(namespace)
            except Exception:
                log.exception("%s failed in namespace %s", name, namespace)

        async def run() -> None:
            while True:
                await for_each_namespace(self.namespaces, run_in_each)
                await asyncio.sleep(every_seconds)

        self.add_worker(name, run)

    async def start(self) -> int:
        """Starts everything; returns the bound gRPC port. Health says SERVING last, once all
        the process serves is up: the metrics endpoint listens before the gRPC port opens, so
        a probe that waits for SERVING (or merely for the gRPC port) can scrape at once."""
        if self.settings.metrics_port:
            self._metrics_server = _start_metrics_server(self.settings)
        await self.deps.store.ensure_indexes(self._index_specs)
        self._spawn("outbox-relay", self.relay.run)
        for name, run in self._workers:
            self._spawn(name, run)
        self._server_started = True
        port = await _start_grpc(self.server, self.settings)
        # Startup hooks prepare the default namespace (the others are prepared on first use).
        with in_namespace(DEFAULT_NAMESPACE):
            for hook in self._startup:
                await hook()
        self.ready = True
        metrics.READY.set(1)
        await self.server.set_serving(True)
        log.info(
            "%s serving gRPC on %s:%d",
            self.settings.service_name,
            self.settings.host,
            port,
            extra={"grpc_port": port, "metrics_port": self.settings.metrics_port},
        )
        return port

    async def stop(self) -> None:
        """Drains calls and streams, then stops workers and closes the adapters. Also undoes a
        start that failed or was cancelled part way."""
        self.ready = False
        metrics.READY.set(0)
        if self._server is not None and self._server_started:
            await self._server.stop()
        for hook in reversed(self._shutdown):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        if self._tasks:
            with contextlib.suppress(Exception):
                # Publish what is already committed, so the next process starts with less to
                # do.
                await asyncio.wait_for(self.relay.drain(), timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._metrics_server is not None:
            server, _thread = self._metrics_server
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        await self.deps.close()
        log.info("%s stopped", self.settings.service_name)

    async def serve(self, stop_requested: asyncio.Event | None = None) -> None:
        """Starts, runs until `stop_requested` is set (by default: until SIGTERM or SIGINT),
        then stops gracefully. A stop asked for while starting cancels the start (which may be
        waiting for a dependency) and undoes what had started."""
        if stop_requested is None:
            stop_requested = StopSignals(self.settings).install()
        await serve_together([self], stop_requested, self.settings.service_name)

    def health_status(self, service_name: str) -> common_pb2.HealthStatus:
        """The seed's HealthCheck answer."""
        return common_pb2.HealthStatus(
            service_name=service_name,
            status="healthy" if self.ready else "unhealthy",
            timestamp_ns=self.deps.clock.now_ns(),
            details=[
                f"replica={self.settings.replica_id}",
                *(detail() for detail in self.health_details),
            ],
            uptime_seconds=int(time.monotonic() - self._started_monotonic),
            version=_package_version(),
        )

    def _spawn(self, name: str, run: Hook) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, run), name=name))

    async def _supervise(self, name: str, run: Hook) -> None:
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A worker that ran a good while before failing starts its backoff afresh.
                if time.monotonic() - began > _HEALTHY_RUN_SECONDS:
                    failures = 0
                failures += 1
                log.exception("worker %s failed; restarting", name)
                await asyncio.sleep(min(30.0, 0.1 * 2**failures))


async def serve_together(
    runtimes: Sequence[ServiceRuntime], stop_requested: asyncio.Event, name: str
) -> None:
    """Starts `runtimes` in order, runs until `stop_requested` is set, then stops them all at
    once. A stop asked for while starting cancels the start (which may be waiting for a
    dependency) and undoes what had started; each runtime is stopped even if another's stop
    fails."""

    async def start_all() -> None:
        for runtime in runtimes:
            await runtime.start()

    starting = asyncio.create_task(start_all(), name="start")
    asked = asyncio.create_task(stop_requested.wait(), name="stop-requested")
    try:
        await asyncio.wait({starting, asked}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("%s: stop requested while starting", name)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()  # a start that failed raises here
        settle_garbage_collection()
        await asked
        log.info("%s: stop requested, draining", name)
    finally:
        starting.cancel()
        asked.cancel()
        # Together, as the pods of separate services stop when a release rolls: one after
        # another they would each take their grace period, past the process's deadline.
        stopped = await asyncio.gather(
            *(runtime.stop() for runtime in reversed(runtimes)), return_exceptions=True
        )
        for runtime, outcome in zip(reversed(runtimes), stopped, strict=True):
            if isinstance(outcome, Exception):
                log.error(
                    "%s: stopping %s failed",
                    name,
                    runtime.settings.service_name,
                    exc_info=outcome,
                )


# A background worker that ran this long before it failed is restarted after the shortest
# backoff again, not the one its earlier failures had grown to.
_HEALTHY_RUN_SECONDS = 60.0

# Time a stopping process gets beyond its grace period (which in-flight calls and running
# tasks may use in full) to release leases and close its connections; then it exits anyway.
STOP_RESERVE_SECONDS = 2.0


class StopSignals:
    """SIGTERM and SIGINT. The first sets `requested` (a graceful stop) and arms a deadline:
    if the process has not exited `shutdown_grace_seconds` + `STOP_RESERVE_SECONDS` later, it
    exits there and then. A second signal exits at once."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.requested = asyncio.Event()
        self._name = settings.service_name
        self._deadline = settings.shutdown_grace_seconds + STOP_RESERVE_SECONDS

    def install(self) -> asyncio.Event:
        """Handles both signals on the running loop; returns `requested`."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        return self.requested

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            log.warning("%s: %s again; exiting now", self._name, name)
            _exit_now(1)
        log.info("%s: %s received, stopping", self._name, name)
        self.requested.set()
        # A thread, not the event loop: it fires even if the loop is stuck in a blocking call.
        timer = threading.Timer(self._deadline, self._overdue)
        timer.daemon = True
        timer.start()

    def _overdue(self) -> None:
        log.error("%s did not stop within %.1fs; exiting", self._name, self._deadline)
        _exit_now(1)


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


async def run_services(
    settings: S, create_apps: Callable[[Dependencies[S]], Sequence[ServiceRuntime]]
) -> None:
    """Runs the services `create_apps` wires on one set of adapters until SIGTERM or SIGINT,
    which are obeyed from the start (opening the adapters included): tracing, adapters, the
    apps, and a flush of the last spans on the way out. Several services (`tai-server`) share
    `settings`' adapters through `Dependencies.shared_with`, and its metrics endpoint."""
    stop_requested = StopSignals(settings).install()
    provider = configure_tracing(settings)
    try:
        opening = asyncio.create_task(Dependencies.open(settings), name="open-adapters")
        asked = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({opening, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if not opening.done():
            log.info("%s: stop requested while opening its adapters", settings.service_name)
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            return
        deps = opening.result()
        metrics_server = None
        try:
            runtimes = create_apps(deps)
            if not any(r.deps is deps for r in runtimes) and settings.metrics_port:
                # The services share the process's registry: one endpoint serves them all.
                metrics_server = _start_metrics_server(settings)
            await serve_together(runtimes, stop_requested, settings.service_name)
        finally:
            if metrics_server is not None:
                metrics_server[0].shutdown()
                metrics_server[0].server_close()
            await deps.close()
    finally:
        if provider is not None:
            provider.shutdown()


def service_main(
    settings_type: type[S],
    create_app: Callable[[Dependencies[S]], ServiceRuntime | Sequence[ServiceRuntime]],
    **overrides: Any,
) -> None:
    """The body of each service's `main` (and `tai-server`'s, whose `create_app` wires several):
    its settings read from the environment (`overrides` win, e.g. from the command line),
    logging, then `run_services` on a new event loop. A setting that does not validate, or a
    `StartupError` (something the operator must fix), ends the process with one line on stderr
    naming what to fix, and exit status 2, without a traceback."""
    name = str(settings_type.model_fields["service_name"].default)
    try:
        settings = settings_type(**overrides)
    except pydantic.ValidationError as error:
        _exit_with(name, settings_problems(error))
    configure_logging(settings.service_name, settings.log_level, settings.log_format)

    def create_apps(deps: Dependencies[S]) -> Sequence[ServiceRuntime]:
        apps = create_app(deps)
        return [apps] if isinstance(apps, ServiceRuntime) else apps

    try:
        asyncio.run(run_services(settings, create_apps))
    except StartupError as error:
        _exit_with(settings.service_name, str(error))


def settings_problems(error: pydantic.ValidationError) -> str:
    """A settings validation error as one line naming each environment variable to fix."""
    problems = []
    for problem in error.errors():
        variable = "TAI_" + "_".join(str(part) for part in problem["loc"]).upper()
        problems.append(f"{variable}: {problem['msg']}")
    return "; ".join(problems)


def _exit_with(service_name: str, message: str) -> NoReturn:
    print(f"{service_name}: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _start_metrics_server(settings: ServiceSettings) -> tuple[Any, Any]:
    try:
        return prometheus_client.start_http_server(settings.metrics_port, addr=settings.host)
    except OSError as error:
        raise _port_error("TAI_METRICS_PORT", settings.host, settings.metrics_port, error) from None


async def _start_grpc(server: GrpcServer, settings: ServiceSettings) -> int:
    try:
        return await server.start()
    except RuntimeError as error:
        # grpc raises a bare RuntimeError ("Failed to bind to address …") for a port it cannot
        # bind, the cause only in its own log: binding a plain socket there tells it.
        if "Failed to bind" not in str(error):
            raise
        try:
            with socket.create_server((settings.host, settings.grpc_port)):
                pass
        except OSError as cause:
            raise _port_error("TAI_GRPC_PORT", settings.host, settings.grpc_port, cause) from None
        raise StartupError(
            f"TAI_GRPC_PORT: cannot listen on {settings.host}:{settings.grpc_port}"
        ) from None


def _port_error(setting: str, host: str, port: int, error: OSError) -> StartupError:
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        return StartupError(
            f"{setting}: {where} is in use by another process; stop it or choose another port"
        )
    return StartupError(f"{setting}: cannot listen on {where}: {error.strerror or error}")


@functools.cache
def _package_version() -> str:
    # Cached: reading the installed metadata parses files, and HealthCheck asks every call.
    try:
        return metadata.version("tai-common")
    except metadata.PackageNotFoundError:
        return "dev"


# gen0 allocations before a young collection, then gen0 and gen1 collections before the next
# older one (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (7_000, 20, 20)


def settle_garbage_collection() -> None:
    """Called once a service process has started: moves everything built at startup (modules,
    protobuf descriptors, clients, the loaded policies) out of the collector's reach, and runs
    the young collections less often.

    A full collection walks every tracked object, and those built at startup are most of them:
    under load it paused a service's event loop for 50–75 ms several times a minute, which is
    a large part of the latency tails. Not done by `start()`, which tests run many times in one
    process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
