"""The Governor's gRPC API: translates requests to the domain and results to protobuf, and
nothing else. Errors are raised as tai_common.core.errors and mapped to statuses by the
interceptor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tai.v1 import common_pb2, governor_pb2, governor_pb2_grpc
from tai_common.auth import current_principal
from tai_common.core import InvalidArgument, decode_page_token, encode_page_token, page_size
from tai_common.grpc import principal_of, receipt
from tai_common.messaging import AuditLog, request_fingerprint
from tai_common.runtime import ServiceRuntime

from tai_governor.convert import (
    STATE_FROM_PROTO,
    PolicyMessages,
    content_from_request,
)
from tai_governor.namespaces import NamespaceAdmin, namespace_message, quotas_from
from tai_governor.service import Change, Outcome, PolicyService

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = governor_pb2.DESCRIPTOR.services_by_name["Governor"].full_name


def _receipt(outcome: Outcome, request_id: str, started: float) -> common_pb2.Receipt:
    policy = outcome.policy
    return receipt(
        outcome.receipt_id,
        request_id=request_id,
        started=started,
        timestamp_ns=outcome.timestamp_ns,
        result_data={
            "policy_id": policy.id,
            "version": str(policy.version),
            "state": policy.state.value,
            "revision": str(policy.revision),
        },
        resource_id=policy.id,
        resource_version=policy.version,
        replayed=outcome.replayed,
    )


class GovernorServicer(governor_pb2_grpc.GovernorServicer):
    def __init__(
        self,
        service: PolicyService,
        runtime: ServiceRuntime,
        audit_log: AuditLog,
        namespaces: NamespaceAdmin,
    ) -> None:
        self._service = service
        self._namespaces = namespaces
        self._runtime = runtime
        self._audit_log = audit_log
        self._messages = PolicyMessages()

    async def ProposePolicy(
        self, request: governor_pb2.ProposePolicyRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.propose(
            _change(request, context),
            policy_id=request.id,
            expected_version=request.version,
            content=None if request.rollback_to_version else content_from_request(request),
            rollback_to_version=request.rollback_to_version,
        )
        return _receipt(outcome, request.request_id, started)

    async def EnforcePolicy(
        self, request: governor_pb2.EnforcePolicyRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.enforce(
            _change(request, context),
            policy_id=request.id,
            expected_version=request.version,
            dry_run=request.dry_run,
            reason=request.reason,
        )
        return _receipt(outcome, request.request_id, started)

    async def RevokePolicy(
        self, request: governor_pb2.RevokePolicyRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        outcome = await self._service.revoke(
            _change(request, context),
            policy_id=request.id,
            expected_version=request.version,
            reason=request.reason,
        )
        return _receipt(outcome, request.request_id, started)

    async def GetPolicies(
        self, request: governor_pb2.GetPoliciesRequest, context: Context
    ) -> governor_pb2.GetPoliciesResponse:
        states = []
        for index, state in enumerate(request.states):
            if state not in STATE_FROM_PROTO:
                raise InvalidArgument(f"states[{index}]", f"unknown policy state {state}")
            states.append(STATE_FROM_PROTO[state])
        # Read first: the page reflects at least every change up to it.
        revision = await self._service.revision()
        policies, token = await self._service.list_policies(
            policy_type=request.policy_type,
            enabled_only=request.enabled_only,
            states=states,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return governor_pb2.GetPoliciesResponse(
            policies=[self._messages.shared(p) for p in policies],
            next_page_token=token,
            revision=revision,
        )

    async def GetPolicy(
        self, request: governor_pb2.GetPolicyRequest, context: Context
    ) -> governor_pb2.Policy:
        return self._messages.copy(await self._service.get(request.id, request.version))

    async def ListPolicyVersions(
        self, request: governor_pb2.ListPolicyVersionsRequest, context: Context
    ) -> governor_pb2.ListPolicyVersionsResponse:
        versions, token = await self._service.list_versions(
            request.id, requested_page_size=request.page_size, page_token=request.page_token
        )
        return governor_pb2.ListPolicyVersionsResponse(
            versions=[self._messages.shared(p) for p in versions], next_page_token=token
        )

    async def StreamPolicies(
        self, request: governor_pb2.StreamPoliciesRequest, context: Context
    ) -> AsyncIterator[governor_pb2.Policy]:
        async for policy in self._service.stream(
            policy_type=request.policy_type, from_revision=request.from_revision
        ):
            yield self._messages.copy(policy)

    async def ListAuditRecords(
        self, request: governor_pb2.ListAuditRecordsRequest, context: Context
    ) -> governor_pb2.ListAuditRecordsResponse:
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must not be negative")
        scope = f"audit|{request.principal}"
        cursor = decode_page_token(request.page_token, scope)
        after = int(cursor[0]) if cursor else request.after_seq
        limit = page_size(request.page_size)
        records = await self._audit_log.records(after, limit, request.principal)
        token = encode_page_token((records[-1].seq,), scope) if len(records) == limit else ""
        return governor_pb2.ListAuditRecordsResponse(records=records, next_page_token=token)

    async def VerifyAuditLog(
        self, request: governor_pb2.VerifyAuditLogRequest, context: Context
    ) -> governor_pb2.VerifyAuditLogResponse:
        result = await self._audit_log.verify()
        return governor_pb2.VerifyAuditLogResponse(
            intact=result.intact,
            checked=result.checked,
            first_broken_seq=result.first_broken_seq,
            reason=result.reason,
        )

    # --- namespaces ---

    async def CreateNamespace(
        self, request: governor_pb2.CreateNamespaceRequest, context: Context
    ) -> governor_pb2.Namespace:
        record = await self._namespaces.create(
            current_principal(),
            request.name,
            request.description,
            quotas_from(request.quotas, "quotas"),
        )
        return namespace_message(record)

    async def ListNamespaces(
        self, request: governor_pb2.ListNamespacesRequest, context: Context
    ) -> governor_pb2.ListNamespacesResponse:
        records = await self._namespaces.list(current_principal())
        return governor_pb2.ListNamespacesResponse(
            namespaces=[namespace_message(r) for r in records]
        )

    async def GetNamespace(
        self, request: governor_pb2.GetNamespaceRequest, context: Context
    ) -> governor_pb2.Namespace:
        return namespace_message(await self._namespaces.get(current_principal(), request.name))

    async def SetNamespaceQuotas(
        self, request: governor_pb2.SetNamespaceQuotasRequest, context: Context
    ) -> governor_pb2.Namespace:
        record = await self._namespaces.set_quotas(
            request.name, quotas_from(request.quotas, "quotas")
        )
        return namespace_message(record)

    async def DeleteNamespace(
        self, request: governor_pb2.DeleteNamespaceRequest, context: Context
    ) -> governor_pb2.Namespace:
        return namespace_message(await self._namespaces.delete(request.name, force=request.force))

    async def HealthCheck(
        self, request: common_pb2.HealthCheckRequest, context: Context
    ) -> common_pb2.HealthStatus:
        return self._runtime.health_status(SERVICE_NAME)


def _change(
    request: governor_pb2.ProposePolicyRequest
    | governor_pb2.EnforcePolicyRequest
    | governor_pb2.RevokePolicyRequest,
    context: Context,
) -> Change:
    return Change(
        principal=principal_of(context),
        request_id=request.request_id,
        fingerprint=request_fingerprint(request) if request.request_id else "",
    )
