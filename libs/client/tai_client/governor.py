"""Typed client of the Governor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
from tai.v1 import common_pb2, governor_pb2, governor_pb2_grpc
from tai_rpc.channel import ChannelOptions


class GovernorClient:
    """Calls the Governor over `channel`; each unary call gets the default deadline unless
    `timeout` is given."""

    def __init__(self, channel: grpc.aio.Channel, options: ChannelOptions | None = None) -> None:
        self._stub = governor_pb2_grpc.GovernorStub(channel)
        self._timeout = (options or ChannelOptions()).default_timeout_seconds

    async def propose(
        self,
        *,
        policy_type: str = "",
        name: str = "",
        condition: str = "",
        action: governor_pb2.ActionTemplate | None = None,
        rules: Mapping[str, str] | None = None,
        description: str = "",
        enabled: bool | None = None,
        policy_id: str = "",
        expected_version: int = 0,
        rollback_to_version: int = 0,
        effective_time_ns: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        request = governor_pb2.ProposePolicyRequest(
            id=policy_id,
            policy_type=policy_type,
            policy_name=name,
            version=expected_version,
            rules=dict(rules or {}),
            condition=condition,
            action=action,
            description=description,
            request_id=request_id,
            rollback_to_version=rollback_to_version,
            effective_time_ns=effective_time_ns,
        )
        if enabled is not None:
            request.enabled = enabled
        return await self._stub.ProposePolicy(request, timeout=timeout or self._timeout)

    async def enforce(
        self,
        policy_id: str,
        *,
        expected_version: int = 0,
        dry_run: bool = False,
        reason: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        return await self._stub.EnforcePolicy(
            governor_pb2.EnforcePolicyRequest(
                id=policy_id,
                version=expected_version,
                dry_run=dry_run,
                reason=reason,
                request_id=request_id,
            ),
            timeout=timeout or self._timeout,
        )

    async def revoke(
        self,
        policy_id: str,
        *,
        expected_version: int = 0,
        reason: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        return await self._stub.RevokePolicy(
            governor_pb2.RevokePolicyRequest(
                id=policy_id, version=expected_version, reason=reason, request_id=request_id
            ),
            timeout=timeout or self._timeout,
        )

    async def get(
        self, policy_id: str, *, version: int = 0, timeout: float | None = None
    ) -> governor_pb2.Policy:
        return await self._stub.GetPolicy(
            governor_pb2.GetPolicyRequest(id=policy_id, version=version),
            timeout=timeout or self._timeout,
        )

    async def list_page(
        self,
        *,
        policy_type: str = "",
        enabled_only: bool = False,
        states: Sequence[governor_pb2.PolicyState.ValueType] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> governor_pb2.GetPoliciesResponse:
        return await self._stub.GetPolicies(
            governor_pb2.GetPoliciesRequest(
                policy_type=policy_type,
                enabled_only=enabled_only,
                states=list(states),
                page_size=page_size,
                page_token=page_token,
            ),
            timeout=timeout or self._timeout,
        )

    async def list_all(
        self,
        *,
        policy_type: str = "",
        enabled_only: bool = False,
        states: Sequence[governor_pb2.PolicyState.ValueType] = (),
    ) -> AsyncIterator[governor_pb2.Policy]:
        """Every matching policy, page after page."""
        token = ""
        while True:
            page = await self.list_page(
                policy_type=policy_type, enabled_only=enabled_only, states=states, page_token=token
            )
            for policy in page.policies:
                yield policy
            token = page.next_page_token
            if not token:
                return

    async def versions(
        self, policy_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> governor_pb2.ListPolicyVersionsResponse:
        return await self._stub.ListPolicyVersions(
            governor_pb2.ListPolicyVersionsRequest(
                id=policy_id, page_size=page_size, page_token=page_token
            ),
            timeout=self._timeout,
        )

    def watch(
        self, *, policy_type: str = "", from_revision: int = 0
    ) -> grpc.aio.UnaryStreamCall[governor_pb2.StreamPoliciesRequest, governor_pb2.Policy]:
        """The StreamPolicies call (iterate it; `cancel()` it to stop). No deadline."""
        return self._stub.StreamPolicies(
            governor_pb2.StreamPoliciesRequest(policy_type=policy_type, from_revision=from_revision)
        )

    async def health(self) -> common_pb2.HealthStatus:
        return await self._stub.HealthCheck(
            common_pb2.HealthCheckRequest(service_name="governor"), timeout=self._timeout
        )
