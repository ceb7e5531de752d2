"""Parsing `vault://` URLs into a VaultConfig (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from tai_common.vault import AppRoleAuth, KubernetesAuth, TokenAuth, VaultConfig, VaultCredentials

TOKEN = VaultCredentials(token=SecretStr("s.plain-token-value"))


def test_defaults_are_https_token_auth_and_secret_tai() -> None:
    config = VaultConfig.from_url("vault://vault.internal:8200", TOKEN)
    assert config.url == "https://vault.internal:8200"
    assert (config.mount, config.path_prefix, config.timeout_seconds) == ("secret", "tai", 5.0)
    assert config.verify is True
    assert config.auth == TokenAuth(token=SecretStr("s.plain-token-value"))


def test_every_parameter() -> None:
    config = VaultConfig.from_url(
        "vault://127.0.0.1:8200?mount=kv&prefix=prod/tai&auth=kubernetes&role=tai-governor"
        "&auth_mount=k8s-prod&ca=/etc/vault/ca.pem&namespace=team&timeout=2.5",
        VaultCredentials(kubernetes_token_file=Path("/var/run/secrets/tokens/vault")),
    )
    assert config.url == "https://127.0.0.1:8200"
    assert (config.mount, config.path_prefix, config.namespace) == ("kv", "prod/tai", "team")
    assert config.verify == Path("/etc/vault/ca.pem")
    assert config.timeout_seconds == 2.5
    assert config.auth == KubernetesAuth(
        "tai-governor", Path("/var/run/secrets/tokens/vault"), mount="k8s-prod"
    )


def test_approle_from_files_and_plain_http() -> None:
    config = VaultConfig.from_url(
        "vault://127.0.0.1:8200?auth=approle&tls=0",
        VaultCredentials(role_id_file=Path("/run/role_id"), secret_id_file=Path("/run/sid")),
    )
    assert config.url == "http://127.0.0.1:8200"
    assert config.auth == AppRoleAuth(
        role_id_file=Path("/run/role_id"), secret_id_file=Path("/run/sid")
    )


@pytest.mark.parametrize(
    ("url", "credentials", "message"),
    [
        ("redis://x:1", TOKEN, "not a vault secrets URL"),
        ("vault://x:1?mout=kv", TOKEN, "unknown parameter"),
        ("vault://x:1?tls=yes", TOKEN, "tls must be 0 or 1"),
        ("vault://x:1?tls=0&ca=/ca.pem", TOKEN, "ca makes no sense"),
        ("vault://x:1?auth=ldap", TOKEN, "auth must be token, approle or kubernetes"),
        ("vault://x:1", VaultCredentials(), "TAI_VAULT_TOKEN"),
        ("vault://x:1?auth=approle", TOKEN, "TAI_VAULT_ROLE_ID"),
        ("vault://x:1?auth=kubernetes", TOKEN, "role="),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, credentials: VaultCredentials, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VaultConfig.from_url(url, credentials)


def test_the_config_repr_shows_no_credential() -> None:
    config = VaultConfig.from_url(
        "vault://x:1?auth=approle",
        VaultCredentials(role_id=SecretStr("role-id-value"), secret_id=SecretStr("sid-value")),
    )
    for value in ("role-id-value", "sid-value"):
        assert value not in repr(config)
    assert "s.plain-token-value" not in repr(VaultConfig.from_url("vault://x:1", TOKEN))
