"""The Coordinator's compiled view of the live policies."""

from __future__ import annotations

from tai.v1 import governor_pb2
from tai_common.core import signal_variables
from tai_coordinator.policy_book import PolicyBook

ENFORCED = governor_pb2.POLICY_STATE_ENFORCED
DRY_RUN = governor_pb2.POLICY_STATE_DRY_RUN
REVOKED = governor_pb2.POLICY_STATE_REVOKED


def policy(
    policy_id: str,
    version: int,
    state: int,
    condition: str = "signal.priority >= 8",
    enabled: bool = True,
) -> governor_pb2.Policy:
    return governor_pb2.Policy(
        id=policy_id,
        version=version,
        revision=version,
        state=state,  # type: ignore[arg-type]
        enabled=enabled,
        condition=condition,
        action=governor_pb2.ActionTemplate(action_type="scale", target_service="api"),
    )


def signal(priority: int) -> dict[str, object]:
    return signal_variables(
        signal_id="s",
        signal_type="alert",
        priority=priority,
        source="",
        metadata={},
        payload_size=0,
        timestamp_ns=0,
    )


def matching(book: PolicyBook, variables: dict[str, object]) -> list[str]:
    """The ids of the policies whose condition matches."""
    return sorted(p.id for p, evaluation in book.evaluate(variables) if evaluation.matched)


def test_enforced_and_dry_run_policies_are_both_evaluated() -> None:
    book = PolicyBook()
    book.apply(policy("a", 2, ENFORCED))
    book.apply(policy("b", 2, DRY_RUN))
    evaluated = book.evaluate(signal(9))
    assert sorted((p.id, p.dry_run, e.matched) for p, e in evaluated) == [
        ("a", False, True),
        ("b", True, True),
    ]
    assert matching(book, signal(3)) == []
    assert {p.id for p, _ in book.evaluate(signal(3))} == {"a", "b"}


def test_a_late_older_version_does_not_come_back() -> None:
    book = PolicyBook()
    book.apply(policy("a", 1, ENFORCED))
    book.apply(policy("a", 3, REVOKED))
    assert not book.apply(policy("a", 2, ENFORCED))
    assert len(book) == 0
    assert book.revision == 3


def test_the_revision_stops_at_the_first_change_not_yet_seen() -> None:
    book = PolicyBook()
    for revision in (1, 2, 4, 5):
        book.apply(policy(f"p{revision}", revision, ENFORCED))
    assert book.revision == 2  # 3 has not come: the replica has caught up to 2 only
    book.apply(policy("p3", 3, ENFORCED))
    assert book.revision == 5


def test_a_listing_as_of_a_revision_covers_the_changes_before_it() -> None:
    book = PolicyBook()
    book.apply(policy("a", 1, ENFORCED))
    book.apply(policy("c", 6, ENFORCED))  # 2..5 were missed
    book.replace_all([policy("a", 1, ENFORCED), policy("b", 4, ENFORCED)], as_of_revision=5)
    assert book.revision == 6
    assert matching(book, signal(9)) == ["a", "b", "c"]


def test_disabled_policies_are_not_evaluated() -> None:
    book = PolicyBook()
    book.apply(policy("a", 2, ENFORCED, enabled=False))
    assert len(book) == 0


def test_a_full_listing_drops_policies_revoked_meanwhile() -> None:
    book = PolicyBook()
    book.apply(policy("a", 2, ENFORCED))
    book.apply(policy("b", 2, ENFORCED))
    book.replace_all([policy("a", 2, ENFORCED)])
    assert matching(book, signal(9)) == ["a"]
    assert book.loaded
