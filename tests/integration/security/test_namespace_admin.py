"""Administering namespaces over the wire, with tokens: who may create, read, limit and delete
them; what bad requests get; deleting refused while a namespace holds anything, and forced in
the background; the enforced-policies quota exact under concurrent enforcements."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from support.namespaces import Caller, Installation, eventually, namespaced_suite
from support.tokens import TokenIssuer
from tai.v1 import governor_pb2

POLICY = {
    "policy_type": "operational",
    "policy_name": "p",
    "condition": "signal.type == 'alert'",
    "action": {"action_type": "scale", "target_service": "api"},
}


async def _code(call: asyncio.Future[object] | object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
async def suite(tmp_path: Path) -> object:
    async with namespaced_suite(f"sqlite:///{tmp_path / 'tai.db'}", tmp_path, TokenIssuer()) as s:
        yield s


async def test_platform_admins_create_and_limit_namespaces_teams_see_their_own(
    suite: Installation,
) -> None:
    platform = suite.caller({"*": "admin"})
    team = suite.caller({"team-a": "operator"})
    legacy_admin = Caller(suite.targets, suite.issuer.token("old", ["admin"]))
    try:
        created = await platform.ok(
            "Governor",
            "CreateNamespace",
            {"name": "team-a", "description": "payments", "quotas": {"max_open_tasks": 5}},
            "default",
        )
        assert created.state == governor_pb2.NAMESPACE_STATE_ACTIVE
        assert created.quotas.max_open_tasks == 5
        await platform.ok("Governor", "CreateNamespace", {"name": "team-b"}, "default")

        # Only platform admins change namespaces; an admin of default alone is not one.
        for caller in (team, legacy_admin):
            code, message = await _code(
                caller.ok("Governor", "CreateNamespace", {"name": "team-c"}, "default")
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED, message
        # Each caller lists what it holds.
        listed = await team.ok("Governor", "ListNamespaces", {}, "default")
        assert [n.name for n in listed.namespaces] == ["team-a"]
        listed = await legacy_admin.ok("Governor", "ListNamespaces", {}, "default")
        assert [n.name for n in listed.namespaces] == ["default"]
        listed = await platform.ok("Governor", "ListNamespaces", {}, "default")
        assert [n.name for n in listed.namespaces] == ["default", "team-a", "team-b"]
        code, _ = await _code(team.ok("Governor", "GetNamespace", {"name": "team-b"}, "default"))
        assert code == grpc.StatusCode.PERMISSION_DENIED

        changed = await platform.ok(
            "Governor",
            "SetNamespaceQuotas",
            {"name": "team-a", "quotas": {"max_enforced_policies": 2}},
            "default",
        )
        assert changed.quotas.max_enforced_policies == 2
        assert changed.quotas.max_open_tasks == 0  # replaced, not merged
        got = await team.ok("Governor", "GetNamespace", {"name": "team-a"}, "default")
        assert got.quotas == changed.quotas

        # Bad requests name the field to fix.
        for body, field in (
            ({"name": "Team_A"}, "name"),
            ({"name": ""}, "name"),
            ({"name": "team-c", "quotas": {"max_open_tasks": -1}}, "quotas.max_open_tasks"),
        ):
            code, message = await _code(platform.ok("Governor", "CreateNamespace", body, "default"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, message
            assert message.startswith(field), message
        code, _ = await _code(
            platform.ok("Governor", "CreateNamespace", {"name": "team-a"}, "default")
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS
        # A namespace that does not exist, named by one who could use it; a bad name.
        code, message = await _code(platform.ok("Governor", "GetPolicies", {}, "team-z"))
        assert code == grpc.StatusCode.NOT_FOUND, message
        code, message = await _code(platform.ok("Governor", "GetPolicies", {}, "Not A Name"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "x-tai-namespace" in message
    finally:
        for caller in (platform, team, legacy_admin):
            await caller.close()


async def test_the_enforced_policies_quota_holds_under_concurrent_enforcements(
    suite: Installation,
) -> None:
    platform = suite.caller({"*": "admin"})
    try:
        await platform.ok(
            "Governor",
            "CreateNamespace",
            {"name": "team-a", "quotas": {"max_enforced_policies": 3}},
            "default",
        )
        ids = [f"p{n}" for n in range(8)]
        for policy_id in ids:
            await platform.ok("Governor", "ProposePolicy", {"id": policy_id, **POLICY}, "team-a")
        results = await asyncio.gather(
            *(_code(platform.ok("Governor", "EnforcePolicy", {"id": i}, "team-a")) for i in ids)
        )
        codes = [code for code, _ in results]
        assert codes.count(grpc.StatusCode.OK) == 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 5
        message = next(m for c, m in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "namespace 'team-a' quota max_enforced_policies=3" in message
        # Other namespaces are not held by it.
        await platform.ok("Governor", "ProposePolicy", {"id": "q", **POLICY}, "default")
        await platform.ok("Governor", "EnforcePolicy", {"id": "q"}, "default")
    finally:
        await platform.close()


async def test_deleting_a_namespace_is_refused_while_it_holds_anything_unless_forced(
    suite: Installation,
) -> None:
    platform = suite.caller({"*": "admin"})
    try:
        await platform.ok("Governor", "CreateNamespace", {"name": "team-a"}, "default")
        await platform.ok("Governor", "ProposePolicy", {"id": "p", **POLICY}, "team-a")
        code, message = await _code(
            platform.ok("Governor", "DeleteNamespace", {"name": "team-a"}, "default")
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "policies" in message
        code, _ = await _code(
            platform.ok("Governor", "DeleteNamespace", {"name": "default", "force": True}, "")
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION

        deleting = await platform.ok(
            "Governor", "DeleteNamespace", {"name": "team-a", "force": True}, "default"
        )
        assert deleting.state == governor_pb2.NAMESPACE_STATE_DELETING

        async def gone() -> bool:
            listed = await platform.ok("Governor", "ListNamespaces", {}, "default")
            return "team-a" not in [n.name for n in listed.namespaces]

        await eventually(gone)
        # Made again, it holds nothing of before; the deletion is in default's audit trail.
        await platform.ok("Governor", "CreateNamespace", {"name": "team-a"}, "default")
        policies = await platform.ok("Governor", "GetPolicies", {}, "team-a")
        assert list(policies.policies) == []

        async def audited() -> bool:
            records = await platform.ok("Governor", "ListAuditRecords", {}, "default")
            resources = [r.resource for r in records.records]
            return resources.count("namespace/team-a") == 3  # created, deleting, created

        await eventually(audited)
    finally:
        await platform.close()


async def test_a_namespaces_rate_limit_holds_its_callers_only(suite: Installation) -> None:
    platform = suite.caller({"*": "admin"})
    try:
        await platform.ok(
            "Governor",
            "CreateNamespace",
            {"name": "team-a", "quotas": {"rate_limit_per_second": 2}},
            "default",
        )
        results = [
            await _code(platform.ok("Governor", "GetPolicies", {}, "team-a")) for _ in range(6)
        ]
        limited = [m for c, m in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(limited) >= 3, results
        assert "in namespace 'team-a'" in limited[0]
        # The installation sets no rate: the default namespace is not limited.
        for _ in range(6):
            await platform.ok("Governor", "GetPolicies", {}, "default")
    finally:
        await platform.close()
