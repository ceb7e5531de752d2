"""The Coordinator's domain without gRPC or a store."""

from __future__ import annotations

import pytest
from tai_common.core import FailedPrecondition, InvalidArgument
from tai_coordinator.model import Action, ActionRequest, ActionStatus, SignalInput

SECOND = 10**9


def action(**overrides: object) -> Action:
    fields: dict[str, object] = {
        "id": "act-1",
        "action_type": "scale",
        "target_service": "api",
        "status": ActionStatus.PENDING,
        "created_at_ns": 0,
        "updated_at_ns": 0,
        "next_delivery_ns": 0,
        "ack_deadline_seconds": 10,
        "max_deliveries": 2,
    }
    fields.update(overrides)
    return Action(**fields)  # type: ignore[arg-type]


def test_fingerprint_ignores_id_and_time_but_not_content() -> None:
    base = SignalInput("s1", "alert", 9, {"service": "api"}, b"x", "prom", 1)
    same = SignalInput("s2", "alert", 9, {"service": "api"}, b"x", "prom", 99)
    assert base.fingerprint() == same.fingerprint()
    for other in (
        SignalInput("s1", "event", 9, {"service": "api"}, b"x", "prom", 1),
        SignalInput("s1", "alert", 8, {"service": "api"}, b"x", "prom", 1),
        SignalInput("s1", "alert", 9, {"service": "db"}, b"x", "prom", 1),
        SignalInput("s1", "alert", 9, {"service": "api"}, b"y", "prom", 1),
        SignalInput("s1", "alert", 9, {"service": "api"}, b"x", "other", 1),
    ):
        assert other.fingerprint() != base.fingerprint()


def test_delivery_then_redelivery_then_expiry() -> None:
    first = action().delivered(now_ns=5 * SECOND)
    assert (first.status, first.delivery_count, first.next_delivery_ns) == (
        ActionStatus.DELIVERED,
        1,
        15 * SECOND,
    )
    assert not first.is_due(14 * SECOND)
    assert first.is_due(15 * SECOND)
    assert not first.exhausted
    second = first.delivered(now_ns=15 * SECOND)
    assert second.delivery_count == 2
    assert second.exhausted
    assert second.expired(now_ns=26 * SECOND).status is ActionStatus.EXPIRED


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (ActionStatus.DELIVERED, ActionStatus.ACCEPTED),
        (ActionStatus.ACCEPTED, ActionStatus.COMPLETED),
        (ActionStatus.DELIVERED, ActionStatus.COMPLETED),
        (ActionStatus.DELIVERED, ActionStatus.REJECTED),
        (ActionStatus.ACCEPTED, ActionStatus.FAILED),
    ],
)
def test_allowed_acknowledgements(start: ActionStatus, target: ActionStatus) -> None:
    changed = action(status=start).acknowledged(target, "ok", now_ns=1)
    assert changed.status is target
    assert changed.version == 2


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (ActionStatus.ACCEPTED, ActionStatus.REJECTED),
        (ActionStatus.ACCEPTED, ActionStatus.ACCEPTED),
        (ActionStatus.COMPLETED, ActionStatus.FAILED),
        (ActionStatus.EXPIRED, ActionStatus.COMPLETED),
    ],
)
def test_refused_acknowledgements(start: ActionStatus, target: ActionStatus) -> None:
    with pytest.raises(FailedPrecondition):
        action(status=start).acknowledged(target, "", now_ns=1)


def test_documents_round_trip() -> None:
    original = action(parameters={"a": "b"}, payload=b"\x00\xff", policy_id="pol-1")
    assert Action.from_doc(original.to_doc(expires_at_ns=0)) == original


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"action_type": ""}, "action_type"),
        ({"target_service": "UPPER"}, "target_service"),
        ({"max_deliveries": -1}, "max_deliveries"),
        ({"priority": 11}, "priority"),
    ],
)
def test_action_requests_are_validated(request_fields: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {"action_id": "", "action_type": "x", "target_service": "api"}
    fields.update(request_fields)
    with pytest.raises(InvalidArgument) as caught:
        ActionRequest(**fields).validate()  # type: ignore[arg-type]
    assert caught.value.field == field
