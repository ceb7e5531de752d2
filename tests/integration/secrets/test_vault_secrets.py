"""VaultSecrets against a real OpenBao dev server: KV v2 reads, rotation seen live, token
renewal, AppRole (re-)login, refusals, outages; and no secret in any log record or error."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import hvac  # type: ignore[import-untyped]
import pytest
from pydantic import SecretStr
from support.processes import free_port
from tai_common.caching import WatchedSecret
from tai_common.core import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from tai_common.ports import Secret
from tai_common.vault import AppRoleAuth, TokenAuth, VaultConfig, VaultCredentials, VaultSecrets
from vault_kit import Kit, assert_no_leak, count_logins

pytestmark = pytest.mark.slow


def _parse_time(value: str) -> datetime:
    # Vault prints nanoseconds; fromisoformat takes at most microseconds.
    head, _, tail = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{tail[:6].ljust(6, '0')}+00:00")


# --- reads and rotation ----------------------------------------------------------------------


async def test_reads_the_latest_version_of_a_kv2_secret(kit: Kit) -> None:
    kit.put("db", {"password": "pw-one-7f3a9c", "port": 5432})
    source = await kit.open(TokenAuth(token=SecretStr(kit.vault.root_token)))

    secret = await source.get("db")

    assert (secret.name, secret.version) == ("db", 1)
    assert secret.reveal("password") == "pw-one-7f3a9c"
    assert secret.reveal("port") == "5432"  # JSON values come back as JSON text
    assert "pw-one-7f3a9c" not in repr(secret)
    assert "pw-one-7f3a9c" not in f"{secret} {secret.data}"

    kit.put("db", {"password": "pw-two-1b2c3d"})
    secret = await source.get("db")
    assert secret.version == 2
    assert secret.keys() == ["password"]
    assert secret.reveal("password") == "pw-two-1b2c3d"


async def test_missing_and_deleted_secrets_are_not_found(kit: Kit) -> None:
    source = await kit.open(TokenAuth(token=SecretStr(kit.vault.root_token)))
    with pytest.raises(NotFound) as missing:
        await source.get("absent")
    assert missing.value.resource_id == "absent"

    kit.put("gone", {"value": "deleted-value-81fe"})
    kit.admin.secrets.kv.v2.delete_latest_version_of_secret(f"{kit.prefix}/gone")
    with pytest.raises(NotFound) as deleted:
        await source.get("gone")
    # hvac's own message for this case quotes the whole response body; ours names the secret.
    assert str(deleted.value) == "secret 'gone' not found"
    assert_no_leak(deleted.value, kit.sensitive)


async def test_a_rotation_is_seen_live_and_fires_the_callbacks(kit: Kit) -> None:
    kit.put("jwt-signing", {"key": "signing-key-v1-aa11"})
    source = await kit.open(TokenAuth(token=SecretStr(kit.token(ttl="5m"))))
    seen: list[Secret] = []
    rotated = asyncio.Event()

    async def on_rotation(secret: Secret) -> None:
        seen.append(secret)
        rotated.set()

    async with WatchedSecret(source, "jwt-signing", refresh_seconds=0.2) as watched:
        watched.on_change(on_rotation)
        assert watched.current.reveal("key") == "signing-key-v1-aa11"

        kit.put("jwt-signing", {"key": "signing-key-v2-bb22"})
        await asyncio.wait_for(rotated.wait(), timeout=10)

        assert watched.current.version == 2
        assert watched.current.reveal("key") == "signing-key-v2-bb22"
        assert [secret.version for secret in seen] == [2]


# --- token auth and renewal -------------------------------------------------------------------


async def test_a_short_ttl_token_is_renewed_and_reads_keep_working(kit: Kit) -> None:
    kit.put("svc", {"password": "renewal-pw-5e6f"})
    token = kit.token(ttl="6s", renewable=True, explicit_max_ttl="10m")
    source = await kit.open(TokenAuth(token=SecretStr(token)))
    issued = hvac.Client(url=kit.vault.url, token=token).auth.token.lookup_self()["data"]

    # Several TTLs: without renewal, the token would have expired twice over.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert (await source.get("svc")).reveal("password") == "renewal-pw-5e6f"
        await asyncio.sleep(0.5)

    looked_up = hvac.Client(url=kit.vault.url, token=token).auth.token.lookup_self()["data"]
    assert looked_up["last_renewal_time"] > issued["creation_time"]
    assert _parse_time(looked_up["expire_time"]) > _parse_time(issued["expire_time"])
    assert looked_up["ttl"] > 0


async def test_an_expired_token_without_a_way_to_log_in_is_refused_clearly(kit: Kit) -> None:
    kit.put("svc", {"password": "expired-pw-9a8b"})
    token = kit.token(ttl="2s", renewable=False)
    source = await kit.open(TokenAuth(token=SecretStr(token)))
    assert (await source.get("svc")).reveal("password") == "expired-pw-9a8b"

    await asyncio.sleep(2.5)
    with pytest.raises(PermissionDenied) as refused:
        await source.get("svc")
    assert "expired or was revoked" in str(refused.value)
    assert_no_leak(refused.value, kit.sensitive)


async def test_a_token_file_is_read_again_once_the_token_expired(kit: Kit, tmp_path: Path) -> None:
    """What a Vault agent sink gives: a file whose token the agent replaces."""
    kit.put("svc", {"password": "agent-pw-4c4c"})
    token_file = tmp_path / "token"
    token_file.write_text(kit.token(ttl="2s", renewable=False) + "\n")
    source = await kit.open(TokenAuth(token_file=token_file), renew=False)

    await asyncio.sleep(2.5)
    token_file.write_text(kit.token(ttl="5m"))
    assert (await source.get("svc")).reveal("password") == "agent-pw-4c4c"


# --- AppRole ----------------------------------------------------------------------------------


async def test_approle_end_to_end_from_a_url(kit: Kit, approle_mount: str, tmp_path: Path) -> None:
    kit.put("db", {"password": "approle-pw-3d3d"})
    role_id, secret_id = kit.approle(approle_mount, token_ttl="1m")
    secret_id_file = tmp_path / "secret_id"
    secret_id_file.write_text(secret_id)
    url = (
        f"vault://127.0.0.1:{kit.vault.port}?tls=0&auth=approle&auth_mount={approle_mount}"
        f"&prefix={kit.prefix}&timeout=2"
    )

    source = await VaultSecrets.open(
        VaultConfig.from_url(
            url, VaultCredentials(role_id=SecretStr(role_id), secret_id_file=secret_id_file)
        )
    )
    kit.opened.append(source)

    assert (await source.get("db")).reveal("password") == "approle-pw-3d3d"
    assert source.lease is not None
    assert source.lease.renewable
    assert source.lease.ttl_seconds == 60


async def test_a_non_renewable_approle_token_is_replaced_by_logging_in_again(
    kit: Kit, approle_mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    kit.put("db", {"password": "batch-pw-6e6e"})
    role_id, secret_id = kit.approle(approle_mount, token_type="batch", token_ttl="2s")
    logins = count_logins(caplog)
    source = await kit.open(
        AppRoleAuth(SecretStr(role_id), SecretStr(secret_id), mount=approle_mount)
    )
    assert source.lease is not None
    assert not source.lease.renewable

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert (await source.get("db")).reveal("password") == "batch-pw-6e6e"
        await asyncio.sleep(0.25)
    # Logged in at 0 s, then at each 2/3 of the 2 s TTL: about 1.3 s, 2.7 s, 4 s.
    assert logins() >= 3


async def test_a_token_capped_by_its_max_ttl_is_replaced_by_logging_in_again(
    kit: Kit, approle_mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    kit.put("db", {"password": "capped-pw-7f7f"})
    role_id, secret_id = kit.approle(approle_mount, token_ttl="2s", token_max_ttl="3s")
    logins = count_logins(caplog)
    source = await kit.open(
        AppRoleAuth(SecretStr(role_id), SecretStr(secret_id), mount=approle_mount)
    )

    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert (await source.get("db")).reveal("password") == "capped-pw-7f7f"
        await asyncio.sleep(0.25)
    renewals = [
        record
        for record in caplog.get_records("call")
        if record.getMessage().startswith("vault: token renewed")
    ]
    assert renewals, "the token was never renewed"
    assert logins() >= 2


async def test_an_expired_approle_token_is_replaced_on_the_next_read(
    kit: Kit, approle_mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    kit.put("db", {"password": "relogin-pw-8a8a"})
    role_id, secret_id = kit.approle(approle_mount, token_ttl="2s", token_max_ttl="2s")
    logins = count_logins(caplog)
    # No background renewal: the read itself has to notice and log in again.
    source = await kit.open(
        AppRoleAuth(SecretStr(role_id), SecretStr(secret_id), mount=approle_mount), renew=False
    )
    await asyncio.sleep(2.5)

    assert (await source.get("db")).reveal("password") == "relogin-pw-8a8a"
    assert logins() == 2


async def test_a_wrong_secret_id_is_refused_without_being_quoted(
    kit: Kit, approle_mount: str
) -> None:
    role_id, _secret_id = kit.approle(approle_mount)
    wrong = "wrong-secret-id-0c0c0c0c"
    kit.sensitive.add(wrong)
    with pytest.raises(PermissionDenied) as refused:
        await kit.open(AppRoleAuth(SecretStr(role_id), SecretStr(wrong), mount=approle_mount))
    assert "login refused" in str(refused.value)
    assert_no_leak(refused.value, kit.sensitive)


async def test_an_unreadable_credential_file_names_the_file_only(
    kit: Kit, approle_mount: str, tmp_path: Path
) -> None:
    role_id, _secret_id = kit.approle(approle_mount)
    with pytest.raises(FailedPrecondition, match=r"secret_id file .*missing: No such file"):
        await kit.open(
            AppRoleAuth(
                SecretStr(role_id), secret_id_file=tmp_path / "missing", mount=approle_mount
            )
        )


# --- refusals -------------------------------------------------------------------------------


async def test_a_denied_path_is_permission_denied_without_a_new_login(
    kit: Kit, approle_mount: str, caplog: pytest.LogCaptureFixture
) -> None:
    outside = f"{kit.prefix}-outside"
    kit.put("db", {"password": "outside-pw-9b9b"}, prefix=outside)
    role_id, secret_id = kit.approle(approle_mount, token_ttl="1m")
    logins = count_logins(caplog)
    source = await kit.open(
        AppRoleAuth(SecretStr(role_id), SecretStr(secret_id), mount=approle_mount),
        path_prefix=outside,
    )

    with pytest.raises(PermissionDenied) as denied:
        await source.get("db")

    assert "permission denied" in str(denied.value)
    assert_no_leak(denied.value, kit.sensitive)
    # The token is alive: denial is policy, and logging in again would not change it.
    assert logins() == 1


# --- outages: bounded, typed, and recovered from -------------------------------------------


async def test_a_stopped_server_is_unavailable_quickly(own_kit: Kit) -> None:
    own_kit.put("db", {"password": "outage-pw-1a1a"})
    source = await own_kit.open(
        TokenAuth(token=SecretStr(own_kit.vault.root_token)), timeout_seconds=1.0
    )
    assert (await source.get("db")).reveal("password") == "outage-pw-1a1a"

    own_kit.vault.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        await source.get("db")
    assert time.monotonic() - started < 5
    assert "cannot connect" in str(down.value)
    assert_no_leak(down.value, own_kit.sensitive)


async def test_a_hung_server_is_unavailable_within_the_timeout(own_kit: Kit) -> None:
    own_kit.put("db", {"password": "hung-pw-2b2b"})
    source = await own_kit.open(
        TokenAuth(token=SecretStr(own_kit.vault.root_token)), timeout_seconds=1.0
    )
    assert (await source.get("db")).reveal("password") == "hung-pw-2b2b"

    own_kit.vault.pause()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 1 s") as hung:
            await source.get("db")
        assert time.monotonic() - started < 5
        assert_no_leak(hung.value, own_kit.sensitive)
    finally:
        own_kit.vault.resume()
    assert (await source.get("db")).reveal("password") == "hung-pw-2b2b"


async def test_a_sealed_server_is_unavailable_until_unsealed(own_kit: Kit) -> None:
    own_kit.put("db", {"password": "sealed-pw-3c3c"})
    token = own_kit.token(ttl="10m")
    source = await own_kit.open(TokenAuth(token=SecretStr(token)))

    await asyncio.to_thread(own_kit.vault.seal)
    with pytest.raises(Unavailable, match="sealed") as sealed:
        await source.get("db")
    assert_no_leak(sealed.value, own_kit.sensitive)

    await asyncio.to_thread(own_kit.vault.unseal)
    assert (await source.get("db")).reveal("password") == "sealed-pw-3c3c"


async def test_open_fails_fast_when_nothing_listens(kit: Kit) -> None:
    url = f"vault://127.0.0.1:{free_port()}?tls=0&timeout=1"
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await VaultSecrets.open(
            VaultConfig.from_url(url, VaultCredentials(token=SecretStr(kit.vault.root_token)))
        )
    assert time.monotonic() - started < 5


async def test_close_is_idempotent_and_a_closed_source_refuses_reads(kit: Kit) -> None:
    source = await kit.open(TokenAuth(token=SecretStr(kit.vault.root_token)))
    await source.close()
    await source.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        await source.get("db")
