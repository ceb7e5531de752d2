"""`enforce_policy` and `revoke_policy`: a Governor call at the task's time.

Parameters: `policy_id` (required), `expected_version` (optional: refuse if the policy moved
on), `reason`, and for `enforce_policy` `dry_run` ("true"/"false"). The task's idempotency key
is the request id, so a retried attempt replays the Governor's first receipt instead of
changing the policy twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from tai_client.governor import GovernorClient
from tai_common.core import InvalidArgument

from tai_scheduler.executors import downstream
from tai_scheduler.executors.port import ExecutorEnvironment, PermanentTaskError, TaskContext
from tai_scheduler.task import check_task_id

MAX_REASON_LENGTH = 1000
_BOOLEANS = {"": False, "false": False, "true": True}


class PolicyChange(StrEnum):
    ENFORCE = "enforce_policy"
    REVOKE = "revoke_policy"


class PolicyExecutor:
    """Enforces or revokes a policy through `tai_client.GovernorClient`."""

    def __init__(self, env: ExecutorEnvironment, change: PolicyChange) -> None:
        self._change = change
        self._target = env.settings.governor_target
        self._client = GovernorClient(env.channels.get(self._target), env.channels.options)
        self._breaker = env.breakers.for_target(self._target)
        self._max_timeout = env.channels.options.default_timeout_seconds

    def validate(self, parameters: Mapping[str, str]) -> None:
        """Raises `InvalidArgument` naming the bad parameter."""
        policy_id = parameters.get("policy_id", "")
        if not policy_id:
            raise InvalidArgument("parameters[policy_id]", f"is required by {self._change.value}")
        # Policy ids follow the same rules as task ids.
        check_task_id(policy_id, "parameters[policy_id]", submitted=True)
        _expected_version(parameters)
        if len(parameters.get("reason", "")) > MAX_REASON_LENGTH:
            raise InvalidArgument(
                "parameters[reason]", f"must be at most {MAX_REASON_LENGTH} characters"
            )
        if self._change is PolicyChange.ENFORCE:
            _dry_run(parameters)

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        try:
            self.validate(ctx.parameters)
        except InvalidArgument as error:
            raise PermanentTaskError(error.message) from None
        policy_id = ctx.parameters["policy_id"]
        expected = _expected_version(ctx.parameters)
        reason = ctx.parameters.get("reason") or f"scheduled task {ctx.task_id}"
        if self._change is PolicyChange.ENFORCE:
            dry_run = _dry_run(ctx.parameters)
            receipt = await downstream.call(
                self._breaker,
                ctx,
                lambda timeout: self._client.enforce(
                    policy_id,
                    expected_version=expected,
                    dry_run=dry_run,
                    reason=reason,
                    request_id=ctx.idempotency_key,
                    timeout=timeout,
                ),
                max_timeout=self._max_timeout,
            )
        else:
            receipt = await downstream.call(
                self._breaker,
                ctx,
                lambda timeout: self._client.revoke(
                    policy_id,
                    expected_version=expected,
                    reason=reason,
                    request_id=ctx.idempotency_key,
                    timeout=timeout,
                ),
                max_timeout=self._max_timeout,
            )
        return {
            "policy_id": receipt.resource_id or policy_id,
            "version": str(receipt.resource_version),
            "state": receipt.result_data.get("state", ""),
            "receipt_id": receipt.id,
            "replayed": "true" if receipt.replayed else "false",
        }


def _expected_version(parameters: Mapping[str, str]) -> int:
    raw = parameters.get("expected_version", "")
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidArgument(
            "parameters[expected_version]", f"must be a non-negative integer (got {raw[:32]!r})"
        )
    return int(raw)


def _dry_run(parameters: Mapping[str, str]) -> bool:
    raw = parameters.get("dry_run", "").lower()
    if raw not in _BOOLEANS:
        raise InvalidArgument("parameters[dry_run]", f"must be true or false (got {raw[:32]!r})")
    return _BOOLEANS[raw]


def enforce_policy(env: ExecutorEnvironment) -> PolicyExecutor:
    """Entry point `enforce_policy`."""
    return PolicyExecutor(env, PolicyChange.ENFORCE)


def revoke_policy(env: ExecutorEnvironment) -> PolicyExecutor:
    """Entry point `revoke_policy`."""
    return PolicyExecutor(env, PolicyChange.REVOKE)
