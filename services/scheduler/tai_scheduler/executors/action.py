"""`request_action`: asks the Coordinator for an action at the task's time.

Parameters (all strings): `action_type` and `target_service` (required), `action_id`,
`source_service`, `priority`, `ack_deadline_seconds`, `max_deliveries`, `payload_b64` (the
payload, base64), and each action parameter as `param.<key>`. The Coordinator dedupes actions
by id, so the action id is `action_id` when given (a deferred action keeps its own id) and the
task's idempotency key otherwise: a retried attempt never creates a second action.

`action_task_parameters` is the inverse, used to turn a deferred `Action` into such a task.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from tai.v1 import common_pb2, coordinator_pb2
from tai_client import AlreadyExists
from tai_client.coordinator import CoordinatorClient
from tai_common.core import InvalidArgument

from tai_scheduler.executors import downstream
from tai_scheduler.executors.port import ExecutorEnvironment, PermanentTaskError, TaskContext
from tai_scheduler.task import check_task_id

PARAM_PREFIX = "param."
_INT_FIELDS = ("priority", "ack_deadline_seconds", "max_deliveries")
_MAX_INT_DIGITS = 12


def action_task_parameters(action: coordinator_pb2.Action) -> dict[str, str]:
    """The parameters of a `request_action` task that re-creates `action`."""
    parameters = {
        "action_id": action.id,
        "action_type": action.action_type,
        "target_service": action.target_service,
        "source_service": action.source_service,
        "priority": str(action.priority),
        "ack_deadline_seconds": str(action.ack_deadline_seconds),
        "max_deliveries": str(action.max_deliveries),
        "payload_b64": base64.b64encode(action.payload).decode(),
    }
    for key, value in action.parameters.items():
        parameters[PARAM_PREFIX + key] = value
    return parameters


class RequestActionExecutor:
    """Creates an action through `tai_client.CoordinatorClient.request_action`."""

    def __init__(self, env: ExecutorEnvironment) -> None:
        self._target = env.settings.coordinator_target
        self._client = CoordinatorClient(env.channels.get(self._target), env.channels.options)
        self._breaker = env.breakers.for_target(self._target)
        self._max_timeout = env.channels.options.default_timeout_seconds

    def validate(self, parameters: Mapping[str, str]) -> None:
        """Raises `InvalidArgument` naming the bad parameter."""
        for required in ("action_type", "target_service"):
            if not parameters.get(required):
                raise InvalidArgument(f"parameters[{required}]", "is required by request_action")
        if parameters.get("action_id"):
            check_task_id(parameters["action_id"], "parameters[action_id]", submitted=True)
        for name in _INT_FIELDS:
            _int_parameter(parameters, name)
        _payload(parameters)
        for key in parameters:
            if key == PARAM_PREFIX:
                raise InvalidArgument(f"parameters[{key}]", "names no action parameter")

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        try:
            self.validate(ctx.parameters)
        except InvalidArgument as error:
            raise PermanentTaskError(error.message) from None
        p = ctx.parameters
        action_id = p.get("action_id") or ctx.idempotency_key

        async def request(timeout: float) -> common_pb2.Receipt | None:
            try:
                return await self._client.request_action(
                    action_id=action_id,
                    action_type=p["action_type"],
                    target_service=p["target_service"],
                    source_service=p.get("source_service", ""),
                    parameters={
                        key.removeprefix(PARAM_PREFIX): value
                        for key, value in p.items()
                        if key.startswith(PARAM_PREFIX)
                    },
                    payload=_payload(p),
                    priority=_int_parameter(p, "priority"),
                    ack_deadline_seconds=_int_parameter(p, "ack_deadline_seconds"),
                    max_deliveries=_int_parameter(p, "max_deliveries"),
                    # Due now: the task itself waited for the action's time.
                    not_before_ns=0,
                    timeout=timeout,
                )
            except AlreadyExists:
                # The action exists already: an earlier attempt (or the Coordinator) made it.
                return None

        receipt = await downstream.call(self._breaker, ctx, request, max_timeout=self._max_timeout)
        if receipt is None:
            return {"action_id": action_id, "already_existed": "true"}
        return {
            "action_id": receipt.resource_id or action_id,
            "receipt_id": receipt.id,
            "replayed": "true" if receipt.replayed else "false",
        }


def _int_parameter(parameters: Mapping[str, str], name: str) -> int:
    raw = parameters.get(name, "")
    if not raw:
        return 0
    digits = raw.removeprefix("-")
    if not digits.isdigit() or len(digits) > _MAX_INT_DIGITS:
        raise InvalidArgument(f"parameters[{name}]", f"must be an integer (got {raw[:32]!r})")
    return int(raw)


def _payload(parameters: Mapping[str, str]) -> bytes:
    raw = parameters.get("payload_b64", "")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("parameters[payload_b64]", "is not valid base64") from None


def request_action(env: ExecutorEnvironment) -> RequestActionExecutor:
    """Entry point `request_action`."""
    return RequestActionExecutor(env)
