"""The Coordinator's gRPC API: translates requests to the domain and results to protobuf, and
nothing else. Errors are raised as tai_common.core.errors and mapped to statuses by the
interceptor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tai.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tai_common.core import Clock, InvalidArgument
from tai_common.core.validation import check_service_name
from tai_common.grpc import principal_of, receipt
from tai_common.messaging import request_fingerprint
from tai_common.runtime import ServiceRuntime

from tai_coordinator.convert import (
    STATUS_FROM_PROTO,
    action_request_from_proto,
    action_to_proto,
    decision_summary_to_proto,
    decision_to_proto,
    signal_from_request,
    signal_to_proto,
    silence_request_from_proto,
    silence_to_proto,
    simulation_report_to_proto,
    simulation_request_from_proto,
    summary_request_from_proto,
)
from tai_coordinator.dispatcher import ActionDispatcher
from tai_coordinator.service import CoordinatorService
from tai_coordinator.silences import SilenceService
from tai_coordinator.simulation import PolicySimulator

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        service: CoordinatorService,
        simulator: PolicySimulator,
        silences: SilenceService,
        dispatcher: ActionDispatcher,
        runtime: ServiceRuntime,
        clock: Clock,
    ) -> None:
        self._service = service
        self._simulator = simulator
        self._silences = silences
        self._clock = clock
        self._dispatcher = dispatcher
        self._runtime = runtime

    async def SubmitSignal(
        self, request: coordinator_pb2.SubmitSignalRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.submit_signal(
            signal_from_request(request), principal_of(context)
        )
        signal = outcome.signal
        return receipt(
            f"rcpt-{signal.id}",
            request_id=signal.id,
            started=started,
            timestamp_ns=signal.received_at_ns,
            result_data={
                "signal_id": signal.id,
                "matched": str(len(signal.matched_policy_ids)),
                "actions": str(len(signal.action_ids)),
                "dry_run_policy_ids": ",".join(signal.dry_run_policy_ids),
                "suppressed_policy_ids": ",".join(signal.suppressed_policy_ids),
            },
            resource_id=signal.id,
            resource_version=1,
            replayed=outcome.replayed,
            matched_policy_ids=signal.matched_policy_ids,
            action_ids=signal.action_ids,
        )

    async def GetSignal(
        self, request: coordinator_pb2.GetSignalRequest, context: Context
    ) -> coordinator_pb2.Signal:
        return signal_to_proto(await self._service.get_signal(request.id))

    async def ListSignals(
        self, request: coordinator_pb2.ListSignalsRequest, context: Context
    ) -> coordinator_pb2.ListSignalsResponse:
        signals, token = await self._service.list_signals(
            signal_type=request.signal_type,
            source=request.source,
            min_priority=request.min_priority,
            metadata=list(request.metadata),
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return coordinator_pb2.ListSignalsResponse(
            signals=[signal_to_proto(s) for s in signals], next_page_token=token
        )

    async def ExplainSignal(
        self, request: coordinator_pb2.ExplainSignalRequest, context: Context
    ) -> coordinator_pb2.SignalDecision:
        return decision_to_proto(await self._service.explain_signal(request.signal_id))

    async def SummarizeDecisions(
        self, request: coordinator_pb2.SummarizeDecisionsRequest, context: Context
    ) -> coordinator_pb2.DecisionSummary:
        summary = await self._simulator.summarize(
            summary_request_from_proto(request), context.time_remaining()
        )
        return decision_summary_to_proto(summary)

    async def SimulatePolicy(
        self, request: coordinator_pb2.SimulatePolicyRequest, context: Context
    ) -> coordinator_pb2.SimulatePolicyResponse:
        report = await self._simulator.simulate(
            simulation_request_from_proto(request), context.time_remaining()
        )
        return simulation_report_to_proto(report)

    async def CreateSilence(
        self, request: coordinator_pb2.CreateSilenceRequest, context: Context
    ) -> coordinator_pb2.Silence:
        silence = await self._silences.create(
            silence_request_from_proto(request), principal_of(context)
        )
        return silence_to_proto(silence, self._clock.now_ns())

    async def ListSilences(
        self, request: coordinator_pb2.ListSilencesRequest, context: Context
    ) -> coordinator_pb2.ListSilencesResponse:
        silences, token = await self._silences.list(
            include_expired=request.include_expired,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        now = self._clock.now_ns()
        return coordinator_pb2.ListSilencesResponse(
            silences=[silence_to_proto(s, now) for s in silences], next_page_token=token
        )

    async def GetSilence(
        self, request: coordinator_pb2.GetSilenceRequest, context: Context
    ) -> coordinator_pb2.Silence:
        silence = await self._silences.get(request.silence_id)
        return silence_to_proto(silence, self._clock.now_ns())

    async def ExpireSilence(
        self, request: coordinator_pb2.ExpireSilenceRequest, context: Context
    ) -> coordinator_pb2.Silence:
        silence = await self._silences.expire(
            request.silence_id, request.comment, principal_of(context)
        )
        return silence_to_proto(silence, self._clock.now_ns())

    async def ApproveAction(
        self, request: coordinator_pb2.ApproveActionRequest, context: Context
    ) -> coordinator_pb2.Action:
        action = await self._service.review(
            request.action_id, True, request.comment, principal_of(context)
        )
        return action_to_proto(action)

    async def RejectAction(
        self, request: coordinator_pb2.RejectActionRequest, context: Context
    ) -> coordinator_pb2.Action:
        action = await self._service.review(
            request.action_id, False, request.comment, principal_of(context)
        )
        return action_to_proto(action)

    async def RequestAction(
        self, request: coordinator_pb2.RequestActionRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.request_action(
            action_request_from_proto(request),
            principal_of(context),
            request_fingerprint(request, "id"),
        )
        result = {"action_id": outcome.action_id}
        if outcome.status is not None:
            result["status"] = outcome.status.value
        if outcome.deferred_until_ns:
            result["deferred_until_ns"] = str(outcome.deferred_until_ns)
        return receipt(
            f"rcpt-{outcome.action_id}",
            request_id=request.id,
            started=started,
            timestamp_ns=outcome.timestamp_ns,
            result_data=result,
            resource_id=outcome.action_id,
            resource_version=outcome.version,
            replayed=outcome.replayed,
            action_ids=[outcome.action_id],
        )

    async def StreamActions(
        self, request: coordinator_pb2.StreamActionsRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.Action]:
        check_service_name(request.service_name, "service_name")
        with self._dispatcher.connect(request.service_name) as sink:
            if request.include_history:
                for action in await self._service.history(request.service_name):
                    yield action_to_proto(action)
            while True:
                action = await self._runtime.server.until_stopping(sink.queue.get())
                yield action_to_proto(action)

    async def WatchActions(
        self, request: coordinator_pb2.WatchActionsRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.Action]:
        async def pause(seconds: float) -> None:
            await self._runtime.server.until_stopping(asyncio.sleep(seconds))

        async for action in self._service.watch_actions(
            request.target_service, request.after_ns, pause
        ):
            yield action_to_proto(action)

    async def AcknowledgeAction(
        self, request: coordinator_pb2.AcknowledgeActionRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.acknowledge(
            request.action_id, request.status, request.message, principal_of(context)
        )
        return receipt(
            f"rcpt-{outcome.action_id}-v{outcome.version}",
            started=started,
            timestamp_ns=outcome.timestamp_ns,
            result_data={
                "action_id": outcome.action_id,
                "status": outcome.status.value if outcome.status else "",
            },
            resource_id=outcome.action_id,
            resource_version=outcome.version,
            replayed=outcome.replayed,
        )

    async def GetStatus(
        self, request: coordinator_pb2.GetStatusRequest, context: Context
    ) -> coordinator_pb2.CoordinationStatus:
        status = await self._service.status(request.service_name)
        return coordinator_pb2.CoordinationStatus(
            service_name=status.service_name,
            timestamp_ns=status.timestamp_ns,
            pending_signals=status.pending_signals,
            pending_actions=status.pending_actions,
            last_signal_ns=status.last_signal_ns,
            delivered_actions=status.delivered_actions,
            accepted_actions=status.accepted_actions,
            awaiting_approval_actions=status.awaiting_approval_actions,
            signals_last_minute=status.signals_last_minute,
        )

    async def GetAction(
        self, request: coordinator_pb2.GetActionRequest, context: Context
    ) -> coordinator_pb2.Action:
        return action_to_proto(await self._service.get_action(request.action_id))

    async def ListActions(
        self, request: coordinator_pb2.ListActionsRequest, context: Context
    ) -> coordinator_pb2.ListActionsResponse:
        status = None
        if request.status:
            if request.status not in STATUS_FROM_PROTO:
                raise InvalidArgument("status", f"unknown action status {request.status}")
            status = STATUS_FROM_PROTO[request.status]
        actions, token = await self._service.list_actions(
            target_service=request.target_service,
            status=status,
            policy_id=request.policy_id,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return coordinator_pb2.ListActionsResponse(
            actions=[action_to_proto(a) for a in actions], next_page_token=token
        )

    async def HealthCheck(
        self, request: common_pb2.HealthCheckRequest, context: Context
    ) -> common_pb2.HealthStatus:
        return self._runtime.health_status(SERVICE_NAME)
