"""Authentication and roles, enforced by the services themselves: every method × {no token,
expired token, wrong audience, wrong role, right role}, over real gRPC."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from support.secured import SecuredSuite
from support.tokens import TokenIssuer
from tai.v1 import common_pb2, coordinator_pb2, governor_pb2, scheduler_pb2
from tai_client import (
    CoordinatorClient,
    GovernorClient,
    PermissionDenied,
    SchedulerClient,
    TaiError,
)
from tai_common.auth import METHOD_ROLES, OPEN_METHODS, Role, installation_role

SERVICES = {
    "tai.v1.Governor": governor_pb2,
    "tai.v1.Coordinator": coordinator_pb2,
    "tai.v1.Scheduler": scheduler_pb2,
}
ROLE_BELOW = {
    Role.VIEWER: [],
    Role.OPERATOR: ["viewer"],
    Role.APPROVER: ["operator"],
    Role.ADMIN: ["approver"],
}
ROLE_NAMES = {role: [role.name.lower()] for role in Role}
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def all_methods() -> list[str]:
    pool = descriptor_pool.Default()
    return [
        f"/{name}/{method.name}"
        for name in SERVICES
        for method in pool.FindServiceByName(name).methods
    ]


def test_every_method_has_a_role_or_is_open() -> None:
    unlisted = [m for m in all_methods() if m not in METHOD_ROLES and m not in OPEN_METHODS]
    assert unlisted == []


def target_of(suite: SecuredSuite, method: str) -> str:
    service = method.split("/")[1]
    return {
        "tai.v1.Governor": suite.governor.target,
        "tai.v1.Coordinator": suite.coordinator.target,
        "tai.v1.Scheduler": suite.scheduler.target,
    }[service]


async def call(suite: SecuredSuite, method: str, token: str) -> grpc.StatusCode:
    """Calls `method` with an empty request; returns the status (OK for a stream that is still
    open after a moment: it was let in)."""
    service_name, method_name = method.strip("/").split("/")
    descriptor = (
        descriptor_pool.Default().FindServiceByName(service_name).methods_by_name[method_name]
    )
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    async with suite.channel(target_of(suite, method), token) as channel:
        if descriptor.server_streaming:
            stream = channel.unary_stream(
                method,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )(request_type(), timeout=5)
            try:
                # A refusal comes at once; a slow machine may still take a while to send it.
                await asyncio.wait_for(stream.read(), 3)
            except TimeoutError:
                stream.cancel()
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                return error.code()
            stream.cancel()
            return grpc.StatusCode.OK
        try:
            await channel.unary_unary(
                method,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )(request_type(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


CASES = ["no token", "expired", "wrong audience", "wrong role", "right role"]


def token_for(issuer: TokenIssuer, case: str, role: Role, method: str = "") -> str:
    if case == "no token":
        return ""
    if case == "expired":
        return issuer.token(roles=ROLE_NAMES[role], expires_in=-120)
    if case == "wrong audience":
        return issuer.token(roles=ROLE_NAMES[role], audience="someone-else")
    if case == "wrong role":
        return issuer.token(roles=ROLE_BELOW[role])
    if installation_role(method) is not None:
        # Changing namespaces needs the role in every namespace, not only in default.
        return issuer.token(extra={"tai_namespaces": {"*": ROLE_NAMES[role][0]}})
    return issuer.token(roles=ROLE_NAMES[role])


async def test_every_method_against_every_kind_of_caller(secured: SecuredSuite) -> None:
    outcomes: dict[str, dict[str, str]] = {}
    for method, role in METHOD_ROLES.items():
        row = {}
        for case in CASES:
            token = token_for(secured.issuer, case, role, method)
            row[case] = (await call(secured, method, token)).name
        outcomes[method] = row
    wrong = {}
    for method, row in outcomes.items():
        expected = {
            "no token": "UNAUTHENTICATED",
            "expired": "UNAUTHENTICATED",
            "wrong audience": "UNAUTHENTICATED",
            "wrong role": "PERMISSION_DENIED",
        }
        for case, code in expected.items():
            if row[case] != code:
                wrong[f"{method} / {case}"] = row[case]
        if row["right role"] in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            wrong[f"{method} / right role"] = row["right role"]
    assert wrong == {}, json.dumps(wrong, indent=1)


async def test_open_methods_need_no_token(secured: SecuredSuite) -> None:
    for method in OPEN_METHODS:
        assert await call(secured, method, "") == grpc.StatusCode.OK
    async with secured.channel(secured.governor.target) as channel:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def refusal(suite: SecuredSuite, token: str) -> TaiError:
    async with suite.channel(suite.governor.target, token) as channel:
        with pytest.raises(TaiError) as caught:
            await GovernorClient(channel).list_page()
    return caught.value


async def test_refusals_say_why(secured: SecuredSuite) -> None:
    issuer = secured.issuer
    cases: list[tuple[str, str]] = [
        ("", "missing bearer token"),
        ("not-a-jwt", "invalid token"),
        (issuer.token(roles=["viewer"], expires_in=-120), "expired"),
        (issuer.token(roles=["viewer"], audience="other"), "audience"),
        (issuer.token(roles=["viewer"], issuer="https://evil.test"), "issuer"),
        (issuer.token(roles=["viewer"], not_before_in=600), "not yet valid"),
        (issuer.token(roles=["viewer"], kid="unknown-kid"), "unknown signing key"),
    ]
    for token, reason in cases:
        error = await refusal(secured, token)
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert reason in error.message, error.message
    error = await refusal(secured, issuer.token("bob", roles=[]))
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert "bob has no role" in error.message


async def test_es256_tokens_and_a_small_clock_skew_are_accepted(secured: SecuredSuite) -> None:
    for token in (
        secured.issuer.token(roles=["viewer"], algorithm="ES256"),
        # Expired 10 s ago: within the allowed skew (30 s).
        secured.issuer.token(roles=["viewer"], expires_in=-10),
    ):
        async with secured.channel(secured.governor.target, token) as channel:
            await GovernorClient(channel).list_page()


async def test_a_rotated_key_is_picked_up_without_a_restart(secured: SecuredSuite) -> None:
    rotated = TokenIssuer(rsa_kid="rsa-2", ec_kid="ec-2")
    token = rotated.token(roles=["viewer"])
    assert (await refusal(secured, token)).code == grpc.StatusCode.UNAUTHENTICATED
    rotated.write_jwks(secured.jwks_file)
    async with secured.channel(secured.governor.target, token) as channel:
        await GovernorClient(channel).list_page()


async def test_the_principal_is_recorded_on_what_it_writes(secured: SecuredSuite) -> None:
    issuer = secured.issuer
    async with secured.channel(secured.governor.target, issuer.token("alice", ["operator"])) as a:
        receipt = await GovernorClient(a).propose(policy_type="finance", name="budget")
    async with secured.channel(secured.governor.target, issuer.token("carol", ["admin"])) as c:
        await GovernorClient(c).enforce(receipt.resource_id)
        policy = await GovernorClient(c).get(receipt.resource_id)
    assert (policy.created_by, policy.last_modified_by) == ("alice", "carol")

    token = issuer.token("dave", ["operator"])
    async with secured.channel(secured.coordinator.target, token) as channel:
        action = await CoordinatorClient(channel).request_action(
            action_type="scale", target_service="api"
        )
        assert (await CoordinatorClient(channel).get_action(action.resource_id)).created_by == (
            "dave"
        )


async def test_only_an_admin_cancels_someone_elses_task(secured: SecuredSuite) -> None:
    issuer = secured.issuer
    target = secured.scheduler.target
    later = {"scheduled_time_ns": 2**62}

    async def submit(token: str) -> str:
        async with secured.channel(target, token) as channel:
            receipt = await SchedulerClient(channel).submit(
                task_type="revoke_policy", parameters={"policy_id": "pol-x"}, **later
            )
            return str(receipt.resource_id)

    async def cancel(token: str, task_id: str) -> None:
        async with secured.channel(target, token) as channel:
            await SchedulerClient(channel).cancel(task_id, reason="no longer needed")

    alice = issuer.token("alice", ["operator"])
    task_id = await submit(alice)
    with pytest.raises(PermissionDenied):
        await cancel(issuer.token("bob", ["operator"]), task_id)
    await cancel(issuer.token("carol", ["admin"]), task_id)
    await cancel(alice, await submit(alice))  # one's own task needs no admin


async def _records(suite: SecuredSuite, **kwargs: Any) -> list[common_pb2.AuditRecord]:
    admin = suite.issuer.token("auditor", ["admin"])
    async with suite.channel(suite.governor.target, admin) as channel:
        reply = await governor_pb2_grpc_stub(channel).ListAuditRecords(
            governor_pb2.ListAuditRecordsRequest(page_size=1000, **kwargs)
        )
    return list(reply.records)


def governor_pb2_grpc_stub(channel: grpc.aio.Channel) -> Any:
    from tai.v1 import governor_pb2_grpc

    return governor_pb2_grpc.GovernorStub(channel)


async def test_changes_and_refused_calls_are_audited(secured: SecuredSuite) -> None:
    issuer = secured.issuer
    async with secured.channel(secured.governor.target, issuer.token("alice", ["operator"])) as a:
        receipt = await GovernorClient(a).propose(policy_type="security", name="tls")
        with pytest.raises(PermissionDenied):
            await GovernorClient(a).enforce(receipt.resource_id)  # operators may not
    operator = issuer.token("olga", ["operator"])
    async with secured.channel(secured.coordinator.target, operator) as c:
        signal = await CoordinatorClient(c).submit_signal(signal_type="event", priority=3)
        action = await CoordinatorClient(c).request_action(
            action_type="restart", target_service="api"
        )
    async with secured.channel(secured.scheduler.target, operator) as c:
        task = await SchedulerClient(c).submit(
            task_type="revoke_policy", parameters={"policy_id": "p"}, scheduled_time_ns=2**62
        )
    # The other services' records reach the Governor's audit log over the bus.
    records = await _records(secured)
    async with asyncio.timeout(20):
        while len(records) < 4:
            await asyncio.sleep(0.05)
            records = await _records(secured)
    resources = {(r.service, r.resource, r.principal) for r in records}
    assert ("coordinator", f"action/{action.resource_id}", "olga") in resources
    # Signals are data, not changes: their own documents are their record.
    assert not [r for r in records if r.resource == f"signal/{signal.resource_id}"]
    assert ("scheduler", f"task/{task.resource_id}", "olga") in resources
    by_outcome = {r.outcome: r for r in records if r.service == "governor"}
    change = by_outcome["ok"]
    assert (change.principal, change.action, change.resource) == (
        "alice",
        "/tai.v1.Governor/ProposePolicy",
        f"policy/{receipt.resource_id}",
    )
    assert change.new_digest
    assert not change.old_digest
    refused = by_outcome["PERMISSION_DENIED"]
    assert (refused.principal, refused.action) == ("alice", "/tai.v1.Governor/EnforcePolicy")
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert all(r.prev_hash == p.hash for p, r in itertools.pairwise(records))
