"""Wiring: builds the Coordinator from settings (`create_app`) without running it, so tests can
start it in-process; `main` runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from tai.v1 import coordinator_pb2_grpc, events_pb2
from tai_common import factory
from tai_common.core import ServiceSettings, TaiError
from tai_common.core.namespace import DEFAULT_NAMESPACE, namespace_or_none
from tai_common.messaging import events, replica_subscription, subscribe_events, topics
from tai_common.namespacing import for_each_namespace
from tai_common.ports import SubscriptionSpec
from tai_common.runtime import Dependencies, ServiceRuntime, internal_channel_options, service_main

from tai_coordinator import metrics, repository, silences
from tai_coordinator.dispatcher import ActionDispatcher
from tai_coordinator.policy_book import PolicyBooks
from tai_coordinator.policy_sync import PolicySync
from tai_coordinator.repository import CoordinatorRepository
from tai_coordinator.retention import SignalRetention
from tai_coordinator.service import CoordinatorService
from tai_coordinator.servicer import SERVICE_NAME, CoordinatorServicer
from tai_coordinator.silences import SilenceBooks, SilenceService
from tai_coordinator.simulation import PolicySimulator

log = logging.getLogger(__name__)


class CoordinatorSettings(ServiceSettings):
    service_name: str = "coordinator"
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Full policy listing from the Governor, besides the events.
    policy_resync_seconds: float = 300.0
    # How long signals, with their decision records, are kept: ExplainSignal's reach and
    # SimulatePolicy's history.
    signal_retention_seconds: float = 7 * 24 * 3600.0
    # At most this many signals are kept, the oldest pruned first (0: no bound).
    signal_retention_max_count: int = 10_000_000
    signal_prune_every_seconds: float = 300.0
    # SimulatePolicy calls running at once on a replica; more are refused (RESOURCE_EXHAUSTED).
    max_concurrent_simulations: int = 2
    # How often each replica reads the silences: a silence created on another replica holds
    # here at most this much later.
    silence_refresh_seconds: float = 1.0
    # How long an action waits for approval when its policy does not say (then EXPIRED).
    approval_timeout_seconds: float = 3600.0
    # How often a replica looks for approvals past their deadline.
    approval_expiry_every_seconds: float = 1.0


class CoordinatorSubscriptions(NamedTuple):
    """The Coordinator's bus subscriptions, both per replica: every replica keeps its own
    policy book and wakes its own action streams."""

    policies: SubscriptionSpec
    actions: SubscriptionSpec


def subscriptions(settings: ServiceSettings, replica_id: str) -> CoordinatorSubscriptions:
    """The subscriptions the replica `replica_id` opens (also read by the bus provisioning)."""
    return CoordinatorSubscriptions(
        policies=replica_subscription(
            topics.POLICIES, service=settings.service_name, replica_id=replica_id
        ),
        actions=replica_subscription(
            topics.ACTIONS,
            service=settings.service_name,
            replica_id=replica_id,
            event_types=ActionDispatcher.WAKING_EVENTS,
            batch_delay_seconds=ActionDispatcher.WAKING_BATCH_DELAY_SECONDS,
        ),
    )


def create_app(deps: Dependencies[CoordinatorSettings]) -> ServiceRuntime:
    """The Coordinator's runtime, wired but not started."""
    settings = deps.settings
    runtime = ServiceRuntime(deps, index_specs=(*repository.INDEXES, *silences.INDEXES))
    # Every namespace has its own policies, silences, streams and windows; the workers below
    # serve each namespace in turn, inside it.
    books = PolicyBooks()
    sync = PolicySync(
        books,
        settings.governor_target,
        internal_channel_options(settings),
        resync_seconds=settings.policy_resync_seconds,
    )
    event_factory = events.EventFactory(settings.service_name, deps.clock, deps.ids)
    dispatcher = ActionDispatcher(deps.store, deps.clock, event_factory, runtime.relay.notify)
    limiter = factory.open_window_limiter(settings, deps.store)
    runtime.add_shutdown(limiter.close)
    silence_books = SilenceBooks()
    silence_service = SilenceService(deps.store, silence_books, deps.clock, deps.ids, runtime.audit)
    service = CoordinatorService(
        deps.store,
        deps.clock,
        deps.ids,
        event_factory,
        sync,
        on_committed=runtime.relay.notify,
        dispatch=dispatcher,
        cache=deps.cache,
        audit=runtime.audit,
        silences=silence_service,
        limiter=limiter,
        namespaces=runtime.namespaces,
        namespace_metric_labels=settings.namespace_metric_labels,
        replica_id=settings.replica_id,
        signal_retention_seconds=settings.signal_retention_seconds,
        approval_timeout_seconds=settings.approval_timeout_seconds,
    )
    simulator = PolicySimulator(
        CoordinatorRepository(deps.store, event_factory),
        deps.clock,
        sync.fetch_policy,
        settings.max_concurrent_simulations,
    )
    servicer = CoordinatorServicer(
        service, simulator, silence_service, dispatcher, runtime, deps.clock
    )
    runtime.attach_server(
        [lambda server: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )

    async def start() -> None:
        async def subscribe(
            spec: SubscriptionSpec, on_event: Callable[[events_pb2.Event], Awaitable[None]]
        ) -> None:
            subscription = await subscribe_events(deps.bus, spec, on_event)
            runtime.add_shutdown(subscription.close)

        specs = subscriptions(settings, settings.replica_id)
        # Subscribe before listing, so that no change falls between the two. Startup runs in
        # the default namespace: its policies and silences are read now, every other
        # namespace's at its first use.
        await subscribe(specs.policies, sync.on_policy_event)
        await subscribe(specs.actions, dispatcher.on_action_event)
        await sync.load()
        await silence_service.refresh()

    metrics.ACTIVE_POLICIES.set_function(lambda: len(books))
    runtime.health_details += [
        lambda: f"active_policies={len(books)}",
        # How far the default namespace's book has got (HealthCheck, open to every caller,
        # runs in the default namespace).
        lambda: f"policy_revision={books.revision(namespace_or_none() or DEFAULT_NAMESPACE)}",
    ]
    runtime.add_startup(start)
    runtime.add_shutdown(dispatcher.close)
    runtime.add_shutdown(sync.close)

    async def resync_policies() -> None:
        await sync.run(runtime.namespaces)

    runtime.add_worker("policy-resync", resync_policies)
    retention = SignalRetention(
        deps.store,
        deps.clock,
        max_age_seconds=settings.signal_retention_seconds,
        max_count=settings.signal_retention_max_count,
        every_seconds=settings.signal_prune_every_seconds,
    )

    async def prune_signals() -> None:
        await retention.run(runtime.namespaces.serving)

    runtime.add_worker("signal-retention", prune_signals)

    async def refresh_silences() -> None:
        while True:
            await asyncio.sleep(settings.silence_refresh_seconds)
            # Deleted namespaces' silences are forgotten; each other's read again in it.
            silence_books.retain(await runtime.namespaces.serving())
            await for_each_namespace(runtime.namespaces, silence_service.refresh_pass)

    runtime.add_worker("silence-refresh", refresh_silences)

    async def expire_approvals(namespace: str) -> None:
        try:
            await service.expire_approvals()
        except TaiError as error:
            log.warning(
                "cannot expire approvals of namespace %s yet (%s); retrying",
                namespace,
                error.message,
            )

    runtime.add_namespace_pass(
        "approval-expiry", expire_approvals, settings.approval_expiry_every_seconds
    )
    return runtime


def main() -> None:
    service_main(CoordinatorSettings, create_app)
