"""Typed client of the Coordinator.

The methods return the API's own protobuf messages (`tai.v1.coordinator_pb2`, `common_pb2`); a
failed call raises a `tai_client.errors.TaiError` subclass.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from tai.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tai_rpc.channel import ChannelOptions

from tai_client.errors import maps_errors
from tai_client.stream import Stream

# The server's default SimulatePolicy budget (seconds), when the caller gives none.
SIMULATION_DEFAULT_SECONDS = 30


class CoordinatorClient:
    """Calls the Coordinator over `channel`; each unary call gets the default deadline unless
    `timeout` is given."""

    def __init__(self, channel: grpc.aio.Channel, options: ChannelOptions | None = None) -> None:
        self._stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        self._timeout = (options or ChannelOptions()).default_timeout_seconds

    @maps_errors
    async def submit_signal(
        self,
        *,
        signal_type: str,
        priority: int,
        metadata: Mapping[str, str] | None = None,
        payload: bytes = b"",
        source: str = "",
        signal_id: str = "",
        timestamp_ns: int = 0,
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        """Submits a signal; the receipt's `matched_policy_ids` and `action_ids` say which
        policies matched and which actions were created."""
        return await self._stub.SubmitSignal(
            coordinator_pb2.SubmitSignalRequest(
                id=signal_id,
                signal_type=signal_type,
                timestamp_ns=timestamp_ns,
                metadata=dict(metadata or {}),
                payload=payload,
                priority=priority,
                source=source,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def request_action(
        self,
        *,
        action_type: str,
        target_service: str,
        parameters: Mapping[str, str] | None = None,
        payload: bytes = b"",
        source_service: str = "",
        action_id: str = "",
        not_before_ns: int = 0,
        ack_deadline_seconds: int = 0,
        max_deliveries: int = 0,
        priority: int = 0,
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        """Requests an action directly, without a policy. Raises `AlreadyExists` when
        `action_id` is taken."""
        return await self._stub.RequestAction(
            coordinator_pb2.RequestActionRequest(
                id=action_id,
                action_type=action_type,
                parameters=dict(parameters or {}),
                payload=payload,
                source_service=source_service,
                target_service=target_service,
                not_before_ns=not_before_ns,
                ack_deadline_seconds=ack_deadline_seconds,
                max_deliveries=max_deliveries,
                priority=priority,
            ),
            timeout=timeout or self._timeout,
        )

    def stream_actions(
        self, service_name: str, *, include_history: bool = False
    ) -> Stream[coordinator_pb2.Action]:
        """The StreamActions call: the actions addressed to `service_name` as they are due
        (with `include_history`, also those accepted in the last hour)."""
        return Stream(
            self._stub.StreamActions(
                coordinator_pb2.StreamActionsRequest(
                    service_name=service_name, include_history=include_history
                )
            )
        )

    def watch_actions(
        self, target_service: str = "", *, after_ns: int = 0
    ) -> Stream[coordinator_pb2.Action]:
        """The WatchActions call: each change of the actions (of `target_service`, or all)
        after `after_ns` (0: from now on), without taking delivery."""
        return Stream(
            self._stub.WatchActions(
                coordinator_pb2.WatchActionsRequest(
                    target_service=target_service, after_ns=after_ns
                )
            )
        )

    @maps_errors
    async def acknowledge(
        self, action_id: str, status: str, message: str = "", *, timeout: float | None = None
    ) -> common_pb2.Receipt:
        """Acknowledges an action; `status`: "accepted", "completed", "rejected" or "failed".

        Raises:
            NotFound: no such action.
            FailedPrecondition: the action's status does not allow this acknowledgement.
        """
        return await self._stub.AcknowledgeAction(
            coordinator_pb2.AcknowledgeActionRequest(
                action_id=action_id, status=status, message=message
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def status(
        self, service_name: str = "", *, timeout: float | None = None
    ) -> coordinator_pb2.CoordinationStatus:
        """Coordination counts for `service_name` (or every service)."""
        return await self._stub.GetStatus(
            coordinator_pb2.GetStatusRequest(service_name=service_name),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def get_action(
        self, action_id: str, *, timeout: float | None = None
    ) -> coordinator_pb2.Action:
        """One action. Raises `NotFound`."""
        return await self._stub.GetAction(
            coordinator_pb2.GetActionRequest(action_id=action_id),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def get_signal(
        self, signal_id: str, *, timeout: float | None = None
    ) -> coordinator_pb2.Signal:
        """One signal. Raises `NotFound`."""
        return await self._stub.GetSignal(
            coordinator_pb2.GetSignalRequest(id=signal_id), timeout=timeout or self._timeout
        )

    @maps_errors
    async def list_signals(
        self,
        *,
        signal_type: str = "",
        source: str = "",
        min_priority: int = 0,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> coordinator_pb2.ListSignalsResponse:
        """One page of stored signals, newest first, matching every filter given."""
        return await self._stub.ListSignals(
            coordinator_pb2.ListSignalsRequest(
                signal_type=signal_type,
                source=source,
                min_priority=min_priority,
                metadata=[f"{k}={v}" for k, v in (metadata or {}).items()],
                page_size=page_size,
                page_token=page_token,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def summarize_decisions(
        self,
        policy_id: str,
        *,
        since_ns: int = 0,
        until_ns: int = 0,
        max_seconds: int = 0,
        timeout: float | None = None,
    ) -> coordinator_pb2.DecisionSummary:
        """What a policy's decisions came to over the stored signals of [since_ns, until_ns)
        (the last hour by default), by outcome, hold reason and version."""
        return await self._stub.SummarizeDecisions(
            coordinator_pb2.SummarizeDecisionsRequest(
                policy_id=policy_id, since_ns=since_ns, until_ns=until_ns, max_seconds=max_seconds
            ),
            timeout=timeout or (max_seconds or SIMULATION_DEFAULT_SECONDS) + 10.0,
        )

    @maps_errors
    async def explain_signal(
        self, signal_id: str, *, timeout: float | None = None
    ) -> coordinator_pb2.SignalDecision:
        """A signal's decision record: every policy evaluated against it and what each came to.
        Raises `NotFound` (also once retention removed the signal)."""
        return await self._stub.ExplainSignal(
            coordinator_pb2.ExplainSignalRequest(signal_id=signal_id),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def simulate_policy(
        self,
        *,
        draft: coordinator_pb2.PolicyDraft | None = None,
        policy_id: str = "",
        version: int = 0,
        since_ns: int = 0,
        until_ns: int = 0,
        last: int = 0,
        sample_size: int = 0,
        max_seconds: int = 0,
        timeout: float | None = None,
    ) -> coordinator_pb2.SimulatePolicyResponse:
        """Rehearses `draft`, or the stored policy `policy_id` (`version` 0: its latest), over
        the stored signals received in [since_ns, until_ns), or the `last` N (neither: the last
        hour). Writes nothing. The call's deadline is `max_seconds` (default 30) plus a margin,
        unless `timeout` says otherwise."""
        request = coordinator_pb2.SimulatePolicyRequest(
            since_ns=since_ns,
            until_ns=until_ns,
            last=last,
            sample_size=sample_size,
            max_seconds=max_seconds,
        )
        if draft is not None:
            request.draft.CopyFrom(draft)
        else:
            request.stored.id = policy_id
            request.stored.version = version
        return await self._stub.SimulatePolicy(
            request, timeout=timeout or (max_seconds or SIMULATION_DEFAULT_SECONDS) + 10.0
        )

    @maps_errors
    async def create_silence(
        self,
        *,
        comment: str,
        ends_at_ns: int,
        condition: str = "",
        target_service: str = "",
        policy_id: str = "",
        starts_at_ns: int = 0,
        silence_id: str = "",
        timeout: float | None = None,
    ) -> coordinator_pb2.Silence:
        """Holds back the actions of the signals and policies matching every matcher field
        given, from `starts_at_ns` (0: now) to `ends_at_ns`; `comment` says why."""
        return await self._stub.CreateSilence(
            coordinator_pb2.CreateSilenceRequest(
                id=silence_id,
                matcher=coordinator_pb2.SilenceMatcher(
                    condition=condition, target_service=target_service, policy_id=policy_id
                ),
                starts_at_ns=starts_at_ns,
                ends_at_ns=ends_at_ns,
                comment=comment,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def list_silences(
        self,
        *,
        include_expired: bool = False,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> coordinator_pb2.ListSilencesResponse:
        """One page of silences, newest first: those not ended, or all with
        `include_expired`."""
        return await self._stub.ListSilences(
            coordinator_pb2.ListSilencesRequest(
                include_expired=include_expired, page_size=page_size, page_token=page_token
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def get_silence(
        self, silence_id: str, *, timeout: float | None = None
    ) -> coordinator_pb2.Silence:
        """One silence. Raises `NotFound`."""
        return await self._stub.GetSilence(
            coordinator_pb2.GetSilenceRequest(silence_id=silence_id),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def expire_silence(
        self, silence_id: str, *, comment: str = "", timeout: float | None = None
    ) -> coordinator_pb2.Silence:
        """Ends a silence now (a no-op on one already ended)."""
        return await self._stub.ExpireSilence(
            coordinator_pb2.ExpireSilenceRequest(silence_id=silence_id, comment=comment),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def approve_action(
        self, action_id: str, comment: str, *, timeout: float | None = None
    ) -> coordinator_pb2.Action:
        """Approves an action AWAITING_APPROVAL: it becomes PENDING and is delivered."""
        return await self._stub.ApproveAction(
            coordinator_pb2.ApproveActionRequest(action_id=action_id, comment=comment),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def reject_action(
        self, action_id: str, comment: str, *, timeout: float | None = None
    ) -> coordinator_pb2.Action:
        """Rejects an action AWAITING_APPROVAL: it ends REJECTED, never delivered."""
        return await self._stub.RejectAction(
            coordinator_pb2.RejectActionRequest(action_id=action_id, comment=comment),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def list_actions(
        self,
        *,
        target_service: str = "",
        status: coordinator_pb2.ActionStatus.ValueType = coordinator_pb2.ACTION_STATUS_UNSPECIFIED,
        policy_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> coordinator_pb2.ListActionsResponse:
        """One page of the matching actions, newest first; `next_page_token` is empty on the
        last page."""
        return await self._stub.ListActions(
            coordinator_pb2.ListActionsRequest(
                target_service=target_service,
                status=status,
                policy_id=policy_id,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def health(self) -> common_pb2.HealthStatus:
        """The Coordinator's health; `details` holds `policy_revision=…`."""
        return await self._stub.HealthCheck(
            common_pb2.HealthCheckRequest(service_name="coordinator"), timeout=self._timeout
        )
