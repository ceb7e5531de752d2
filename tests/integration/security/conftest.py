"""The three services in-process with authentication on (JWT, keys from a JWKS file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import inprocess
from support.secured import SecuredSuite, auth_settings
from support.tokens import TokenIssuer


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
async def secured(
    sqlite_url: str, tmp_path: Path, issuer: TokenIssuer
) -> AsyncIterator[SecuredSuite]:
    jwks_file = issuer.write_jwks(tmp_path / "jwks.json")
    settings = auth_settings(jwks_file)
    # The services' own calls to each other carry an admin service token here (no mTLS).
    service_token = issuer.token("svc-internal", ["admin"], expires_in=3600)
    async with (
        inprocess.governor(sqlite_url, **settings) as governor,
        inprocess.coordinator(
            sqlite_url, governor.target, service_token=service_token, **settings
        ) as coordinator,
        inprocess.scheduler(
            sqlite_url,
            governor.target,
            coordinator.target,
            service_token=service_token,
            **settings,
        ) as scheduler,
    ):
        yield SecuredSuite(governor, coordinator, scheduler, issuer, jwks_file)
