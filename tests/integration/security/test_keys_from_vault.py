"""The token verification keys live in Vault (a real OpenBao server): rotating them there is
picked up by a running service, without a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import urlparse

import grpc
import pytest
from support import inprocess
from support.tokens import AUDIENCE, ISSUER, TokenIssuer
from support.vault_server import VaultServer, running_vault
from tai_client import ChannelOptions, GovernorClient, TaiError, open_channel


@pytest.fixture(scope="module")
def vault() -> Iterator[VaultServer]:
    with running_vault() as server:
        yield server


def put_jwks(vault: VaultServer, issuer: TokenIssuer) -> None:
    vault.admin().secrets.kv.v2.create_or_update_secret(
        path="tai/jwt", secret={"jwks": json.dumps(issuer.jwks())}, mount_point="secret"
    )


async def lists(target: str, token: str) -> grpc.StatusCode:
    async with open_channel(target, ChannelOptions(bearer_token=token, max_attempts=1)) as channel:
        try:
            await GovernorClient(channel).list_page()
        except TaiError as error:
            return error.code
    return grpc.StatusCode.OK


async def test_rotated_keys_are_picked_up_live(sqlite_url: str, vault: VaultServer) -> None:
    old, new = TokenIssuer(), TokenIssuer(rsa_kid="rsa-2", ec_kid="ec-2")
    put_jwks(vault, old)
    address = urlparse(vault.url).netloc
    settings = {
        "auth": "jwt",
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_jwks_secret": "jwt",
        "jwt_min_refresh_seconds": 0.0,
        "jwt_max_key_age_seconds": 0.5,
        "secrets": f"vault://{address}?tls=0&mount=secret&prefix=tai&auth=token",
        "vault_token": vault.root_token,
    }
    async with inprocess.governor(sqlite_url, **settings) as governor:
        old_token = old.token("alice", ["viewer"])
        new_token = new.token("alice", ["viewer"])
        assert await lists(governor.target, old_token) == grpc.StatusCode.OK
        assert await lists(governor.target, new_token) == grpc.StatusCode.UNAUTHENTICATED

        put_jwks(vault, new)  # the old key is rotated out
        assert await lists(governor.target, new_token) == grpc.StatusCode.OK
        await asyncio.sleep(0.6)  # past the keys' maximum age
        assert await lists(governor.target, old_token) == grpc.StatusCode.UNAUTHENTICATED
