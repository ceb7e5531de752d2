"""Decision records: what each policy's evaluation against a signal came to, and why.

The live path (`CoordinatorService.submit_signal`) and the rehearsal (`simulation`) decide the
same way, through `decide`: a condition's evaluation, then what may hold a matching action back
(the cooldown). A signal's record is stored in its own document, in the transaction that stores
the signal, so it lives exactly as long as the signal and never goes missing after a commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from tai_common.core import Evaluation

from tai_coordinator.policy_book import ActivePolicy

# A record keeps every decision that acted or could have (matched, held, error) and at most
# this many NOT_MATCHED ones, counting the rest: with hundreds of policies, the record of a
# signal that matched none stays a few kilobytes.
MAX_NOT_MATCHED_RECORDED = 50


class DecisionOutcome(StrEnum):
    MATCHED = "MATCHED"
    NOT_MATCHED = "NOT_MATCHED"
    ERROR = "ERROR"
    HELD = "HELD"


class HoldReason(StrEnum):
    COOLDOWN = "COOLDOWN"
    SILENCE = "SILENCE"
    LIMIT = "LIMIT"
    APPROVAL = "APPROVAL"


class PolicyMode(StrEnum):
    ENFORCED = "ENFORCED"
    DRY_RUN = "DRY_RUN"


@dataclass(frozen=True)
class Cooldown:
    """A (policy, signal fingerprint) pair's cooldown: until when, started by which action."""

    until_ns: int
    action_id: str


@dataclass(frozen=True)
class PolicyDecision:
    """One policy's evaluation against one signal."""

    policy_id: str
    policy_version: int
    policy_name: str
    mode: PolicyMode
    outcome: DecisionOutcome
    failed_clause: str = ""
    error: str = ""
    hold_reason: HoldReason | None = None
    held_until_ns: int = 0
    held_by: str = ""
    action_id: str = ""
    target_service: str = ""

    @property
    def creates_action(self) -> bool:
        """Whether the decision creates an action: an ENFORCED policy's match, delivered at once
        or once approved."""
        if self.outcome is DecisionOutcome.HELD:
            return self.hold_reason is HoldReason.APPROVAL
        return self.outcome is DecisionOutcome.MATCHED and self.mode is PolicyMode.ENFORCED

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "policy_id": self.policy_id,
            "version": self.policy_version,
            "name": self.policy_name,
            "mode": self.mode.value,
            "outcome": self.outcome.value,
        }
        # Only what is set: most entries of a record are a bare NOT_MATCHED.
        optional = {
            "failed_clause": self.failed_clause,
            "error": self.error,
            "hold_reason": self.hold_reason.value if self.hold_reason else "",
            "held_until_ns": self.held_until_ns,
            "held_by": self.held_by,
            "action_id": self.action_id,
            "target_service": self.target_service,
        }
        doc.update({key: value for key, value in optional.items() if value})
        return doc

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> PolicyDecision:
        hold_reason = data.get("hold_reason")
        return cls(
            policy_id=data["policy_id"],
            policy_version=int(data["version"]),
            policy_name=data.get("name", ""),
            mode=PolicyMode(data["mode"]),
            outcome=DecisionOutcome(data["outcome"]),
            failed_clause=data.get("failed_clause", ""),
            error=data.get("error", ""),
            hold_reason=HoldReason(hold_reason) if hold_reason else None,
            held_until_ns=int(data.get("held_until_ns", 0)),
            held_by=data.get("held_by", ""),
            action_id=data.get("action_id", ""),
            target_service=data.get("target_service", ""),
        )


@dataclass(frozen=True)
class DecisionRecord:
    """A signal's decision record: the policies evaluated against it and what each came to."""

    evaluated_at_ns: int
    policy_revision: int
    policies_evaluated: int
    decisions: tuple[PolicyDecision, ...]
    omitted_not_matched: int = 0
    replica_id: str = ""

    @classmethod
    def bounded(
        cls,
        decisions: Sequence[PolicyDecision],
        *,
        evaluated_at_ns: int,
        policy_revision: int,
        replica_id: str,
    ) -> DecisionRecord:
        """The record of `decisions`, keeping at most `MAX_NOT_MATCHED_RECORDED` NOT_MATCHED
        entries (the first ones) and counting the others."""
        kept: list[PolicyDecision] = []
        not_matched = 0
        for decision in decisions:
            if decision.outcome is DecisionOutcome.NOT_MATCHED:
                not_matched += 1
                if not_matched > MAX_NOT_MATCHED_RECORDED:
                    continue
            kept.append(decision)
        return cls(
            evaluated_at_ns=evaluated_at_ns,
            policy_revision=policy_revision,
            policies_evaluated=len(decisions),
            decisions=tuple(kept),
            omitted_not_matched=max(0, not_matched - MAX_NOT_MATCHED_RECORDED),
            replica_id=replica_id,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "evaluated_at_ns": self.evaluated_at_ns,
            "policy_revision": self.policy_revision,
            "policies_evaluated": self.policies_evaluated,
            "decisions": [d.to_doc() for d in self.decisions],
            "omitted_not_matched": self.omitted_not_matched,
            "replica_id": self.replica_id,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> DecisionRecord:
        return cls(
            evaluated_at_ns=int(data["evaluated_at_ns"]),
            policy_revision=int(data.get("policy_revision", 0)),
            policies_evaluated=int(data.get("policies_evaluated", 0)),
            decisions=tuple(PolicyDecision.from_doc(d) for d in data.get("decisions", ())),
            omitted_not_matched=int(data.get("omitted_not_matched", 0)),
            replica_id=data.get("replica_id", ""),
        )


@dataclass(frozen=True)
class Hold:
    """What holds a matching action back, until when, and which object holds it (a silence's
    id, a limit's description, the action that started a cooldown or awaits approval)."""

    reason: HoldReason
    until_ns: int
    by: str


def decide(
    active: ActivePolicy,
    evaluation: Evaluation,
    *,
    now_ns: int,
    silence: Hold | None = None,
    cooldown: Cooldown | None = None,
    action_id: str = "",
) -> PolicyDecision:
    """What `evaluation` of `active`'s condition comes to: no match, an error, a hold (an
    active `silence`, or the pair's `cooldown` not ended at `now_ns`), or a match, which for an
    ENFORCED policy creates the action `action_id`. DRY_RUN matches create nothing and are
    never held (a dry run starts no cooldown). The holds that need the store (limits) and the
    approval come after, through `held`."""
    policy = active.policy
    matched = PolicyDecision(
        policy_id=policy.id,
        policy_version=policy.version,
        policy_name=policy.policy_name,
        mode=PolicyMode.DRY_RUN if active.dry_run else PolicyMode.ENFORCED,
        outcome=DecisionOutcome.MATCHED,
        target_service=policy.action.target_service,
    )
    if evaluation.error:
        return replace(matched, outcome=DecisionOutcome.ERROR, error=evaluation.error)
    if not evaluation.matched:
        return replace(
            matched, outcome=DecisionOutcome.NOT_MATCHED, failed_clause=evaluation.failed_clause
        )
    if active.dry_run:
        return matched
    if silence is not None:
        return held(matched, silence)
    if cooldown is not None and cooldown.until_ns > now_ns:
        return held(matched, Hold(HoldReason.COOLDOWN, cooldown.until_ns, cooldown.action_id))
    return replace(matched, action_id=action_id)


def held(decision: PolicyDecision, hold: Hold) -> PolicyDecision:
    """`decision`, a match, held back by `hold`. Awaiting approval, the action exists (and
    keeps its id); held by anything else, none is created."""
    return replace(
        decision,
        outcome=DecisionOutcome.HELD,
        hold_reason=hold.reason,
        held_until_ns=hold.until_ns,
        held_by=hold.by,
        action_id=decision.action_id if hold.reason is HoldReason.APPROVAL else "",
    )
