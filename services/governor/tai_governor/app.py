"""Wiring: builds the Governor from settings (`create_app`) without running it, so tests can
start it in-process; `main` runs it until SIGTERM."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from tai.v1 import common_pb2, governor_pb2_grpc
from tai_common.core import ServiceSettings
from tai_common.core.namespace import DEFAULT_NAMESPACE
from tai_common.messaging import (
    AuditLog,
    events,
    idempotency,
    replica_subscription,
    subscribe_events,
    topics,
)
from tai_common.ports import Message, SubscriptionSpec
from tai_common.runtime import Dependencies, ServiceRuntime, service_main

from tai_governor import repository
from tai_governor.namespaces import NamespaceAdmin
from tai_governor.service import PolicyService, refresh_policy_gauge
from tai_governor.servicer import SERVICE_NAME, GovernorServicer


class GovernorSettings(ServiceSettings):
    service_name: str = "governor"
    grpc_port: int = 50051
    metrics_port: int = 9101


class GovernorSubscriptions(NamedTuple):
    """The Governor's bus subscriptions."""

    # Per replica: each replica's policy feed and cache follow every policy change.
    policies: SubscriptionSpec
    # Shared by the replicas: the suite's audit log, each record appended by one of them.
    audit_log: SubscriptionSpec


def subscriptions(settings: ServiceSettings, replica_id: str) -> GovernorSubscriptions:
    """The subscriptions the replica `replica_id` opens (also read by the bus provisioning)."""
    return GovernorSubscriptions(
        policies=replica_subscription(
            topics.POLICIES, service=settings.service_name, replica_id=replica_id
        ),
        # Up to 64 records at once: `AuditLog` appends those that arrive together in one
        # transaction, so a backlog drains in large batches. Nobody waits on a record, so
        # they are let gather for a fifth of a second: a steady trickle is batched too.
        audit_log=SubscriptionSpec(
            topic=topics.AUDIT_EVENTS,
            name="governor-audit-log",
            max_concurrency=64,
            batch_delay_seconds=0.2,
        ),
    )


def create_app(deps: Dependencies[GovernorSettings]) -> ServiceRuntime:
    """The Governor's runtime, wired but not started."""
    specs = subscriptions(deps.settings, deps.settings.replica_id)
    runtime = ServiceRuntime(deps, index_specs=[*repository.INDEXES, *idempotency.INDEXES])
    service = PolicyService(
        deps.store,
        deps.clock,
        deps.ids,
        events.EventFactory(deps.settings.service_name, deps.clock, deps.ids),
        on_committed=runtime.relay.notify,
        until_stopping=lambda awaitable: runtime.server.until_stopping(awaitable),
        cache=deps.cache,
        audit=runtime.audit,
        namespaces=runtime.namespaces,
    )
    audit_log = AuditLog(deps.store)
    admin = NamespaceAdmin(runtime.namespaces, deps.store, runtime.audit, runtime.relay.notify)
    servicer = GovernorServicer(service, runtime, audit_log, admin)
    runtime.attach_server(
        [lambda server: governor_pb2_grpc.add_GovernorServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )

    async def subscribe() -> None:
        # The feed starts from the store's last revision before the subscription exists; the
        # changes in between are read from the store by its worker.
        await service.feed()
        subscription = await subscribe_events(deps.bus, specs.policies, service.on_policy_event)
        runtime.add_shutdown(subscription.close)

    async def consume_audit_events() -> None:
        # The Governor keeps the suite's audit log: one shared subscription, so each record
        # is appended by one replica.
        async def append(message: Message) -> None:
            await audit_log.append(
                events.unpack(events.from_message(message), common_pb2.AuditRecord)
            )

        subscription = await deps.bus.subscribe(specs.audit_log, append)
        runtime.add_shutdown(subscription.close)

    async def count_policies() -> None:
        while True:
            await refresh_policy_gauge(
                deps.store, runtime.namespaces, deps.settings.namespace_metric_labels
            )
            await asyncio.sleep(15.0)

    async def purge_deleted_namespaces() -> None:
        # Namespaces deleted with force: their data goes in batches, then their entry.
        while True:
            deleted = await runtime.namespaces.purge()
            await asyncio.sleep(0.0 if deleted else 2.0)

    # How far the default namespace's streams (and so the Coordinators, which compare) have got.
    runtime.health_details.append(
        lambda: f"policy_revision={service.feed_revision(DEFAULT_NAMESPACE)}"
    )
    runtime.add_worker("policy-gauge", count_policies)
    runtime.add_namespace_pass("policy-feed", service.catch_up_feed, 0.5)
    runtime.add_worker("namespace-purge", purge_deleted_namespaces)
    runtime.add_startup(subscribe)
    runtime.add_startup(consume_audit_events)
    runtime.add_startup(service.cache.start)
    return runtime


def main() -> None:
    service_main(GovernorSettings, create_app)
