"""The rules of namespaces that need no server: which names are namespaces, where a namespace's
collections live (and that SQLite's flat table names cannot collide), what a token's
namespaces claim grants, and a caller's role in each namespace."""

from __future__ import annotations

import pytest
from tai_common.auth import Principal, Role
from tai_common.auth.jwt_verifier import _namespaces_of
from tai_common.core.namespace import NoNamespace, current_namespace, in_namespace
from tai_common.ports import check_collection, namespaced_collection, split_collection
from tai_common.sqlite.sql import flat_name
from tai_rpc import namespace_name_problem


@pytest.mark.parametrize("name", ["default", "team-a", "a", "a1-b2-c3", "x" * 40])
def test_namespace_names(name: str) -> None:
    assert namespace_name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", "Team", "team_a", "team--a", "-a", "a-", "1a", "x" * 41, "a/b", "*"]
)
def test_not_namespace_names(name: str) -> None:
    problem = namespace_name_problem(name)
    assert problem is not None
    assert "lowercase letters, digits and single hyphens" in problem


def test_a_namespaces_collections_live_under_it_and_the_defaults_at_the_root() -> None:
    assert namespaced_collection("default", "policies") == "policies"
    assert namespaced_collection("team-a", "policies") == "namespaces/team-a/policies"
    assert split_collection("namespaces/team-a/policies") == ("team-a", "policies")
    assert split_collection("policies") == (None, "policies")
    assert check_collection("namespaces/team-a/policies")
    for bad in ("namespaces/Team/policies", "namespaces/a/b/c", "namespaces/a/Bad"):
        with pytest.raises(ValueError, match="invalid collection name"):
            check_collection(bad)


def test_sqlite_table_names_of_namespaces_cannot_collide() -> None:
    names = ["a-b", "a-b-c", "ab", "a-bc", "ab-c", "a1-b"]
    flat = {flat_name(namespaced_collection(n, "policies")) for n in names}
    assert len(flat) == len(names)
    assert flat_name("namespaces/team-a/policy_versions") == "policy_versions__ns__team_a"
    assert flat_name("policies") == "policies"


def test_the_namespaces_claim_as_an_object_or_a_list() -> None:
    assert _namespaces_of(None) is None
    assert _namespaces_of({"team-a": "operator", "*": "viewer"}) == {
        "team-a": Role.OPERATOR,
        "*": Role.VIEWER,
    }
    assert _namespaces_of(["team-a:admin", "team-b:viewer", "team-a:viewer"]) == {
        "team-a": Role.ADMIN,
        "team-b": Role.VIEWER,
    }
    # Names that are not namespaces, and roles that are not roles, grant nothing.
    assert _namespaces_of({"Team A": "admin", "team-c": "boss", "team-d": 3}) == {}
    assert _namespaces_of("team-a:admin") == {}


def test_a_callers_role_in_each_namespace() -> None:
    team = Principal("alice", None, namespaces={"team-a": Role.OPERATOR, "*": Role.VIEWER})
    assert team.role_in("team-a") == Role.OPERATOR
    assert team.role_in("team-b") == Role.VIEWER
    assert team.has(Role.OPERATOR, "team-a")
    assert not team.has(Role.OPERATOR, "team-b")
    # A token from before namespaces: its role, in default only.
    legacy = Principal("bob", Role.ADMIN)
    assert legacy.role_in("default") == Role.ADMIN
    assert legacy.role_in("team-a") is None
    assert legacy.held_namespaces() == frozenset({"default"})
    # `has` without a namespace asks about the one the current call works in.
    with in_namespace("team-a"):
        assert team.has(Role.OPERATOR)
        assert not legacy.has(Role.VIEWER)
    # Services hold no role; their calls are allowed by method, in every namespace.
    assert Principal("service:scheduler", None, kind="service").role_in("team-a") is None


def test_no_namespace_is_set_outside_one() -> None:
    with pytest.raises(NoNamespace):
        current_namespace()
    with in_namespace("team-a"):
        assert current_namespace() == "team-a"
    with pytest.raises(NoNamespace):
        current_namespace()
