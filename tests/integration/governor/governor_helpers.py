"""What the Governor tests share: state shorthands, a valid proposal, and error checks."""

from __future__ import annotations

from typing import Any

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
