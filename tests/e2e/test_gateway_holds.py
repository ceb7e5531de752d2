"""Silences and approvals through the gateway, as a user: JSON over HTTP with tokens of each
role, routed by the methods' google.api.http annotations."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support.gateway import GatewaySuite

# The module's suite (three services and Envoy, started one after another) starts inside the
# first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NS = 1_000_000_000


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def enforced_policy(
    http: httpx.Client, suite: GatewaySuite, name: str, condition: str, action: dict[str, Any]
) -> str:
    """Proposes (operator) and enforces (admin) a policy; its id."""
    created = http.post(
        "/v1/policies",
        headers=bearer(suite.token("operator", "olga")),
        json={
            "policy_type": "operational",
            "policy_name": name,
            "condition": condition,
            "action": action,
        },
    )
    assert created.status_code == 200, created.text
    policy_id: str = created.json()["resource_id"]
    enforced = http.post(
        f"/v1/policies/{policy_id}:enforce", headers=bearer(suite.token("admin", "ada")), json={}
    )
    assert enforced.status_code == 200, enforced.text
    return policy_id


def first_acting_signal(
    http: httpx.Client, operator: dict[str, str], signal: dict[str, Any]
) -> dict[str, Any]:
    """Submits `signal` until one creates an action (the Coordinator learns of an enforcement
    from the bus); that signal's receipt."""
    for _ in range(200):
        receipt: dict[str, Any] = http.post("/v1/signals", headers=operator, json=signal).json()
        if receipt.get("action_ids"):
            return receipt
        time.sleep(0.05)
    raise AssertionError(f"no action for {signal}: {receipt}")


def test_silences_over_json(gateway_suite: GatewaySuite) -> None:
    operator = bearer(gateway_suite.token("operator", "olga"))
    viewer = bearer(gateway_suite.token("viewer", "vic"))
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=30) as http:
        signal = {"signal_type": "event", "priority": 5, "metadata": {"service": "warehouse"}}
        policy_id = enforced_policy(
            http,
            gateway_suite,
            "vacuum-warehouse",
            'signal.type == "event" && signal.metadata.service == "warehouse"',
            {"action_type": "vacuum", "target_service": "warehouse"},
        )
        first_acting_signal(http, operator, signal)

        ends_at_ns = time.time_ns() + 600 * NS
        body = {
            "matcher": {"target_service": "warehouse"},
            "ends_at_ns": str(ends_at_ns),
            "comment": "warehouse maintenance, CHG-77",
        }
        created = http.post("/v1/silences", headers=operator, json=body)
        assert created.status_code == 200, created.text
        silence = created.json()
        silence_id = silence["id"]
        assert silence["state"] == "SILENCE_STATE_ACTIVE"
        assert silence["created_by"] == "olga"
        assert int(silence["ends_at_ns"]) == ends_at_ns

        listed = http.get("/v1/silences", headers=viewer)
        assert listed.status_code == 200, listed.text
        assert silence_id in [s["id"] for s in listed.json()["silences"]]
        fetched = http.get(f"/v1/silences/{silence_id}", headers=viewer)
        assert fetched.json()["matcher"]["target_service"] == "warehouse"
        # Creating one takes an operator; a silence without a comment is refused, naming it.
        assert http.post("/v1/silences", headers=viewer, json=body).status_code == 403
        uncommented = http.post("/v1/silences", headers=operator, json={**body, "comment": ""})
        assert uncommented.status_code == 400
        assert "comment" in uncommented.text
        assert http.get("/v1/silences/sil-nope", headers=viewer).status_code == 404

        # The policy's signals are held back, and the decision record names the silence.
        held = http.post("/v1/signals", headers=operator, json=signal).json()
        assert not held.get("action_ids")
        record = http.get(f"/v1/signals/{held['resource_id']}:explain", headers=viewer).json()
        decided = {d["policy_id"]: d for d in record["decisions"]}[policy_id]
        assert decided["outcome"] == "DECISION_OUTCOME_HELD"
        assert decided["hold_reason"] == "HOLD_REASON_SILENCE"
        assert decided["held_by"] == silence_id

        expired = http.post(
            f"/v1/silences/{silence_id}:expire", headers=operator, json={"comment": "done"}
        )
        assert expired.status_code == 200, expired.text
        assert expired.json()["state"] == "SILENCE_STATE_EXPIRED"
        assert expired.json()["expired_by"] == "olga"
        active = http.get("/v1/silences", headers=viewer).json()
        assert silence_id not in [s["id"] for s in active.get("silences", [])]
        every = http.get("/v1/silences", params={"include_expired": "true"}, headers=viewer)
        assert silence_id in [s["id"] for s in every.json()["silences"]]
        after = http.post("/v1/signals", headers=operator, json=signal).json()
        assert len(after.get("action_ids", [])) == 1


def test_approvals_over_json(gateway_suite: GatewaySuite) -> None:
    operator = bearer(gateway_suite.token("operator", "olga"))
    approver = bearer(gateway_suite.token("approver", "aria"))
    viewer = bearer(gateway_suite.token("viewer", "vic"))
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=30) as http:
        signal = {"signal_type": "command", "priority": 9, "metadata": {"service": "payments"}}
        enforced_policy(
            http,
            gateway_suite,
            "refund-payments",
            'signal.type == "command" && signal.metadata.service == "payments"',
            {
                "action_type": "refund",
                "target_service": "payments",
                "require_approval": True,
                "approval_timeout_seconds": 600,
            },
        )
        [approved_id] = first_acting_signal(http, operator, signal)["action_ids"]
        [rejected_id] = http.post("/v1/signals", headers=operator, json=signal).json()["action_ids"]

        waiting = http.get(f"/v1/actions/{approved_id}", headers=viewer).json()
        assert waiting["status"] == "ACTION_STATUS_AWAITING_APPROVAL"
        assert int(waiting["approval_deadline_ns"]) > time.time_ns()

        # An operator may not approve (refused by the service: the gateway let the token in);
        # an approver must say why.
        review = {"comment": "checked the ledger"}
        refused = http.post(f"/v1/actions/{approved_id}:approve", headers=operator, json=review)
        assert refused.status_code == 403
        uncommented = http.post(f"/v1/actions/{approved_id}:approve", headers=approver, json={})
        assert uncommented.status_code == 400
        assert "comment" in uncommented.text

        approved = http.post(f"/v1/actions/{approved_id}:approve", headers=approver, json=review)
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "ACTION_STATUS_PENDING"
        assert approved.json()["reviewed_by"] == "aria"
        assert approved.json()["review_comment"] == "checked the ledger"
        fetched = http.get(f"/v1/actions/{approved_id}", headers=viewer).json()
        assert fetched["status"] == "ACTION_STATUS_PENDING"
        again = http.post(f"/v1/actions/{approved_id}:approve", headers=approver, json=review)
        assert again.status_code == 400

        rejected = http.post(
            f"/v1/actions/{rejected_id}:reject", headers=approver, json={"comment": "not now"}
        )
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["status"] == "ACTION_STATUS_REJECTED"
        assert rejected.json()["reviewed_by"] == "aria"
        assert http.get(f"/v1/actions/{rejected_id}", headers=viewer).json()["status"] == (
            "ACTION_STATUS_REJECTED"
        )
        missing = http.post("/v1/actions/act-nope:approve", headers=approver, json=review)
        assert missing.status_code == 404
