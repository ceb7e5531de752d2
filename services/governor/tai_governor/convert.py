"""Translation between the Governor's protobuf messages and its domain types."""

from __future__ import annotations

from cachetools import LRUCache
from tai.v1 import governor_pb2
from tai_common.core import InvalidArgument

from tai_governor.policy import (
    ActionLimit,
    ActionTemplate,
    LimitScope,
    PolicyContent,
    PolicyState,
    PolicyVersion,
)

STATE_TO_PROTO = {
    PolicyState.PROPOSED: governor_pb2.POLICY_STATE_PROPOSED,
    PolicyState.DRY_RUN: governor_pb2.POLICY_STATE_DRY_RUN,
    PolicyState.ENFORCED: governor_pb2.POLICY_STATE_ENFORCED,
    PolicyState.REVOKED: governor_pb2.POLICY_STATE_REVOKED,
}
STATE_FROM_PROTO = {value: key for key, value in STATE_TO_PROTO.items()}


SCOPE_TO_PROTO = {
    LimitScope.POLICY: governor_pb2.LIMIT_SCOPE_POLICY,
    LimitScope.TARGET: governor_pb2.LIMIT_SCOPE_TARGET,
}
SCOPE_FROM_PROTO = {
    governor_pb2.LIMIT_SCOPE_UNSPECIFIED: LimitScope.POLICY,
    **{value: key for key, value in SCOPE_TO_PROTO.items()},
}


def action_from_proto(message: governor_pb2.ActionTemplate) -> ActionTemplate:
    limits = []
    for index, limit in enumerate(message.limits):
        scope = SCOPE_FROM_PROTO.get(limit.scope)
        if scope is None:
            raise InvalidArgument(f"action.limits[{index}].scope", f"unknown scope {limit.scope}")
        limits.append(ActionLimit(limit.max_actions, limit.window_seconds, scope))
    return ActionTemplate(
        action_type=message.action_type,
        target_service=message.target_service,
        parameters=dict(message.parameters),
        cooldown_seconds=message.cooldown_seconds,
        ack_deadline_seconds=message.ack_deadline_seconds,
        max_deliveries=message.max_deliveries,
        limits=tuple(limits),
        require_approval=message.require_approval,
        approval_timeout_seconds=message.approval_timeout_seconds,
    )


def action_to_proto(action: ActionTemplate) -> governor_pb2.ActionTemplate:
    return governor_pb2.ActionTemplate(
        action_type=action.action_type,
        target_service=action.target_service,
        parameters=dict(action.parameters),
        cooldown_seconds=action.cooldown_seconds,
        ack_deadline_seconds=action.ack_deadline_seconds,
        max_deliveries=action.max_deliveries,
        limits=[
            governor_pb2.ActionLimit(
                max_actions=limit.max_actions,
                window_seconds=limit.window_seconds,
                scope=SCOPE_TO_PROTO[limit.scope],
            )
            for limit in action.limits
        ],
        require_approval=action.require_approval,
        approval_timeout_seconds=action.approval_timeout_seconds,
    )


def content_from_request(request: governor_pb2.ProposePolicyRequest) -> PolicyContent:
    return PolicyContent(
        policy_type=request.policy_type,
        name=request.policy_name,
        rules=dict(request.rules),
        enabled=request.enabled if request.HasField("enabled") else True,
        condition=request.condition,
        action=action_from_proto(request.action),
        description=request.description,
        effective_time_ns=request.effective_time_ns,
    )


def policy_to_proto(policy: PolicyVersion) -> governor_pb2.Policy:
    c = policy.content
    return governor_pb2.Policy(
        id=policy.id,
        policy_type=c.policy_type,
        policy_name=c.name,
        version=policy.version,
        rules=dict(c.rules),
        enabled=c.enabled,
        created_at_ns=policy.created_at_ns,
        updated_at_ns=policy.updated_at_ns,
        state=STATE_TO_PROTO[policy.state],
        condition=c.condition,
        action=action_to_proto(c.action),
        description=c.description,
        created_by=policy.created_by,
        last_modified_by=policy.last_modified_by,
        revision=policy.revision,
        effective_time_ns=c.effective_time_ns,
        rolled_back_from_version=policy.rolled_back_from_version,
        state_reason=policy.state_reason,
    )


class PolicyMessages:
    """`policy_to_proto`, remembered by (id, version): a version is written once and never
    changed, and building the message is a large share of a cached read's work."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._messages: LRUCache[tuple[str, int], governor_pb2.Policy] = LRUCache(maxsize)

    def shared(self, policy: PolicyVersion) -> governor_pb2.Policy:
        """The message, shared with other callers: only copy from it (a repeated field's
        `extend` or a constructor copies), never change it."""
        key = (policy.id, policy.version)
        message = self._messages.get(key)
        if message is None:
            message = self._messages[key] = policy_to_proto(policy)
        return message

    def copy(self, policy: PolicyVersion) -> governor_pb2.Policy:
        """A message of the caller's own."""
        message = governor_pb2.Policy()
        message.CopyFrom(self.shared(policy))
        return message


def policy_from_proto(message: governor_pb2.Policy) -> PolicyVersion:
    return PolicyVersion(
        id=message.id,
        version=message.version,
        state=STATE_FROM_PROTO[message.state],
        content=PolicyContent(
            policy_type=message.policy_type,
            name=message.policy_name,
            rules=dict(message.rules),
            enabled=message.enabled,
            condition=message.condition,
            action=action_from_proto(message.action),
            description=message.description,
            effective_time_ns=message.effective_time_ns,
        ),
        created_at_ns=message.created_at_ns,
        updated_at_ns=message.updated_at_ns,
        created_by=message.created_by,
        last_modified_by=message.last_modified_by,
        revision=message.revision,
        rolled_back_from_version=message.rolled_back_from_version,
        state_reason=message.state_reason,
    )
