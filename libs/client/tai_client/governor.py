"""Typed client of the Governor.

The methods return the API's own protobuf messages (`tai.v1.governor_pb2`, `common_pb2`); a
failed call raises a `tai_client.errors.TaiError` subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
from tai.v1 import common_pb2, governor_pb2, governor_pb2_grpc
from tai_rpc.channel import ChannelOptions

from tai_client.errors import maps_errors
from tai_client.stream import Stream


class GovernorClient:
    """Calls the Governor over `channel`; each unary call gets the default deadline unless
    `timeout` is given."""

    def __init__(self, channel: grpc.aio.Channel, options: ChannelOptions | None = None) -> None:
        self._stub = governor_pb2_grpc.GovernorStub(channel)
        self._timeout = (options or ChannelOptions()).default_timeout_seconds

    @maps_errors
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
        """Proposes a policy, a new version of `policy_id`, or a rollback to
        `rollback_to_version`.

        Returns:
            The receipt: `resource_id` and `resource_version` name the version proposed,
            `result_data["state"]` and `result_data["revision"]` its state and revision.

        Raises:
            InvalidRequest: a field is invalid (`field_violations` names it).
            Aborted: the policy is not at `expected_version`.
        """
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

    @maps_errors
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
        """Enforces a policy (or, with `dry_run`, evaluates it without emitting actions).

        Raises:
            NotFound: no such policy.
            FailedPrecondition: the policy's state does not allow it (e.g. it was revoked).
            Aborted: the policy is not at `expected_version`.
        """
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

    @maps_errors
    async def revoke(
        self,
        policy_id: str,
        *,
        expected_version: int = 0,
        reason: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        """Revokes a policy.

        Raises:
            NotFound: no such policy.
            Aborted: the policy is not at `expected_version`.
        """
        return await self._stub.RevokePolicy(
            governor_pb2.RevokePolicyRequest(
                id=policy_id, version=expected_version, reason=reason, request_id=request_id
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def get(
        self, policy_id: str, *, version: int = 0, timeout: float | None = None
    ) -> governor_pb2.Policy:
        """One policy: its current version, or `version`. Raises `NotFound`."""
        return await self._stub.GetPolicy(
            governor_pb2.GetPolicyRequest(id=policy_id, version=version),
            timeout=timeout or self._timeout,
        )

    @maps_errors
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
        """One page of the current version of the matching policies; `next_page_token` is
        empty on the last page."""
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
        """Every matching policy, page after page (a failed page raises its `TaiError`)."""
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

    @maps_errors
    async def versions(
        self, policy_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> governor_pb2.ListPolicyVersionsResponse:
        """One page of a policy's versions, newest first. Raises `NotFound`."""
        return await self._stub.ListPolicyVersions(
            governor_pb2.ListPolicyVersionsRequest(
                id=policy_id, page_size=page_size, page_token=page_token
            ),
            timeout=self._timeout,
        )

    def watch(
        self, *, policy_type: str = "", from_revision: int = 0
    ) -> Stream[governor_pb2.Policy]:
        """The StreamPolicies call: the current policies (or the changes after
        `from_revision`), then every change as it happens."""
        return Stream(
            self._stub.StreamPolicies(
                governor_pb2.StreamPoliciesRequest(
                    policy_type=policy_type, from_revision=from_revision
                )
            )
        )

    @maps_errors
    async def audit_page(
        self,
        *,
        after_seq: int = 0,
        principal: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> governor_pb2.ListAuditRecordsResponse:
        """One page of the audit trail in chain order (admins only: else `PermissionDenied`)."""
        return await self._stub.ListAuditRecords(
            governor_pb2.ListAuditRecordsRequest(
                after_seq=after_seq,
                principal=principal,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def verify_audit(
        self, *, timeout: float | None = None
    ) -> governor_pb2.VerifyAuditLogResponse:
        """Recomputes the audit trail's hash chain; `intact` is False at the first broken
        link."""
        return await self._stub.VerifyAuditLog(
            governor_pb2.VerifyAuditLogRequest(), timeout=timeout or self._timeout
        )

    # --- namespaces ---

    @maps_errors
    async def create_namespace(
        self,
        name: str,
        *,
        description: str = "",
        quotas: governor_pb2.NamespaceQuotas | None = None,
        timeout: float | None = None,
    ) -> governor_pb2.Namespace:
        """Creates a namespace (platform admins only: the admin role in every namespace).

        Args:
            name: a DNS label (`tai_rpc.namespace_name_problem` says why a name is not one).
            description: what the namespace is for.
            quotas: its limits; a limit left at 0 follows the installation's default.

        Raises:
            InvalidRequest: the name is not a namespace name.
            AlreadyExists: a namespace of that name exists.
            PermissionDenied: the caller is not a platform admin.
        """
        return await self._stub.CreateNamespace(
            governor_pb2.CreateNamespaceRequest(name=name, description=description, quotas=quotas),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def list_namespaces(
        self, *, timeout: float | None = None
    ) -> list[governor_pb2.Namespace]:
        """The namespaces the caller holds a role in (every one with authentication off)."""
        response = await self._stub.ListNamespaces(
            governor_pb2.ListNamespacesRequest(), timeout=timeout or self._timeout
        )
        return list(response.namespaces)

    @maps_errors
    async def get_namespace(
        self, name: str, *, timeout: float | None = None
    ) -> governor_pb2.Namespace:
        """One namespace. Raises `NotFound`, or `PermissionDenied` when the caller holds no
        role in it."""
        return await self._stub.GetNamespace(
            governor_pb2.GetNamespaceRequest(name=name), timeout=timeout or self._timeout
        )

    @maps_errors
    async def set_namespace_quotas(
        self,
        name: str,
        quotas: governor_pb2.NamespaceQuotas,
        *,
        timeout: float | None = None,
    ) -> governor_pb2.Namespace:
        """Replaces all of a namespace's quotas with `quotas` (a limit at 0 follows the
        installation's default again); platform admins only. Raises `NotFound`."""
        return await self._stub.SetNamespaceQuotas(
            governor_pb2.SetNamespaceQuotasRequest(name=name, quotas=quotas),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def delete_namespace(
        self, name: str, *, force: bool = False, timeout: float | None = None
    ) -> governor_pb2.Namespace:
        """Deletes a namespace; platform admins only.

        Without `force`, a namespace that still holds policies, signals, actions, tasks or
        silences is refused (`FailedPrecondition`). With `force`, it is marked DELETING (every
        call in it is refused) and its data deleted in the background.

        Raises:
            NotFound: no such namespace.
            FailedPrecondition: it is not empty and `force` is False.
        """
        return await self._stub.DeleteNamespace(
            governor_pb2.DeleteNamespaceRequest(name=name, force=force),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def health(self) -> common_pb2.HealthStatus:
        """The Governor's health; `details` holds `replica=…` and `policy_revision=…`."""
        return await self._stub.HealthCheck(
            common_pb2.HealthCheckRequest(service_name="governor"), timeout=self._timeout
        )
