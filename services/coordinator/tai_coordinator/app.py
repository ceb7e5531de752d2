"""Wiring: builds the Coordinator from settings (`create_app`) without running it, so tests can
start it in-process; `main` runs it until SIGTERM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tai.v1 import coordinator_pb2_grpc, events_pb2
from tai_common.bus import events, topics
from tai_common.bus.fanout import subscribe_replica
from tai_common.config import ServiceSettings
from tai_common.grpc.security import internal_channel_options
from tai_common.runtime import Dependencies, ServiceRuntime, service_main

from tai_coordinator import metrics, repository
from tai_coordinator.dispatcher import ActionDispatcher
from tai_coordinator.policy_book import PolicyBook
from tai_coordinator.policy_sync import PolicySync
from tai_coordinator.service import CoordinatorService
from tai_coordinator.servicer import SERVICE_NAME, CoordinatorServicer


class CoordinatorSettings(ServiceSettings):
    service_name: str = "coordinator"
    grpc_port: int = 50052
    metrics_port: int = 9102
    # Full policy listing from the Governor, besides the events.
    policy_resync_seconds: float = 300.0


def create_app(deps: Dependencies) -> ServiceRuntime:
    """The Coordinator's runtime, wired but not started."""
    settings = deps.settings
    runtime = ServiceRuntime(deps, index_specs=repository.INDEXES)
    book = PolicyBook()
    sync = PolicySync(
        book,
        settings.governor_target,
        internal_channel_options(settings),
        resync_seconds=getattr(settings, "policy_resync_seconds", 300.0),
    )
    event_factory = events.EventFactory(settings.service_name, deps.clock, deps.ids)
    dispatcher = ActionDispatcher(deps.store, deps.clock, event_factory, runtime.relay.notify)
    service = CoordinatorService(
        deps.store,
        deps.clock,
        deps.ids,
        event_factory,
        book,
        on_committed=runtime.relay.notify,
        dispatch=dispatcher,
        cache=deps.cache,
        audit=runtime.audit,
    )
    servicer = CoordinatorServicer(service, dispatcher, runtime)
    runtime.attach_server(
        [lambda server: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )

    async def start() -> None:
        async def subscribe(
            topic: str,
            on_event: Callable[[events_pb2.Event], Awaitable[None]],
            event_types: tuple[str, ...] = (),
            batch_delay_seconds: float = 0.0,
        ) -> None:
            subscription = await subscribe_replica(
                deps.bus,
                topic=topic,
                service=settings.service_name,
                replica_id=settings.replica_id,
                on_event=on_event,
                event_types=event_types,
                batch_delay_seconds=batch_delay_seconds,
            )
            runtime.add_shutdown(subscription.close)

        # Subscribe before listing, so that no change falls between the two.
        await subscribe(topics.POLICIES, sync.on_policy_event)
        await subscribe(
            topics.ACTIONS,
            dispatcher.on_action_event,
            ActionDispatcher.WAKING_EVENTS,
            ActionDispatcher.WAKING_BATCH_DELAY_SECONDS,
        )
        await sync.load()

    metrics.ACTIVE_POLICIES.set_function(lambda: len(book))
    runtime.health_details += [
        lambda: f"active_policies={len(book)}",
        lambda: f"policy_revision={book.revision}",
    ]
    runtime.add_startup(start)
    runtime.add_shutdown(dispatcher.close)
    runtime.add_worker("policy-resync", sync.run)
    return runtime


def main() -> None:
    service_main(CoordinatorSettings(), create_app)
