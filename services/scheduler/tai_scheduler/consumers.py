"""Events from the other services that become tasks.

- `tai-policies`: a `policy.proposed` event whose policy has an `effective_time_ns` becomes an
  `enforce_policy` task at that time, id `enforce-<policy id>-v<version>`, which enforces that
  very version (`expected_version`), so a policy changed in between is not enforced by
  mistake.
- `tai-actions`: an `action.deferred` event (an action with a not-before time) becomes a
  `request_action` task at the action's `next_delivery_ns`, id `action-<action id>`, which
  hands the action back to the Coordinator when it is due.

Each consumer is a subscription shared by the Scheduler's replicas (each event reaches one of
them). Delivery is at least once; the deterministic task ids make the consumers idempotent: a
redelivered event meets ALREADY_EXISTS, which means it was handled.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf.message import Message as ProtoMessage
from tai.v1 import events_pb2
from tai_common.core import AlreadyExists, InvalidArgument
from tai_common.messaging import UndecodableEvent, events, topics
from tai_common.ports import EventBus, Message, Subscription, SubscriptionSpec

from tai_scheduler.executors.action import action_task_parameters
from tai_scheduler.service import TaskService
from tai_scheduler.task import (
    DEFAULT_PRIORITY,
    INTERNAL_LIMITS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Submission,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=ProtoMessage)

POLICY_SUBSCRIPTION = "scheduler-policies"
ACTION_SUBSCRIPTION = "scheduler-actions"
POLICY_PROPOSED = "policy.proposed"
ACTION_DEFERRED = "action.deferred"
# Both events name a time in the future (seconds away at the least, in practice), and most
# events on these topics are others': the consumers take them at most five times a second
# instead of waking for every action the Coordinator creates.
BATCH_DELAY_SECONDS = 0.2
# Who tasks made from events are created by.
PRINCIPAL = "scheduler"
# The consumers' subscriptions, shared by the replicas.
POLICY_SPEC = SubscriptionSpec(
    topic=topics.POLICIES,
    name=POLICY_SUBSCRIPTION,
    event_types=(POLICY_PROPOSED,),
    batch_delay_seconds=BATCH_DELAY_SECONDS,
)
ACTION_SPEC = SubscriptionSpec(
    topic=topics.ACTIONS,
    name=ACTION_SUBSCRIPTION,
    event_types=(ACTION_DEFERRED,),
    batch_delay_seconds=BATCH_DELAY_SECONDS,
)


def enforce_task_id(policy_id: str, version: int) -> str:
    return f"enforce-{policy_id}-v{version}"


def action_task_id(action_id: str) -> str:
    return f"action-{action_id}"


class EventConsumers:
    """The bus handlers that turn events into tasks."""

    def __init__(self, service: TaskService) -> None:
        self._service = service

    async def subscribe(self, bus: EventBus) -> list[Subscription]:
        """Starts both consumers; close the returned subscriptions to stop them."""
        return [
            await bus.subscribe(POLICY_SPEC, self.on_policy_message),
            await bus.subscribe(ACTION_SPEC, self.on_action_message),
        ]

    async def on_policy_message(self, message: Message) -> None:
        event = _decode(message)
        if event is None or event.event_type != POLICY_PROPOSED:
            return
        payload = _unpack(event, events_pb2.PolicyEvent)
        if payload is None:
            return
        policy = payload.policy
        if policy.effective_time_ns <= 0:
            return
        await self._submit_once(
            Submission(
                task_type="enforce_policy",
                task_id=enforce_task_id(policy.id, policy.version),
                parameters={
                    "policy_id": policy.id,
                    "expected_version": str(policy.version),
                    "reason": f"effective time of version {policy.version}",
                },
                scheduled_time_ns=policy.effective_time_ns,
            ),
            event,
        )

    async def on_action_message(self, message: Message) -> None:
        event = _decode(message)
        if event is None or event.event_type != ACTION_DEFERRED:
            return
        action_event = _unpack(event, events_pb2.ActionEvent)
        if action_event is None:
            return
        action = action_event.action
        priority = action.priority if MIN_PRIORITY <= action.priority <= MAX_PRIORITY else 0
        await self._submit_once(
            Submission(
                task_type="request_action",
                task_id=action_task_id(action.id),
                parameters=action_task_parameters(action),
                scheduled_time_ns=max(action.next_delivery_ns, 0),
                priority=priority or DEFAULT_PRIORITY,
            ),
            event,
        )

    async def _submit_once(self, submission: Submission, event: events_pb2.Event) -> None:
        """Submits the task an event asks for; a redelivery finds it there already.

        A store outage propagates, so the bus redelivers the event later.
        """
        try:
            task = await self._service.submit(
                submission, principal=PRINCIPAL, limits=INTERNAL_LIMITS, submitted_id=False
            )
        except AlreadyExists:
            log.debug("event %s: task %s exists already", event.event_id, submission.task_id)
            return
        except InvalidArgument as error:
            # Retrying cannot make it valid: drop it, loudly.
            log.error(
                "event %s (%s of %s) cannot become a task: %s",
                event.event_id,
                event.event_type,
                event.aggregate_id,
                error.message,
            )
            return
        log.info(
            "event %s (%s of %s) → task %s at %d",
            event.event_id,
            event.event_type,
            event.aggregate_id,
            task.id,
            task.next_run_ns,
        )


def _decode(message: Message) -> events_pb2.Event | None:
    try:
        return events.from_message(message)
    except UndecodableEvent:
        log.error(
            "message %s on %s is not a tai.v1.Event; dropped", message.message_id, message.topic
        )
        return None


def _unpack(event: events_pb2.Event, payload_type: type[M]) -> M | None:
    try:
        return events.unpack(event, payload_type)
    except UndecodableEvent as error:
        log.error("%s; dropped", error)
        return None
