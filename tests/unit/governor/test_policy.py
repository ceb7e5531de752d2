"""The policy domain without gRPC or a store: validation and the lifecycle."""

from __future__ import annotations

import pytest
from tai_common.core import FailedPrecondition, InvalidArgument
from tai_governor.policy import (
    ActionTemplate,
    PolicyContent,
    PolicyState,
    PolicyVersion,
    check_policy_id,
    check_transition,
    validate_content,
)


def content(**overrides: object) -> PolicyContent:
    base: dict[str, object] = {
        "policy_type": "security",
        "name": "tls",
        "condition": "signal.priority >= 8",
        "action": ActionTemplate(action_type="page", target_service="oncall"),
    }
    base.update(overrides)
    return PolicyContent(**base)  # type: ignore[arg-type]


def version(state: PolicyState) -> PolicyVersion:
    return PolicyVersion(
        id="pol-1",
        version=3,
        state=state,
        content=content(),
        created_at_ns=1,
        updated_at_ns=2,
        created_by="alice",
        last_modified_by="bob",
        revision=7,
    )


def test_a_valid_policy_passes() -> None:
    validate_content(content())


def test_rules_only_policy_without_condition_is_valid() -> None:
    # The seed's policies carry rules and no condition; they are never matched against signals.
    validate_content(content(condition="", action=ActionTemplate(), rules={"tls": "1.3"}))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"policy_type": "hr"}, "policy_type"),
        ({"name": ""}, "policy_name"),
        ({"condition": "signal.priority"}, "condition"),
        (
            {
                "action": ActionTemplate(
                    action_type="x", target_service="ok", cooldown_seconds=10**9
                )
            },
            "action.cooldown_seconds",
        ),
        (
            {"action": ActionTemplate(action_type="x", target_service="ok", max_deliveries=101)},
            "action.max_deliveries",
        ),
        ({"description": "d" * 2001}, "description"),
        ({"effective_time_ns": -1}, "effective_time_ns"),
    ],
)
def test_invalid_content_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_content(content(**overrides))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("state", "target"),
    [
        (PolicyState.PROPOSED, PolicyState.ENFORCED),
        (PolicyState.PROPOSED, PolicyState.DRY_RUN),
        (PolicyState.DRY_RUN, PolicyState.ENFORCED),
        (PolicyState.ENFORCED, PolicyState.DRY_RUN),
        (PolicyState.ENFORCED, PolicyState.REVOKED),
        (PolicyState.PROPOSED, PolicyState.REVOKED),
    ],
)
def test_allowed_transitions(state: PolicyState, target: PolicyState) -> None:
    check_transition(version(state), target)


@pytest.mark.parametrize(
    ("state", "target"),
    [
        (PolicyState.REVOKED, PolicyState.ENFORCED),
        (PolicyState.REVOKED, PolicyState.REVOKED),
        (PolicyState.ENFORCED, PolicyState.ENFORCED),
        (PolicyState.DRY_RUN, PolicyState.DRY_RUN),
    ],
)
def test_refused_transitions(state: PolicyState, target: PolicyState) -> None:
    with pytest.raises(FailedPrecondition):
        check_transition(version(state), target)


def test_successor_is_a_new_version_and_leaves_the_old_one_alone() -> None:
    old = version(PolicyState.PROPOSED)
    new = old.successor(state=PolicyState.ENFORCED, now_ns=99, principal="carol", revision=8)
    assert (new.version, new.state, new.revision, new.last_modified_by) == (
        4,
        PolicyState.ENFORCED,
        8,
        "carol",
    )
    assert (new.created_by, new.created_at_ns) == ("alice", 1)
    assert (old.version, old.state) == (3, PolicyState.PROPOSED)


def test_documents_round_trip() -> None:
    original = version(PolicyState.DRY_RUN)
    assert PolicyVersion.from_doc(original.to_doc()) == original


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 129])
def test_policy_ids_are_checked(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_policy_id(bad)
