"""The policy domain: content, versions, validation and the lifecycle.

Plain Python, no gRPC and no store: the servicer translates protobuf to these types and the
repository persists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tai_common.core import FailedPrecondition, InvalidArgument, compile_condition
from tai_common.core.validation import (
    MAX_KEY_LENGTH,
    check_id,
    check_length,
    check_map,
    check_not_negative,
    check_range,
    check_service_name,
)

POLICY_TYPES = ("finance", "security", "operational")

MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 2000
MAX_MAP_ENTRIES = 100
MAX_VALUE_LENGTH = 4096
MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
MAX_ACK_DEADLINE_SECONDS = 24 * 3600
MAX_DELIVERIES = 100
MAX_LIMITS = 5
MAX_LIMIT_WINDOW_SECONDS = 7 * 24 * 3600
MAX_LIMIT_ACTIONS = 100_000
MAX_APPROVAL_TIMEOUT_SECONDS = 7 * 24 * 3600


class LimitScope(StrEnum):
    POLICY = "POLICY"
    TARGET = "TARGET"


@dataclass(frozen=True)
class ActionLimit:
    """At most `max_actions` actions in any `window_seconds` (of this policy, or for its
    target across the policies with the same target limit)."""

    max_actions: int
    window_seconds: int
    scope: LimitScope = LimitScope.POLICY

    def to_doc(self) -> dict[str, Any]:
        return {
            "max_actions": self.max_actions,
            "window_seconds": self.window_seconds,
            "scope": self.scope.value,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> ActionLimit:
        return cls(
            max_actions=int(data["max_actions"]),
            window_seconds=int(data["window_seconds"]),
            scope=LimitScope(data.get("scope", LimitScope.POLICY.value)),
        )


class PolicyState(StrEnum):
    PROPOSED = "PROPOSED"
    # Evaluated and recorded, but no action emitted.
    DRY_RUN = "DRY_RUN"
    ENFORCED = "ENFORCED"
    REVOKED = "REVOKED"


# The states in which an enabled policy is evaluated against signals (what `enabled_only` lists).
EVALUATED_STATES = frozenset({PolicyState.DRY_RUN, PolicyState.ENFORCED})

# Lifecycle: any live state can be revoked; REVOKED is final for the version chain until a new
# version is proposed (which starts again at PROPOSED).
TRANSITIONS: Mapping[PolicyState, frozenset[PolicyState]] = {
    PolicyState.PROPOSED: frozenset(
        {PolicyState.DRY_RUN, PolicyState.ENFORCED, PolicyState.REVOKED}
    ),
    PolicyState.DRY_RUN: frozenset({PolicyState.ENFORCED, PolicyState.REVOKED}),
    PolicyState.ENFORCED: frozenset({PolicyState.DRY_RUN, PolicyState.REVOKED}),
    PolicyState.REVOKED: frozenset(),
}


@dataclass(frozen=True)
class ActionTemplate:
    """What the Coordinator emits when the policy's condition matches a signal."""

    action_type: str = ""
    target_service: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    cooldown_seconds: int = 0
    ack_deadline_seconds: int = 0
    max_deliveries: int = 0
    limits: tuple[ActionLimit, ...] = ()
    require_approval: bool = False
    approval_timeout_seconds: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.action_type or self.target_service or self.parameters)


@dataclass(frozen=True)
class PolicyContent:
    """What a proposal sets, and what a rollback copies."""

    policy_type: str
    name: str
    rules: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    condition: str = ""
    action: ActionTemplate = field(default_factory=ActionTemplate)
    description: str = ""
    effective_time_ns: int = 0


@dataclass(frozen=True)
class PolicyVersion:
    """One immutable version of a policy."""

    id: str
    version: int
    state: PolicyState
    content: PolicyContent
    created_at_ns: int
    updated_at_ns: int
    created_by: str
    last_modified_by: str
    revision: int
    rolled_back_from_version: int = 0
    state_reason: str = ""

    def successor(
        self,
        *,
        state: PolicyState,
        now_ns: int,
        principal: str,
        revision: int,
        content: PolicyContent | None = None,
        rolled_back_from_version: int = 0,
        reason: str = "",
    ) -> PolicyVersion:
        """The next version of this policy."""
        return replace(
            self,
            version=self.version + 1,
            state=state,
            content=content or self.content,
            updated_at_ns=now_ns,
            last_modified_by=principal,
            revision=revision,
            rolled_back_from_version=rolled_back_from_version,
            state_reason=reason,
        )

    def to_doc(self) -> dict[str, Any]:
        c = self.content
        return {
            "id": self.id,
            "version": self.version,
            "state": self.state.value,
            "policy_type": c.policy_type,
            "name": c.name,
            "rules": dict(c.rules),
            "enabled": c.enabled,
            "condition": c.condition,
            "action": {
                "action_type": c.action.action_type,
                "target_service": c.action.target_service,
                "parameters": dict(c.action.parameters),
                "cooldown_seconds": c.action.cooldown_seconds,
                "ack_deadline_seconds": c.action.ack_deadline_seconds,
                "max_deliveries": c.action.max_deliveries,
                "limits": [limit.to_doc() for limit in c.action.limits],
                "require_approval": c.action.require_approval,
                "approval_timeout_seconds": c.action.approval_timeout_seconds,
            },
            "description": c.description,
            "effective_time_ns": c.effective_time_ns,
            "created_at_ns": self.created_at_ns,
            "updated_at_ns": self.updated_at_ns,
            "created_by": self.created_by,
            "last_modified_by": self.last_modified_by,
            "revision": self.revision,
            "rolled_back_from_version": self.rolled_back_from_version,
            "state_reason": self.state_reason,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> PolicyVersion:
        action = data.get("action") or {}
        return cls(
            id=data["id"],
            version=int(data["version"]),
            state=PolicyState(data["state"]),
            content=PolicyContent(
                policy_type=data["policy_type"],
                name=data["name"],
                rules=dict(data.get("rules") or {}),
                enabled=bool(data.get("enabled", True)),
                condition=data.get("condition", ""),
                action=ActionTemplate(
                    action_type=action.get("action_type", ""),
                    target_service=action.get("target_service", ""),
                    parameters=dict(action.get("parameters") or {}),
                    cooldown_seconds=int(action.get("cooldown_seconds", 0)),
                    ack_deadline_seconds=int(action.get("ack_deadline_seconds", 0)),
                    max_deliveries=int(action.get("max_deliveries", 0)),
                    limits=tuple(ActionLimit.from_doc(d) for d in action.get("limits") or ()),
                    require_approval=bool(action.get("require_approval", False)),
                    approval_timeout_seconds=int(action.get("approval_timeout_seconds", 0)),
                ),
                description=data.get("description", ""),
                effective_time_ns=int(data.get("effective_time_ns", 0)),
            ),
            created_at_ns=int(data["created_at_ns"]),
            updated_at_ns=int(data["updated_at_ns"]),
            created_by=data.get("created_by", ""),
            last_modified_by=data.get("last_modified_by", ""),
            revision=int(data["revision"]),
            rolled_back_from_version=int(data.get("rolled_back_from_version", 0)),
            state_reason=data.get("state_reason", ""),
        )


def check_policy_id(policy_id: str, field_name: str = "id") -> None:
    """Ids are chosen by callers too (the seed lets them), so keep them safe to use anywhere."""
    check_id(policy_id, field_name)


def validate_content(content: PolicyContent) -> None:
    """Raises `InvalidArgument`, naming the field, for anything a policy may not hold."""
    if not content.policy_type:
        raise InvalidArgument("policy_type", f"is required: one of {', '.join(POLICY_TYPES)}")
    if content.policy_type not in POLICY_TYPES:
        raise InvalidArgument(
            "policy_type",
            f"must be one of {', '.join(POLICY_TYPES)} (got {content.policy_type[:64]!r})",
        )
    if not content.name.strip():
        raise InvalidArgument("policy_name", "is required")
    check_length("policy_name", content.name, MAX_NAME_LENGTH)
    check_length("description", content.description, MAX_DESCRIPTION_LENGTH)
    _check_map("rules", content.rules)
    check_not_negative("effective_time_ns", content.effective_time_ns)
    action = content.action
    if content.condition:
        compile_condition(content.condition, "condition")
        if action.is_empty:
            raise InvalidArgument("action", "is required when a condition is set")
    if not action.is_empty:
        if not action.action_type:
            raise InvalidArgument("action.action_type", "is required")
        check_length("action.action_type", action.action_type, MAX_KEY_LENGTH)
        check_service_name(action.target_service, "action.target_service")
        _check_map("action.parameters", action.parameters)
    check_range("action.cooldown_seconds", action.cooldown_seconds, 0, MAX_COOLDOWN_SECONDS)
    check_range(
        "action.ack_deadline_seconds", action.ack_deadline_seconds, 0, MAX_ACK_DEADLINE_SECONDS
    )
    check_range("action.max_deliveries", action.max_deliveries, 0, MAX_DELIVERIES)
    if len(action.limits) > MAX_LIMITS:
        raise InvalidArgument("action.limits", f"at most {MAX_LIMITS} limits")
    for index, limit in enumerate(action.limits):
        field_name = f"action.limits[{index}]"
        check_range(f"{field_name}.max_actions", limit.max_actions, 1, MAX_LIMIT_ACTIONS)
        check_range(
            f"{field_name}.window_seconds", limit.window_seconds, 1, MAX_LIMIT_WINDOW_SECONDS
        )
    if (action.limits or action.require_approval) and action.is_empty:
        raise InvalidArgument("action", "limits and approval need an action")
    check_range(
        "action.approval_timeout_seconds",
        action.approval_timeout_seconds,
        0,
        MAX_APPROVAL_TIMEOUT_SECONDS,
    )


def check_transition(current: PolicyVersion, target: PolicyState) -> None:
    """Raises `FailedPrecondition` when `current` may not move to `target`."""
    if target in TRANSITIONS[current.state]:
        return
    if current.state is PolicyState.REVOKED:
        raise FailedPrecondition(
            f"policy {current.id!r} is REVOKED (version {current.version}) and cannot become "
            f"{target.value}; propose a new version of it first (e.g. with rollback_to_version)"
        )
    raise FailedPrecondition(
        f"policy {current.id!r} is already {current.state.value} (version {current.version})"
    )


def _check_map(field_name: str, values: Mapping[str, str]) -> None:
    check_map(field_name, values, max_entries=MAX_MAP_ENTRIES, max_value_length=MAX_VALUE_LENGTH)
