"""Translation between the Coordinator's protobuf messages and its domain types."""

from __future__ import annotations

from tai.v1 import coordinator_pb2, governor_pb2

from tai_coordinator.decisions import (
    DecisionOutcome,
    DecisionRecord,
    HoldReason,
    PolicyDecision,
    PolicyMode,
)
from tai_coordinator.model import Action, ActionRequest, ActionStatus, SignalInput, StoredSignal
from tai_coordinator.silences import Silence, SilenceRequest, SilenceState
from tai_coordinator.simulation import (
    DecisionSummary,
    SimulationReport,
    SimulationRequest,
    SummaryRequest,
)

STATUS_TO_PROTO = {
    ActionStatus.PENDING: coordinator_pb2.ACTION_STATUS_PENDING,
    ActionStatus.DELIVERED: coordinator_pb2.ACTION_STATUS_DELIVERED,
    ActionStatus.ACCEPTED: coordinator_pb2.ACTION_STATUS_ACCEPTED,
    ActionStatus.COMPLETED: coordinator_pb2.ACTION_STATUS_COMPLETED,
    ActionStatus.REJECTED: coordinator_pb2.ACTION_STATUS_REJECTED,
    ActionStatus.FAILED: coordinator_pb2.ACTION_STATUS_FAILED,
    ActionStatus.EXPIRED: coordinator_pb2.ACTION_STATUS_EXPIRED,
    ActionStatus.AWAITING_APPROVAL: coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}
OUTCOME_TO_PROTO = {
    DecisionOutcome.MATCHED: coordinator_pb2.DECISION_OUTCOME_MATCHED,
    DecisionOutcome.NOT_MATCHED: coordinator_pb2.DECISION_OUTCOME_NOT_MATCHED,
    DecisionOutcome.ERROR: coordinator_pb2.DECISION_OUTCOME_ERROR,
    DecisionOutcome.HELD: coordinator_pb2.DECISION_OUTCOME_HELD,
}
HOLD_REASON_TO_PROTO = {
    HoldReason.COOLDOWN: coordinator_pb2.HOLD_REASON_COOLDOWN,
    HoldReason.SILENCE: coordinator_pb2.HOLD_REASON_SILENCE,
    HoldReason.LIMIT: coordinator_pb2.HOLD_REASON_LIMIT,
    HoldReason.APPROVAL: coordinator_pb2.HOLD_REASON_APPROVAL,
}
MODE_TO_PROTO = {
    PolicyMode.ENFORCED: governor_pb2.POLICY_STATE_ENFORCED,
    PolicyMode.DRY_RUN: governor_pb2.POLICY_STATE_DRY_RUN,
}


def signal_from_request(request: coordinator_pb2.SubmitSignalRequest) -> SignalInput:
    return SignalInput(
        signal_id=request.id,
        signal_type=request.signal_type,
        priority=request.priority,
        metadata=dict(request.metadata),
        payload=request.payload,
        source=request.source,
        timestamp_ns=request.timestamp_ns,
    )


def signal_to_proto(stored: StoredSignal) -> coordinator_pb2.Signal:
    s = stored.signal
    return coordinator_pb2.Signal(
        id=s.signal_id,
        signal_type=s.signal_type,
        timestamp_ns=s.timestamp_ns or stored.received_at_ns,
        metadata=dict(s.metadata),
        payload=s.payload,
        priority=s.priority,
        source=s.source,
        received_at_ns=stored.received_at_ns,
        matched_policy_ids=list(stored.matched_policy_ids),
        action_ids=list(stored.action_ids),
        dry_run_policy_ids=list(stored.dry_run_policy_ids),
    )


def decision_to_proto(stored: StoredSignal) -> coordinator_pb2.SignalDecision:
    """The signal and its decision record (only the signal when stored without one)."""
    record = stored.decision
    message = coordinator_pb2.SignalDecision(signal=signal_to_proto(stored))
    if record is not None:
        message.MergeFrom(_record_to_proto(record))
    return message


def _record_to_proto(record: DecisionRecord) -> coordinator_pb2.SignalDecision:
    return coordinator_pb2.SignalDecision(
        evaluated_at_ns=record.evaluated_at_ns,
        policy_revision=record.policy_revision,
        policies_evaluated=record.policies_evaluated,
        decisions=[_policy_decision_to_proto(d) for d in record.decisions],
        omitted_not_matched=record.omitted_not_matched,
        replica_id=record.replica_id,
    )


def _policy_decision_to_proto(decision: PolicyDecision) -> coordinator_pb2.PolicyDecision:
    return coordinator_pb2.PolicyDecision(
        policy_id=decision.policy_id,
        policy_version=decision.policy_version,
        policy_name=decision.policy_name,
        mode=MODE_TO_PROTO[decision.mode],
        outcome=OUTCOME_TO_PROTO[decision.outcome],
        failed_clause=decision.failed_clause,
        error=decision.error,
        hold_reason=(
            HOLD_REASON_TO_PROTO[decision.hold_reason]
            if decision.hold_reason
            else coordinator_pb2.HOLD_REASON_UNSPECIFIED
        ),
        held_until_ns=decision.held_until_ns,
        held_by=decision.held_by,
        action_id=decision.action_id,
        target_service=decision.target_service,
    )


def action_request_from_proto(request: coordinator_pb2.RequestActionRequest) -> ActionRequest:
    return ActionRequest(
        action_id=request.id,
        action_type=request.action_type,
        target_service=request.target_service,
        parameters=dict(request.parameters),
        payload=request.payload,
        source_service=request.source_service,
        timestamp_ns=request.timestamp_ns,
        not_before_ns=request.not_before_ns,
        ack_deadline_seconds=request.ack_deadline_seconds,
        max_deliveries=request.max_deliveries,
        priority=request.priority,
    )


def action_to_proto(action: Action) -> coordinator_pb2.Action:
    return coordinator_pb2.Action(
        id=action.id,
        action_type=action.action_type,
        timestamp_ns=action.timestamp_ns,
        parameters=dict(action.parameters),
        payload=action.payload,
        source_service=action.source_service,
        target_service=action.target_service,
        status=STATUS_TO_PROTO[action.status],
        policy_id=action.policy_id,
        policy_version=action.policy_version,
        signal_id=action.signal_id,
        delivery_count=action.delivery_count,
        max_deliveries=action.max_deliveries,
        ack_deadline_seconds=action.ack_deadline_seconds,
        next_delivery_ns=action.next_delivery_ns,
        updated_at_ns=action.updated_at_ns,
        status_message=action.status_message,
        priority=action.priority,
        created_by=action.created_by,
        approval_deadline_ns=action.approval_deadline_ns,
        reviewed_by=action.reviewed_by,
        reviewed_at_ns=action.reviewed_at_ns,
        review_comment=action.review_comment,
    )


def summary_request_from_proto(
    request: coordinator_pb2.SummarizeDecisionsRequest,
) -> SummaryRequest:
    return SummaryRequest(
        policy_id=request.policy_id,
        since_ns=request.since_ns,
        until_ns=request.until_ns,
        max_seconds=request.max_seconds,
    )


def decision_summary_to_proto(summary: DecisionSummary) -> coordinator_pb2.DecisionSummary:
    return coordinator_pb2.DecisionSummary(
        policy_id=summary.policy_id,
        signals_scanned=summary.signals_scanned,
        decided=summary.decided,
        by_outcome=dict(summary.by_outcome),
        by_hold_reason=dict(summary.by_hold_reason),
        actions=summary.actions,
        by_version=dict(summary.by_version),
        window_since_ns=summary.window_since_ns,
        window_until_ns=summary.window_until_ns,
        scanned_until_ns=summary.scanned_until_ns,
        complete=summary.complete,
    )


def simulation_request_from_proto(
    request: coordinator_pb2.SimulatePolicyRequest,
) -> SimulationRequest:
    draft = None
    if request.WhichOneof("policy") == "draft":
        draft = governor_pb2.Policy(condition=request.draft.condition, enabled=True)
        draft.action.CopyFrom(request.draft.action)
    return SimulationRequest(
        draft=draft,
        stored_id=request.stored.id,
        stored_version=request.stored.version,
        since_ns=request.since_ns,
        until_ns=request.until_ns,
        last=request.last,
        sample_size=request.sample_size,
        max_seconds=request.max_seconds,
    )


def simulation_report_to_proto(report: SimulationReport) -> coordinator_pb2.SimulatePolicyResponse:
    return coordinator_pb2.SimulatePolicyResponse(
        policy_id=report.policy_id,
        policy_version=report.policy_version,
        signals_scanned=report.signals_scanned,
        matched=report.matched,
        actions=report.actions,
        held=report.held,
        not_matched=report.not_matched,
        errors=report.errors,
        actions_by_target=dict(report.actions_by_target),
        failed_clauses=dict(report.failed_clauses),
        held_by_reason=dict(report.held_by_reason),
        sample=[signal_to_proto(s) for s in report.sample],
        error_samples=[
            coordinator_pb2.SimulationError(error=e.error, count=e.count, signal_id=e.signal_id)
            for e in report.error_samples
        ],
        window_since_ns=report.window_since_ns,
        window_until_ns=report.window_until_ns,
        scanned_until_ns=report.scanned_until_ns,
        complete=report.complete,
        elapsed_seconds=report.elapsed_seconds,
    )


SILENCE_STATE_TO_PROTO = {
    SilenceState.PENDING: coordinator_pb2.SILENCE_STATE_PENDING,
    SilenceState.ACTIVE: coordinator_pb2.SILENCE_STATE_ACTIVE,
    SilenceState.EXPIRED: coordinator_pb2.SILENCE_STATE_EXPIRED,
}


def silence_request_from_proto(request: coordinator_pb2.CreateSilenceRequest) -> SilenceRequest:
    return SilenceRequest(
        silence_id=request.id,
        condition=request.matcher.condition,
        target_service=request.matcher.target_service,
        policy_id=request.matcher.policy_id,
        starts_at_ns=request.starts_at_ns,
        ends_at_ns=request.ends_at_ns,
        comment=request.comment,
    )


def silence_to_proto(silence: Silence, now_ns: int) -> coordinator_pb2.Silence:
    return coordinator_pb2.Silence(
        id=silence.id,
        matcher=coordinator_pb2.SilenceMatcher(
            condition=silence.condition,
            target_service=silence.target_service,
            policy_id=silence.policy_id,
        ),
        starts_at_ns=silence.starts_at_ns,
        ends_at_ns=silence.ends_at_ns,
        comment=silence.comment,
        created_by=silence.created_by,
        created_at_ns=silence.created_at_ns,
        state=SILENCE_STATE_TO_PROTO[silence.state(now_ns)],
        expired_by=silence.expired_by,
        expired_at_ns=silence.expired_at_ns,
    )
