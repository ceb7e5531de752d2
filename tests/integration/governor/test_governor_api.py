"""Every Governor RPC over real gRPC against a real server (SQLite store and bus)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from governor_helpers import CONDITION, DRY_RUN, ENFORCED, PROPOSED, REVOKED, propose
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.rpc_errors import expect_error, field_violations
from support.running import RunningGovernor
from tai.v1 import governor_pb2, governor_pb2_grpc
from tai_client import Aborted


async def test_propose_returns_a_receipt_and_stores_version_1(governor: RunningGovernor) -> None:
    receipt = await propose(governor, rules={"owner": "sre"}, description="scale api on alerts")

    assert receipt.status == "success"
    assert receipt.id
    assert receipt.resource_id.startswith("pol-")
    assert receipt.resource_version == 1
    assert receipt.result_data["state"] == "PROPOSED"
    assert receipt.execution_time_us > 0
    assert not receipt.replayed

    policy = await governor.client.get(receipt.resource_id)
    assert policy.version == 1
    assert policy.state == PROPOSED
    assert policy.policy_name == "scale-on-alert"
    assert policy.condition == CONDITION
    assert policy.action.target_service == "api"
    assert dict(policy.rules) == {"owner": "sre"}
    assert policy.enabled is True
    assert policy.created_by == "anonymous"
    assert policy.revision == int(receipt.result_data["revision"])


async def test_seed_style_propose_with_caller_id(governor: RunningGovernor) -> None:
    # The seed's clients send a Policy with their own id and version 1.
    request = governor_pb2.ProposePolicyRequest(
        id="pol-001",
        policy_type="security",
        policy_name="Enforce TLS 1.3",
        version=1,
        rules={"tls_version": "1.3"},
    )
    stub = governor_pb2_grpc.GovernorStub(governor.channel)
    receipt = await stub.ProposePolicy(request)
    assert receipt.resource_id == "pol-001"
    policy = await governor.client.get("pol-001")
    assert (policy.policy_type, policy.version, dict(policy.rules)) == (
        "security",
        1,
        {"tls_version": "1.3"},
    )


async def test_lifecycle_creates_immutable_versions(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id

    dry = await governor.client.enforce(policy_id, dry_run=True)
    assert (dry.resource_version, dry.result_data["state"]) == (2, "DRY_RUN")
    enforced = await governor.client.enforce(policy_id, expected_version=2, reason="looks good")
    assert (enforced.resource_version, enforced.result_data["state"]) == (3, "ENFORCED")
    revoked = await governor.client.revoke(policy_id, reason="incident over")
    assert (revoked.resource_version, revoked.result_data["state"]) == (4, "REVOKED")

    versions = (await governor.client.versions(policy_id)).versions
    assert [(v.version, v.state) for v in versions] == [
        (4, REVOKED),
        (3, ENFORCED),
        (2, DRY_RUN),
        (1, PROPOSED),
    ]
    assert versions[0].state_reason == "incident over"
    assert [v.revision for v in versions] == sorted((v.revision for v in versions), reverse=True)
    # An old version stays readable as it was.
    old = await governor.client.get(policy_id, version=1)
    assert old.state == PROPOSED


async def test_enforcing_a_revoked_policy_is_refused(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id
    await governor.client.revoke(policy_id)
    error = await expect_error(
        governor.client.enforce(policy_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "REVOKED" in (error.details() or "")
    await expect_error(governor.client.revoke(policy_id), grpc.StatusCode.FAILED_PRECONDITION)


async def test_enforcing_twice_is_refused(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id
    await governor.client.enforce(policy_id)
    error = await expect_error(
        governor.client.enforce(policy_id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "already ENFORCED" in (error.details() or "")


async def test_stale_expected_version_is_aborted(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id
    await governor.client.enforce(policy_id, expected_version=1, dry_run=True)
    error = await expect_error(
        governor.client.enforce(policy_id, expected_version=1), grpc.StatusCode.ABORTED
    )
    assert "version 2" in (error.details() or "")
    await expect_error(
        propose(governor, policy_id=policy_id, expected_version=1), grpc.StatusCode.ABORTED
    )
    assert (await governor.client.get(policy_id)).version == 2


async def test_concurrent_writers_with_the_same_expected_version_one_wins(
    governor: RunningGovernor,
) -> None:
    policy_id = (await propose(governor)).resource_id
    results = await asyncio.gather(
        *(
            propose(governor, policy_id=policy_id, expected_version=1, name=f"edit-{i}")
            for i in range(5)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, Aborted)]
    assert len(winners) == 1
    assert len(losers) == 4
    assert (await governor.client.get(policy_id)).version == 2


async def test_retry_with_the_same_request_id_returns_the_same_receipt(
    governor: RunningGovernor,
) -> None:
    first = await propose(governor, request_id="req-1")
    again = await propose(governor, request_id="req-1")
    assert again.id == first.id
    assert again.resource_id == first.resource_id
    assert again.timestamp_ns == first.timestamp_ns
    assert again.replayed
    listed = await governor.client.list_page()
    assert [p.id for p in listed.policies] == [first.resource_id]

    enforce_1 = await governor.client.enforce(first.resource_id, request_id="req-2")
    enforce_2 = await governor.client.enforce(first.resource_id, request_id="req-2")
    assert enforce_2.id == enforce_1.id
    assert enforce_2.replayed
    assert (await governor.client.get(first.resource_id)).version == 2


async def test_request_id_reused_for_another_request_is_refused(
    governor: RunningGovernor,
) -> None:
    await propose(governor, request_id="req-x", name="one")
    error = await expect_error(
        propose(governor, request_id="req-x", name="two"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field_violations(error) == ["request_id"]


async def test_rollback_copies_an_older_version(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor, condition="signal.priority >= 5")).resource_id
    await propose(governor, policy_id=policy_id, condition="signal.priority >= 9", name="v2")
    await governor.client.enforce(policy_id)

    receipt = await governor.client.propose(policy_id=policy_id, rollback_to_version=1)

    assert receipt.resource_version == 4
    policy = await governor.client.get(policy_id)
    assert policy.state == PROPOSED
    assert policy.condition == "signal.priority >= 5"
    assert policy.policy_name == "scale-on-alert"
    assert policy.rolled_back_from_version == 1
    await expect_error(
        governor.client.propose(policy_id=policy_id, rollback_to_version=99),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        governor.client.propose(policy_id="pol-nope", rollback_to_version=1),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_revoked_policy_can_be_revived_by_rollback(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id
    await governor.client.enforce(policy_id)
    await governor.client.revoke(policy_id)
    await governor.client.propose(policy_id=policy_id, rollback_to_version=1)
    receipt = await governor.client.enforce(policy_id)
    assert receipt.result_data["state"] == "ENFORCED"


async def test_get_policies_filters(governor: RunningGovernor) -> None:
    finance = (await propose(governor, policy_type="finance", name="budget")).resource_id
    security = (await propose(governor, policy_type="security", name="tls")).resource_id
    disabled = (await propose(governor, name="off", enabled=False)).resource_id
    await governor.client.enforce(security)

    async def ids(**kwargs: Any) -> set[str]:
        return {p.id async for p in governor.client.list_all(**kwargs)}

    assert await ids() == {finance, security, disabled}
    assert await ids(policy_type="finance") == {finance}
    assert await ids(states=[ENFORCED]) == {security}
    assert await ids(states=[ENFORCED, PROPOSED]) == {finance, security, disabled}
    # Only the policies in force (enabled, ENFORCED or DRY_RUN); `finance` is only PROPOSED.
    assert await ids(enabled_only=True) == {security}
    assert await ids(policy_type="security", states=[PROPOSED]) == set()


async def test_get_policies_pages_through_everything_once(governor: RunningGovernor) -> None:
    created = {(await propose(governor, name=f"p{i}")).resource_id for i in range(23)}
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await governor.client.list_page(page_size=10, page_token=token)
        seen.extend(p.id for p in page.policies)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == sorted(created)

    await expect_error(
        governor.client.list_page(page_token="garbage"), grpc.StatusCode.INVALID_ARGUMENT
    )
    first = await governor.client.list_page(page_size=5)
    error = await expect_error(
        governor.client.list_page(policy_type="finance", page_token=first.next_page_token),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["page_token"]
    await expect_error(governor.client.list_page(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT)


BAD_PROPOSALS: list[tuple[str, dict[str, Any], str]] = [
    ("empty type", {"policy_type": ""}, "policy_type"),
    ("unknown type", {"policy_type": "marketing"}, "policy_type"),
    ("empty name", {"name": "  "}, "policy_name"),
    ("long name", {"name": "x" * 201}, "policy_name"),
    ("condition syntax", {"condition": "signal.priority >="}, "condition"),
    ("condition not bool", {"condition": "signal.priority + 1"}, "condition"),
    ("condition unknown variable", {"condition": "request.size > 1"}, "condition"),
    ("condition without action", {"action": governor_pb2.ActionTemplate()}, "action"),
    ("too many rules", {"rules": {f"k{i}": "v" for i in range(101)}}, "rules"),
    ("huge rule value", {"rules": {"k": "v" * 5000}}, "rules['k']"),
    ("empty rule key", {"rules": {"": "v"}}, "rules"),
    (
        "bad target service",
        {"action": governor_pb2.ActionTemplate(action_type="scale", target_service="API !")},
        "action.target_service",
    ),
    (
        "missing action type",
        {"action": governor_pb2.ActionTemplate(target_service="api")},
        "action.action_type",
    ),
    (
        "negative cooldown",
        {
            "action": governor_pb2.ActionTemplate(
                action_type="scale", target_service="api", cooldown_seconds=-1
            )
        },
        "action.cooldown_seconds",
    ),
    ("bad id", {"policy_id": "has spaces"}, "id"),
    ("long request id", {"request_id": "r" * 200}, "request_id"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in BAD_PROPOSALS],
    ids=[name for name, _, _ in BAD_PROPOSALS],
)
async def test_bad_proposals_name_the_field_and_write_nothing(
    governor: RunningGovernor, overrides: dict[str, Any], field: str
) -> None:
    error = await expect_error(propose(governor, **overrides), grpc.StatusCode.INVALID_ARGUMENT)
    assert field_violations(error) == [field]
    assert (error.details() or "").startswith(f"{field}:")
    listed = await governor.client.list_page()
    assert list(listed.policies) == []


async def test_unknown_policies_are_not_found(governor: RunningGovernor) -> None:
    for call in (
        governor.client.get("pol-missing"),
        governor.client.enforce("pol-missing"),
        governor.client.revoke("pol-missing"),
        governor.client.versions("pol-missing"),
    ):
        error = await expect_error(call, grpc.StatusCode.NOT_FOUND)
        assert "pol-missing" in (error.details() or "")
    policy_id = (await propose(governor)).resource_id
    await expect_error(governor.client.get(policy_id, version=7), grpc.StatusCode.NOT_FOUND)


async def test_missing_ids_are_invalid(governor: RunningGovernor) -> None:
    for call in (
        governor.client.get(""),
        governor.client.enforce(""),
        governor.client.revoke(""),
    ):
        error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert field_violations(error) == ["id"]


async def test_oversized_request_is_refused(governor: RunningGovernor) -> None:
    # The fixture's server accepts messages up to 1 MiB.
    await expect_error(
        propose(governor, description="d" * (2 * 1024 * 1024)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


async def _next(stream: Any, timeout: float = 10.0) -> governor_pb2.Policy:
    message: governor_pb2.Policy = await asyncio.wait_for(stream.read(), timeout)
    assert message is not grpc.aio.EOF
    return message


async def test_stream_sends_current_set_then_changes(governor: RunningGovernor) -> None:
    first = (await propose(governor, name="a")).resource_id
    second = (await propose(governor, name="b", policy_type="finance")).resource_id

    stream = governor.client.watch()
    snapshot = {(await _next(stream)).id, (await _next(stream)).id}
    assert snapshot == {first, second}

    await governor.client.enforce(first)
    change = await _next(stream)
    assert (change.id, change.version, change.state) == (first, 2, ENFORCED)

    third = (await propose(governor, name="c")).resource_id
    change = await _next(stream)
    assert (change.id, change.version) == (third, 1)
    stream.cancel()


async def test_stream_filters_by_type(governor: RunningGovernor) -> None:
    await propose(governor, policy_type="finance", name="budget")
    security = (await propose(governor, policy_type="security", name="tls")).resource_id
    stream = governor.client.watch(policy_type="security")
    # The snapshot has the security policy alone; reading it proves the stream is live.
    assert ((first := await _next(stream)).id, first.version) == (security, 1)
    await propose(governor, policy_type="finance", name="budget-2")
    await governor.client.enforce(security)
    assert ((live := await _next(stream)).id, live.version) == (security, 2)
    stream.cancel()


async def test_stream_resumes_after_a_revision(governor: RunningGovernor) -> None:
    policy_id = (await propose(governor)).resource_id
    resume_at = (await governor.client.get(policy_id)).revision
    await governor.client.enforce(policy_id, dry_run=True)
    await governor.client.enforce(policy_id)
    other = (await propose(governor, name="other")).resource_id

    stream = governor.client.watch(from_revision=resume_at)
    replay = [await _next(stream) for _ in range(3)]
    assert [(m.id, m.version) for m in replay] == [(policy_id, 2), (policy_id, 3), (other, 1)]
    assert [m.revision for m in replay] == sorted(m.revision for m in replay)
    assert all(m.revision > resume_at for m in replay)

    await governor.client.revoke(policy_id)
    live = await _next(stream)
    assert (live.id, live.version, live.state) == (policy_id, 4, REVOKED)
    stream.cancel()


async def test_health_reflection_and_seed_health_check(governor: RunningGovernor) -> None:
    health = health_pb2_grpc.HealthStub(governor.channel)
    for service in ("", "tai.v1.Governor"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    status = await governor.client.health()
    assert status.service_name == "tai.v1.Governor"
    assert status.status == "healthy"

    reflection = reflection_pb2_grpc.ServerReflectionStub(governor.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
    assert {"tai.v1.Governor", "grpc.health.v1.Health"} <= names


async def test_health_watch_sends_each_change(governor: RunningGovernor) -> None:
    """The standard Watch (what gRPC clients' own health checking calls) streams through the
    servers' interceptors."""
    health = health_pb2_grpc.HealthStub(governor.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="tai.v1.Governor"))
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    await governor.runtime.server.set_serving(False)
    second = await asyncio.wait_for(watch.read(), 10)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
