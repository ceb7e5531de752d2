"""Through the gateway, as a user: gRPC with the client library, JSON over HTTP (httpx) for
unary and streaming methods, tokens checked at the gateway, and its local rate limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import httpx
import pytest
from support.gateway import Gateway, GatewayConfig, GatewaySuite
from tai.v1 import governor_pb2
from tai_client import ChannelOptions, GovernorClient, TaiError, Unauthenticated, open_channel

# The module's suite (three services and Envoy, started one after another) starts inside the
# first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_grpc_through_the_gateway(gateway_suite: GatewaySuite) -> None:
    token = gateway_suite.token("admin")
    options = ChannelOptions(bearer_token=token)
    async with open_channel(gateway_suite.gateway.target, options) as channel:
        client = GovernorClient(channel, options)
        receipt = await client.propose(policy_type="security", name="via-grpc")
        await client.enforce(receipt.resource_id)
        policy = await client.get(receipt.resource_id)
    assert policy.state == governor_pb2.POLICY_STATE_ENFORCED
    assert policy.created_by == "alice"


def test_json_through_the_gateway(gateway_suite: GatewaySuite) -> None:
    operator = bearer(gateway_suite.token("operator", "olga"))
    admin = bearer(gateway_suite.token("admin", "ada"))
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=10) as http:
        created = http.post(
            "/v1/policies",
            headers=operator,
            json={
                "policy_type": "operational",
                "policy_name": "via-json",
                "condition": 'signal.type == "alert"',
                "action": {"action_type": "page", "target_service": "oncall"},
            },
        )
        assert created.status_code == 200, created.text
        policy_id = created.json()["resource_id"]

        enforced = http.post(f"/v1/policies/{policy_id}:enforce", headers=admin, json={})
        assert enforced.status_code == 200, enforced.text
        assert enforced.json()["result_data"]["state"] == "ENFORCED"

        fetched = http.get(f"/v1/policies/{policy_id}", headers=operator)
        assert fetched.json()["state"] == "POLICY_STATE_ENFORCED"
        assert fetched.json()["last_modified_by"] == "ada"

        listed = http.get("/v1/policies", params={"policy_type": "operational"}, headers=operator)
        assert policy_id in [p["id"] for p in listed.json()["policies"]]

        # Errors map to HTTP statuses and keep the message naming the field.
        bad = http.post("/v1/policies", headers=operator, json={"policy_type": "hr"})
        assert bad.status_code == 400
        assert "policy_type" in bad.text
        missing = http.get("/v1/policies/pol-nope", headers=operator)
        assert missing.status_code == 404
        # An operator may not enforce: refused by the service (the gateway let the token in).
        forbidden = http.post(f"/v1/policies/{policy_id}:revoke", headers=operator, json={})
        assert forbidden.status_code == 403


def test_a_streaming_method_over_json(gateway_suite: GatewaySuite) -> None:
    viewer = bearer(gateway_suite.token("viewer"))
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=10) as http:
        http.post(
            "/v1/policies",
            headers=bearer(gateway_suite.token("operator")),
            json={"policy_type": "finance", "policy_name": "streamed"},
        )
        with http.stream("GET", "/v1/policies:stream", headers=viewer) as stream:
            assert stream.status_code == 200
            # The transcoder writes one JSON object per line (stream_newline_delimited).
            policies = []
            for line in stream.iter_lines():
                if line.strip():
                    policies.append(json.loads(line))
                if any(p["policy_name"] == "streamed" for p in policies):
                    break
    streamed = next(p for p in policies if p["policy_name"] == "streamed")
    assert streamed["policy_type"] == "finance"
    assert int(streamed["revision"]) >= 1


async def test_requests_without_a_token_are_refused_at_the_gateway(
    gateway_suite: GatewaySuite,
) -> None:
    async with httpx.AsyncClient(base_url=gateway_suite.gateway.url, timeout=10) as http:
        refused = await http.get("/v1/policies")
        assert refused.status_code == 401
        assert "Jwt is missing" in refused.text  # Envoy's jwt_authn, before any service
        forged = await http.get("/v1/policies", headers=bearer("not.a.jwt"))
        assert forged.status_code == 401
        # Health stays open.
        assert (await http.get("/v1/governor:health")).status_code == 200
    async with open_channel(gateway_suite.gateway.target) as channel:
        with pytest.raises(Unauthenticated):
            await GovernorClient(channel).list_page()


async def test_the_local_rate_limit(gateway_suite: GatewaySuite, tmp_path: Path) -> None:
    upstreams = {name: svc.target for name, svc in gateway_suite.services.items()}
    limited = Gateway(
        GatewayConfig(
            upstreams=upstreams,
            jwks_file=str(gateway_suite.jwks_file),
            issuer=gateway_suite.gateway.config.issuer,
            audience=gateway_suite.gateway.config.audience,
            rate_limit_per_second=1,
            rate_limit_burst=2,
        ),
        tmp_path,
    ).start()
    try:
        viewer = bearer(gateway_suite.token("viewer"))
        async with httpx.AsyncClient(base_url=limited.url, timeout=10) as http:
            # A token a second comes back: enough calls that one finds the bucket empty even
            # on a slow machine.
            codes = [(await http.get("/v1/policies", headers=viewer)).status_code for _ in range(8)]
        assert codes[:2] == [200, 200]
        assert 429 in codes[2:]
        options = ChannelOptions(bearer_token=gateway_suite.token("viewer"), max_attempts=1)
        async with open_channel(limited.target, options) as channel:
            codes_grpc = []
            for _ in range(6):
                try:
                    await GovernorClient(channel, options).list_page()
                    codes_grpc.append(grpc.StatusCode.OK)
                except TaiError as error:
                    codes_grpc.append(error.code)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes_grpc
    finally:
        limited.stop()


def test_simulate_enforce_and_explain_over_json(gateway_suite: GatewaySuite) -> None:
    operator = bearer(gateway_suite.token("operator", "olga"))
    viewer = bearer(gateway_suite.token("viewer"))
    admin = bearer(gateway_suite.token("admin", "ada"))
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=30) as http:
        # Other tests' policies act on alerts: this one on commands only.
        signal = {"signal_type": "command", "priority": 9, "metadata": {"service": "checkout"}}
        submitted = http.post("/v1/signals", headers=operator, json=signal)
        assert submitted.status_code == 200, submitted.text
        created = http.post(
            "/v1/policies",
            headers=operator,
            json={
                "policy_type": "operational",
                "policy_name": "rehearsed",
                "condition": 'signal.type == "command" && signal.metadata.service == "checkout"',
                "action": {"action_type": "restart", "target_service": "checkout"},
            },
        )
        policy_id = created.json()["resource_id"]

        # Rehearsed over the stored signal: the Coordinator reads the stored version from the
        # Governor with its own credentials, the caller needs the operator role.
        body = {"stored": {"id": policy_id}, "sample_size": 1}
        rehearsal = http.post("/v1/simulations", headers=operator, json=body)
        assert rehearsal.status_code == 200, rehearsal.text
        report = rehearsal.json()
        assert report["complete"] is True
        assert int(report["matched"]) >= 1
        assert report["actions_by_target"]["checkout"] == report["actions"]
        assert http.post("/v1/simulations", headers=viewer, json=body).status_code == 403
        bad = http.post(
            "/v1/simulations", headers=operator, json={"draft": {"condition": "signal.type =="}}
        )
        assert bad.status_code == 400
        assert "draft.condition" in bad.text

        enforced = http.post(f"/v1/policies/{policy_id}:enforce", headers=admin, json={})
        assert enforced.status_code == 200, enforced.text
        # The Coordinator learns of the enforcement from the bus: signals until one acts.
        for _ in range(200):
            acted = http.post("/v1/signals", headers=operator, json=signal).json()
            if acted.get("action_ids"):
                break
            time.sleep(0.05)
        assert acted.get("action_ids"), acted
        signal_id = acted["resource_id"]
        explained = http.get(f"/v1/signals/{signal_id}:explain", headers=viewer)
        assert explained.status_code == 200, explained.text
        record = explained.json()
        assert record["signal"]["id"] == signal_id
        decided = {d["policy_id"]: d for d in record["decisions"]}
        assert decided[policy_id]["outcome"] == "DECISION_OUTCOME_MATCHED"
        assert decided[policy_id]["mode"] == "POLICY_STATE_ENFORCED"
        assert [decided[policy_id]["action_id"]] == acted["action_ids"]
        assert http.get("/v1/signals/sig-nope:explain", headers=viewer).status_code == 404
