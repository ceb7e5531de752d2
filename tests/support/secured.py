"""The suite with authentication on, for the security tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tai_client import ChannelOptions, open_channel

from support.running import RunningCoordinator, RunningGovernor, RunningScheduler
from support.tokens import AUDIENCE, ISSUER, TokenIssuer


@dataclass
class SecuredSuite:
    governor: RunningGovernor
    coordinator: RunningCoordinator
    scheduler: RunningScheduler
    issuer: TokenIssuer
    jwks_file: Path

    def channel(self, target: str, token: str = "") -> grpc.aio.Channel:
        return open_channel(target, ChannelOptions(bearer_token=token, max_attempts=1))


def auth_settings(jwks_file: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "auth": "jwt",
        "jwt_jwks_file": str(jwks_file),
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_min_refresh_seconds": 0.0,
        **overrides,
    }
