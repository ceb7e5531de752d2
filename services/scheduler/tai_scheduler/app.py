"""Wiring: builds the Scheduler from settings (`create_app`) without running it, so tests can
start it in-process; `main` runs it until SIGTERM."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import Field, model_validator
from tai.v1 import scheduler_pb2_grpc
from tai_common.core import ServiceSettings
from tai_common.core.metrics import CIRCUIT_BREAKER_STATE
from tai_common.messaging import events, replica_subscription, subscribe_events, topics
from tai_common.ports import SubscriptionSpec
from tai_common.runtime import Dependencies, ServiceRuntime, internal_channel_options, service_main
from tai_rpc.breaker import BreakerConfig, BreakerState, CircuitBreaker, CircuitBreakers

from tai_scheduler import consumers, repository
from tai_scheduler.consumers import EventConsumers
from tai_scheduler.due_tasks import DueTasksGauge
from tai_scheduler.executors.port import ChannelPool, ExecutorEnvironment
from tai_scheduler.executors.registry import ExecutorRegistry
from tai_scheduler.service import TaskService, Wakeup
from tai_scheduler.servicer import SERVICE_NAME, SchedulerServicer
from tai_scheduler.worker import Worker, WorkerConfig


class SchedulerSettings(ServiceSettings):
    service_name: str = "scheduler"
    grpc_port: int = 50053
    metrics_port: int = 9103

    # Attempts one replica runs at once.
    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    # How long a claimed task stays this replica's without renewal (renewed every third).
    lease_seconds: float = Field(default=10.0, gt=0)
    # The longest the worker sleeps between two looks at the store.
    fallback_poll_seconds: float = Field(default=1.0, gt=0)
    # Due tasks read per claim; the highest priorities among them are claimed first.
    claim_scan: int = Field(default=64, ge=1, le=1000)
    # Tasks falling due within this horizon are claimed ahead, held in memory and started at
    # their due time (0: claimed once due; unset: a tenth of lease_seconds, 1 s by default).
    # At most half of lease_seconds.
    claim_ahead_seconds: float | None = Field(default=None, ge=0)
    # Claimed tasks one replica holds waiting at most (for their due time, or a free slot).
    claim_ahead_limit: int = Field(default=1024, ge=0, le=100_000)
    # How often tai_scheduler_due_tasks is counted in the store (two count queries).
    due_tasks_count_seconds: float = Field(default=5.0, gt=0)
    # Deadline of an executor's call when the attempt has more time than this.
    call_timeout_seconds: float = Field(default=10.0, gt=0)
    # Circuit breaker per downstream target.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=30.0, ge=0)
    breaker_success_threshold: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _claim_ahead_within_the_lease(self) -> SchedulerSettings:
        # A claim ahead outlives its horizon under its lease; a horizon near the lease would
        # leave a dead replica's tasks unclaimed long after their due time.
        if self.claim_ahead_seconds is not None and self.claim_ahead_seconds > (
            self.lease_seconds / 2
        ):
            raise ValueError(
                f"claim_ahead_seconds ({self.claim_ahead_seconds:g}) must be at most half of "
                f"lease_seconds ({self.lease_seconds:g})"
            )
        return self


_BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def export_breaker_state(breaker: CircuitBreaker) -> None:
    """`tai_circuit_breaker_state{target}` reads the breaker's state when scraped."""
    CIRCUIT_BREAKER_STATE.labels(target=breaker.target).set_function(
        lambda: _BREAKER_STATE_VALUES[breaker.state]
    )


class SchedulerSubscriptions(NamedTuple):
    """The Scheduler's bus subscriptions."""

    # Per replica: wakes this replica's worker and its task streams.
    tasks: SubscriptionSpec
    # Shared by the replicas: the events that become tasks (`consumers`).
    policies: SubscriptionSpec
    actions: SubscriptionSpec


def subscriptions(settings: ServiceSettings, replica_id: str) -> SchedulerSubscriptions:
    """The subscriptions the replica `replica_id` opens (also read by the bus provisioning)."""
    return SchedulerSubscriptions(
        tasks=replica_subscription(
            topics.TASKS, service=settings.service_name, replica_id=replica_id
        ),
        policies=consumers.POLICY_SPEC,
        actions=consumers.ACTION_SPEC,
    )


def create_app(deps: Dependencies[SchedulerSettings]) -> ServiceRuntime:
    """The Scheduler's runtime, wired but not started."""
    settings = deps.settings
    runtime = ServiceRuntime(deps, index_specs=repository.INDEXES)
    env = ExecutorEnvironment(
        settings,
        # Its executors call the Governor and the Coordinator as the Scheduler: mutual TLS
        # with its certificate, or its service token.
        ChannelPool(internal_channel_options(settings, settings.call_timeout_seconds)),
        CircuitBreakers(
            on_new=export_breaker_state,
            config=BreakerConfig(
                failure_threshold=settings.breaker_failure_threshold,
                reset_timeout_seconds=settings.breaker_reset_seconds,
                success_threshold=settings.breaker_success_threshold,
            ),
        ),
    )
    executors = ExecutorRegistry.discover(env)
    event_factory = events.EventFactory(settings.service_name, deps.clock, deps.ids)
    wakeup = Wakeup()
    service = TaskService(
        deps.store,
        deps.clock,
        deps.ids,
        event_factory,
        executors,
        on_committed=runtime.relay.notify,
        wakeup=wakeup,
        until_stopping=lambda awaitable: runtime.server.until_stopping(awaitable),
        audit=runtime.audit,
        replica_id=settings.replica_id,
        namespaces=runtime.namespaces,
    )
    servicer = SchedulerServicer(service, runtime)
    server = runtime.attach_server(
        [lambda server: scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )
    worker = Worker(
        deps.store,
        deps.clock,
        event_factory,
        executors,
        WorkerConfig(
            replica_id=settings.replica_id,
            concurrency=settings.worker_concurrency,
            lease_seconds=settings.lease_seconds,
            fallback_poll_seconds=settings.fallback_poll_seconds,
            claim_scan=settings.claim_scan,
            claim_ahead_seconds=settings.claim_ahead_seconds,
            claim_ahead_limit=settings.claim_ahead_limit,
        ),
        on_committed=runtime.relay.notify,
        stopping=server.stopping,
        # Every active namespace's tasks are claimed, each inside its namespace.
        namespaces=runtime.namespaces.serving,
    )
    wakeup.subscribe(worker.wake, ended=worker.task_ended)
    runtime.add_worker("task-worker", worker.run)
    runtime.add_worker("task-lease-renewer", worker.renew_leases)
    due_tasks = DueTasksGauge(
        repository.TaskRepository(deps.store),
        deps.clock,
        settings.due_tasks_count_seconds,
        namespaces=runtime.namespaces.serving,
    )
    runtime.add_worker("due-tasks-gauge", due_tasks.run)
    # Shutdown hooks run in reverse: subscriptions close, running attempts drain (or release
    # their leases), then the executors' channels close.
    runtime.add_shutdown(env.channels.close)

    async def stop_worker() -> None:
        await worker.stop(settings.shutdown_grace_seconds)

    runtime.add_shutdown(stop_worker)

    async def subscribe() -> None:
        updates = await subscribe_events(
            deps.bus, subscriptions(settings, settings.replica_id).tasks, service.on_task_event
        )
        runtime.add_shutdown(updates.close)
        for subscription in await EventConsumers(service).subscribe(deps.bus):
            runtime.add_shutdown(subscription.close)

    runtime.add_startup(subscribe)
    return runtime


def main() -> None:
    service_main(SchedulerSettings, create_app)
