"""What the Governor tests share: state shorthands, a valid proposal, and error checks."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.running import RunningGovernor
from tai.v1 import governor_pb2

ENFORCED = governor_pb2.POLICY_STATE_ENFORCED
PROPOSED = governor_pb2.POLICY_STATE_PROPOSED
DRY_RUN = governor_pb2.POLICY_STATE_DRY_RUN
REVOKED = governor_pb2.POLICY_STATE_REVOKED

CONDITION = 'signal.type == "alert" && signal.priority >= 8'


def scale_action(target: str = "api") -> governor_pb2.ActionTemplate:
    return governor_pb2.ActionTemplate(
        action_type="scale", target_service=target, parameters={"replicas": "+2"}
    )


async def propose(g: RunningGovernor, **kwargs: Any) -> Any:
    defaults: dict[str, Any] = {
        "policy_type": "operational",
        "name": "scale-on-alert",
        "condition": CONDITION,
        "action": scale_action(),
    }
    return await g.client.propose(**{**defaults, **kwargs})


async def expect_error(awaitable: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
    return fields
