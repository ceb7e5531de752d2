"""The Coordinator's domain: signals, actions and the action lifecycle.

Plain Python: the servicer translates protobuf to these types, the repository persists them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tai_common.core import FailedPrecondition, InvalidArgument, signal_variables
from tai_common.core.units import NS_PER_SECOND
from tai_common.core.validation import (
    MAX_KEY_LENGTH,
    check_map,
    check_not_negative,
    check_range,
    check_size,
)
from tai_common.core.validation import check_id as check_id
from tai_common.core.validation import check_length as check_length
from tai_common.core.validation import check_service_name as check_service_name

from tai_coordinator.decisions import DecisionRecord

SIGNAL_TYPES = ("alert", "event", "command")
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE_LENGTH = 1024
MAX_PARAMETER_VALUE_LENGTH = 4096
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_MESSAGE_LENGTH = 1024
DEFAULT_ACK_DEADLINE_SECONDS = 30
MAX_ACK_DEADLINE_SECONDS = 24 * 3600
DEFAULT_MAX_DELIVERIES = 5
MAX_DELIVERIES = 100
DEFAULT_ACTION_PRIORITY = 5


class ActionStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    ACCEPTED = "ACCEPTED"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {ActionStatus.COMPLETED, ActionStatus.REJECTED, ActionStatus.FAILED, ActionStatus.EXPIRED}
)
OPEN_STATUSES = (
    ActionStatus.AWAITING_APPROVAL,
    ActionStatus.PENDING,
    ActionStatus.DELIVERED,
    ActionStatus.ACCEPTED,
)
# Statuses a stream may (re)deliver.
DELIVERABLE_STATUSES = (ActionStatus.PENDING, ActionStatus.DELIVERED)

# What a target service may report, and from which statuses (an operator may also settle an
# action that was never delivered, hence PENDING).
ACKNOWLEDGEMENTS: Mapping[str, ActionStatus] = {
    "accepted": ActionStatus.ACCEPTED,
    "completed": ActionStatus.COMPLETED,
    "rejected": ActionStatus.REJECTED,
    "failed": ActionStatus.FAILED,
}
ACK_ALLOWED_FROM: Mapping[ActionStatus, frozenset[ActionStatus]] = {
    ActionStatus.ACCEPTED: frozenset({ActionStatus.PENDING, ActionStatus.DELIVERED}),
    ActionStatus.COMPLETED: frozenset(
        {ActionStatus.PENDING, ActionStatus.DELIVERED, ActionStatus.ACCEPTED}
    ),
    ActionStatus.REJECTED: frozenset({ActionStatus.PENDING, ActionStatus.DELIVERED}),
    ActionStatus.FAILED: frozenset(
        {ActionStatus.PENDING, ActionStatus.DELIVERED, ActionStatus.ACCEPTED}
    ),
}


@dataclass(frozen=True)
class SignalInput:
    """A signal as submitted."""

    signal_id: str
    signal_type: str
    priority: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    payload: bytes = b""
    source: str = ""
    timestamp_ns: int = 0

    def validate(self) -> None:
        if self.signal_id:
            check_id(self.signal_id, "id")
        if self.signal_type not in SIGNAL_TYPES:
            raise InvalidArgument(
                "signal_type",
                f"must be one of {', '.join(SIGNAL_TYPES)} (got {self.signal_type[:64]!r})",
            )
        check_range("priority", self.priority, 1, 10)
        _check_strings("metadata", self.metadata, MAX_METADATA_VALUE_LENGTH)
        check_size("payload", self.payload, MAX_PAYLOAD_BYTES)
        check_length("source", self.source, MAX_KEY_LENGTH)
        check_not_negative("timestamp_ns", self.timestamp_ns)

    def variables(self, received_at_ns: int) -> dict[str, Any]:
        """The `signal` variable a policy condition sees (its time: when it happened, or else
        when it was received)."""
        return signal_variables(
            signal_id=self.signal_id,
            signal_type=self.signal_type,
            priority=self.priority,
            source=self.source,
            metadata=self.metadata,
            payload_size=len(self.payload),
            timestamp_ns=self.timestamp_ns or received_at_ns,
        )

    def fingerprint(self) -> str:
        """What makes two signals "identical" for cooldown dedup: everything but id and time."""
        digest = hashlib.sha256()
        for part in (self.signal_type, self.source, str(self.priority)):
            digest.update(part.encode())
            digest.update(b"\x00")
        for key, value in sorted(self.metadata.items()):
            digest.update(f"{key}\x01{value}\x00".encode())
        digest.update(hashlib.sha256(self.payload).digest())
        return digest.hexdigest()[:32]


@dataclass(frozen=True)
class StoredSignal:
    signal: SignalInput
    fingerprint: str
    received_at_ns: int
    matched_policy_ids: tuple[str, ...] = ()
    action_ids: tuple[str, ...] = ()
    dry_run_policy_ids: tuple[str, ...] = ()
    suppressed_policy_ids: tuple[str, ...] = ()
    created_by: str = ""
    # None for a signal stored before decision records were kept.
    decision: DecisionRecord | None = None

    @property
    def id(self) -> str:
        return self.signal.signal_id

    def to_doc(self, expires_at_ns: int) -> dict[str, Any]:
        s = self.signal
        return {
            "id": s.signal_id,
            "signal_type": s.signal_type,
            "priority": s.priority,
            "metadata": dict(s.metadata),
            "payload_b64": base64.b64encode(s.payload).decode(),
            "source": s.source,
            "timestamp_ns": s.timestamp_ns,
            "fingerprint": self.fingerprint,
            "received_at_ns": self.received_at_ns,
            "matched_policy_ids": list(self.matched_policy_ids),
            "action_ids": list(self.action_ids),
            "dry_run_policy_ids": list(self.dry_run_policy_ids),
            "suppressed_policy_ids": list(self.suppressed_policy_ids),
            "created_by": self.created_by,
            "decision": self.decision.to_doc() if self.decision else None,
            # Backends with TTL (Firestore, the SQLite janitor) remove the signal after this;
            # `SignalRetention` also prunes by age and count.
            "expires_at_ns": expires_at_ns,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any], *, with_decision: bool = True) -> StoredSignal:
        """The stored signal; without its decision record when `with_decision` is False (a
        rehearsal reads none, and decoding it is about a quarter of a rehearsal's time)."""
        decision = data.get("decision") if with_decision else None
        return cls(
            signal=SignalInput(
                signal_id=data["id"],
                signal_type=data["signal_type"],
                priority=int(data["priority"]),
                metadata=dict(data.get("metadata") or {}),
                payload=base64.b64decode(data.get("payload_b64", "")),
                source=data.get("source", ""),
                timestamp_ns=int(data.get("timestamp_ns", 0)),
            ),
            fingerprint=data["fingerprint"],
            received_at_ns=int(data["received_at_ns"]),
            matched_policy_ids=tuple(data.get("matched_policy_ids", ())),
            action_ids=tuple(data.get("action_ids", ())),
            dry_run_policy_ids=tuple(data.get("dry_run_policy_ids", ())),
            suppressed_policy_ids=tuple(data.get("suppressed_policy_ids", ())),
            created_by=data.get("created_by", ""),
            decision=DecisionRecord.from_doc(decision) if decision else None,
        )


@dataclass(frozen=True)
class Action:
    """An action addressed to a target service, and where it is in its lifecycle."""

    id: str
    action_type: str
    target_service: str
    status: ActionStatus
    created_at_ns: int
    updated_at_ns: int
    next_delivery_ns: int
    parameters: Mapping[str, str] = field(default_factory=dict)
    payload: bytes = b""
    source_service: str = ""
    timestamp_ns: int = 0
    policy_id: str = ""
    policy_version: int = 0
    signal_id: str = ""
    signal_received_at_ns: int = 0
    delivery_count: int = 0
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    ack_deadline_seconds: int = DEFAULT_ACK_DEADLINE_SECONDS
    status_message: str = ""
    priority: int = DEFAULT_ACTION_PRIORITY
    created_by: str = ""
    # Incremented by every change; the `aggregate_version` of its events.
    version: int = 1
    # For RequestAction: a digest of the request, to tell a retry from a reused id.
    request_fingerprint: str = ""
    # W3C trace context of the call that created it: its deliveries continue that trace.
    trace_context: Mapping[str, str] = field(default_factory=dict)
    # For an action that required approval: until when it may be approved, and the review.
    approval_deadline_ns: int = 0
    reviewed_by: str = ""
    reviewed_at_ns: int = 0
    review_comment: str = ""

    def reviewed(self, approved: bool, principal: str, comment: str, now_ns: int) -> Action:
        """Approved (PENDING, due now) or rejected (REJECTED) by `principal`; raises
        `FailedPrecondition` unless the action awaits approval and its deadline has not
        passed."""
        if self.status is not ActionStatus.AWAITING_APPROVAL:
            raise FailedPrecondition(
                f"action {self.id!r} is {self.status.value}: only an action AWAITING_APPROVAL "
                "can be approved or rejected"
            )
        if now_ns >= self.approval_deadline_ns:
            raise FailedPrecondition(
                f"action {self.id!r} was not approved before its deadline; it expires"
            )
        return replace(
            self,
            status=ActionStatus.PENDING if approved else ActionStatus.REJECTED,
            next_delivery_ns=now_ns,
            status_message=f"{'approved' if approved else 'rejected'} by {principal}: {comment}",
            reviewed_by=principal,
            reviewed_at_ns=now_ns,
            review_comment=comment,
            updated_at_ns=now_ns,
            version=self.version + 1,
        )

    def approval_expired(self, now_ns: int) -> Action:
        """Not approved before its deadline: EXPIRED, never delivered."""
        return replace(
            self,
            status=ActionStatus.EXPIRED,
            status_message="not approved before its approval deadline",
            updated_at_ns=now_ns,
            version=self.version + 1,
        )

    def delivered(self, now_ns: int) -> Action:
        """Sent on a stream now (again, if it was before); due again after the deadline."""
        return replace(
            self,
            status=ActionStatus.DELIVERED,
            delivery_count=self.delivery_count + 1,
            next_delivery_ns=now_ns + self.ack_deadline_seconds * NS_PER_SECOND,
            updated_at_ns=now_ns,
            version=self.version + 1,
        )

    def expired(self, now_ns: int) -> Action:
        return replace(
            self,
            status=ActionStatus.EXPIRED,
            status_message=f"not acknowledged after {self.delivery_count} deliveries",
            updated_at_ns=now_ns,
            version=self.version + 1,
        )

    def released(self, now_ns: int) -> Action:
        """Handed back undelivered by a stream that closed: due again at once."""
        return replace(
            self, next_delivery_ns=now_ns, updated_at_ns=now_ns, version=self.version + 1
        )

    def is_due(self, now_ns: int) -> bool:
        return self.status in DELIVERABLE_STATUSES and self.next_delivery_ns <= now_ns

    @property
    def exhausted(self) -> bool:
        return self.status is ActionStatus.DELIVERED and self.delivery_count >= self.max_deliveries

    def acknowledged(self, target: ActionStatus, message: str, now_ns: int) -> Action:
        """The action after the target service reported `target`."""
        if self.status.is_final:
            raise FailedPrecondition(
                f"action {self.id!r} is already {self.status.value}; it cannot become "
                f"{target.value}"
            )
        if self.status not in ACK_ALLOWED_FROM[target]:
            raise FailedPrecondition(
                f"action {self.id!r} is {self.status.value}; it can become "
                f"{', '.join(sorted(s.value for s in _targets_from(self.status)))}, "
                f"not {target.value}"
            )
        return replace(
            self,
            status=target,
            status_message=message,
            updated_at_ns=now_ns,
            version=self.version + 1,
        )

    def to_doc(self, expires_at_ns: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "action_type": self.action_type,
            "target_service": self.target_service,
            "status": self.status.value,
            "created_at_ns": self.created_at_ns,
            "updated_at_ns": self.updated_at_ns,
            "next_delivery_ns": self.next_delivery_ns,
            "parameters": dict(self.parameters),
            "payload_b64": base64.b64encode(self.payload).decode(),
            "source_service": self.source_service,
            "timestamp_ns": self.timestamp_ns,
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "signal_id": self.signal_id,
            "signal_received_at_ns": self.signal_received_at_ns,
            "delivery_count": self.delivery_count,
            "max_deliveries": self.max_deliveries,
            "ack_deadline_seconds": self.ack_deadline_seconds,
            "status_message": self.status_message,
            "priority": self.priority,
            "created_by": self.created_by,
            "version": self.version,
            "request_fingerprint": self.request_fingerprint,
            "trace_context": dict(self.trace_context),
            "approval_deadline_ns": self.approval_deadline_ns,
            "reviewed_by": self.reviewed_by,
            "reviewed_at_ns": self.reviewed_at_ns,
            "review_comment": self.review_comment,
            # A Firestore TTL policy on this field removes actions after 30 days.
            "expires_at_ns": expires_at_ns,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> Action:
        return cls(
            id=data["id"],
            action_type=data["action_type"],
            target_service=data["target_service"],
            status=ActionStatus(data["status"]),
            created_at_ns=int(data["created_at_ns"]),
            updated_at_ns=int(data["updated_at_ns"]),
            next_delivery_ns=int(data["next_delivery_ns"]),
            parameters=dict(data.get("parameters") or {}),
            payload=base64.b64decode(data.get("payload_b64", "")),
            source_service=data.get("source_service", ""),
            timestamp_ns=int(data.get("timestamp_ns", 0)),
            policy_id=data.get("policy_id", ""),
            policy_version=int(data.get("policy_version", 0)),
            signal_id=data.get("signal_id", ""),
            signal_received_at_ns=int(data.get("signal_received_at_ns", 0)),
            delivery_count=int(data.get("delivery_count", 0)),
            max_deliveries=int(data.get("max_deliveries", DEFAULT_MAX_DELIVERIES)),
            ack_deadline_seconds=int(
                data.get("ack_deadline_seconds", DEFAULT_ACK_DEADLINE_SECONDS)
            ),
            status_message=data.get("status_message", ""),
            priority=int(data.get("priority", DEFAULT_ACTION_PRIORITY)),
            created_by=data.get("created_by", ""),
            version=int(data.get("version", 1)),
            request_fingerprint=data.get("request_fingerprint", ""),
            trace_context=dict(data.get("trace_context") or {}),
            approval_deadline_ns=int(data.get("approval_deadline_ns", 0)),
            reviewed_by=data.get("reviewed_by", ""),
            reviewed_at_ns=int(data.get("reviewed_at_ns", 0)),
            review_comment=data.get("review_comment", ""),
        )


@dataclass(frozen=True)
class ActionRequest:
    """An action asked for directly (RequestAction), before it is stored."""

    action_id: str
    action_type: str
    target_service: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    payload: bytes = b""
    source_service: str = ""
    timestamp_ns: int = 0
    not_before_ns: int = 0
    ack_deadline_seconds: int = 0
    max_deliveries: int = 0
    priority: int = 0

    def validate(self) -> None:
        if self.action_id:
            check_id(self.action_id, "id")
        if not self.action_type:
            raise InvalidArgument("action_type", "is required")
        check_length("action_type", self.action_type, MAX_KEY_LENGTH)
        check_service_name(self.target_service, "target_service")
        check_length("source_service", self.source_service, MAX_KEY_LENGTH)
        _check_strings("parameters", self.parameters, MAX_PARAMETER_VALUE_LENGTH)
        check_size("payload", self.payload, MAX_PAYLOAD_BYTES)
        check_not_negative("timestamp_ns", self.timestamp_ns)
        check_not_negative("not_before_ns", self.not_before_ns)
        check_delivery_settings(self.ack_deadline_seconds, self.max_deliveries)
        # 0 means the default priority.
        if self.priority:
            check_range("priority", self.priority, 1, 10)


def check_delivery_settings(ack_deadline_seconds: int, max_deliveries: int) -> None:
    check_range("ack_deadline_seconds", ack_deadline_seconds, 0, MAX_ACK_DEADLINE_SECONDS)
    check_range("max_deliveries", max_deliveries, 0, MAX_DELIVERIES)


def _check_strings(field_name: str, values: Mapping[str, str], value_limit: int) -> None:
    check_map(field_name, values, max_entries=MAX_METADATA_ENTRIES, max_value_length=value_limit)


def _targets_from(status: ActionStatus) -> set[ActionStatus]:
    return {target for target, sources in ACK_ALLOWED_FROM.items() if status in sources}
