"""Translation between the Coordinator's protobuf messages and its domain types."""

from __future__ import annotations

from tai.v1 import coordinator_pb2

from tai_coordinator.model import Action, ActionRequest, ActionStatus, SignalInput, StoredSignal

STATUS_TO_PROTO = {
    ActionStatus.PENDING: coordinator_pb2.ACTION_STATUS_PENDING,
    ActionStatus.DELIVERED: coordinator_pb2.ACTION_STATUS_DELIVERED,
    ActionStatus.ACCEPTED: coordinator_pb2.ACTION_STATUS_ACCEPTED,
    ActionStatus.COMPLETED: coordinator_pb2.ACTION_STATUS_COMPLETED,
    ActionStatus.REJECTED: coordinator_pb2.ACTION_STATUS_REJECTED,
    ActionStatus.FAILED: coordinator_pb2.ACTION_STATUS_FAILED,
    ActionStatus.EXPIRED: coordinator_pb2.ACTION_STATUS_EXPIRED,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}


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
    )
