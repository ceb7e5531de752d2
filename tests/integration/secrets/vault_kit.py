"""Helpers for the Vault tests: a per-test kit (admin client, KV folder, policy, tokens,
AppRoles) and leak checks."""

from __future__ import annotations

import secrets
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.vault_server import VaultServer
from tai_common.vault import VaultAuth, VaultConfig, VaultSecrets


def assert_no_leak(error: BaseException, sensitive: set[str]) -> None:
    """Neither the error nor anything chained to it mentions a sensitive value."""
    text = "".join(traceback.format_exception(error)) + repr(error)
    seen: set[int] = set()
    current: BaseException | None = error
    # format_exception hides a suppressed __context__; a debugger or error tracker does not.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text += str(current) + repr(current)
        current = current.__cause__ or current.__context__
    for value in sensitive:
        assert value not in text, "a sensitive value leaked into an exception"


@dataclass
class Kit:
    """Admin-side helpers for one test: its KV folder, a policy for it, tokens, AppRoles."""

    vault: VaultServer
    admin: Any
    prefix: str
    sensitive: set[str]
    policy: str = ""
    opened: list[VaultSecrets] = field(default_factory=list)

    def put(self, name: str, values: dict[str, Any], prefix: str | None = None) -> int:
        """Writes a new version (as admin); returns its version number."""
        for value in values.values():
            if isinstance(value, str):
                self.sensitive.add(value)
        response = self.admin.secrets.kv.v2.create_or_update_secret(
            path=f"{prefix or self.prefix}/{name}", secret=values, mount_point="secret"
        )
        return int(response["data"]["version"])

    def token(self, **options: Any) -> str:
        """A token with the test's policy (`ttl`, `renewable`, `type`…: hvac's create)."""
        created = self.admin.auth.token.create(policies=[self.policy], **options)
        token = str(created["auth"]["client_token"])
        self.sensitive.add(token)
        return token

    def approle(self, mount: str, **role_options: Any) -> tuple[str, str]:
        """A new AppRole role with the test's policy; returns (role_id, secret_id)."""
        role = f"role-{secrets.token_hex(4)}"
        self.admin.auth.approle.create_or_update_approle(
            role, token_policies=[self.policy], mount_point=mount, **role_options
        )
        role_id = str(
            self.admin.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        )
        secret_id = str(
            self.admin.auth.approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
        )
        self.sensitive.update({role_id, secret_id})
        return role_id, secret_id

    def config(self, auth: VaultAuth, **options: Any) -> VaultConfig:
        options.setdefault("path_prefix", self.prefix)
        options.setdefault("timeout_seconds", 2.0)
        options.setdefault("retry_seconds", 0.5)
        return VaultConfig(url=self.vault.url, auth=auth, **options)

    async def open(self, auth: VaultAuth, **options: Any) -> VaultSecrets:
        source = await VaultSecrets.open(self.config(auth, **options))
        self.opened.append(source)
        return source


def make_kit(vault: VaultServer, sensitive: set[str]) -> Kit:
    kit = Kit(vault, vault.admin(), f"tai-{secrets.token_hex(4)}", sensitive)
    sensitive.add(vault.root_token)
    kit.policy = f"read-{kit.prefix}"
    kit.admin.sys.create_or_update_policy(
        kit.policy, f'path "secret/data/{kit.prefix}/*" {{ capabilities = ["read"] }}'
    )
    return kit


def count_logins(caplog: pytest.LogCaptureFixture) -> Callable[[], int]:
    """Counts the adapter's "logged in" records so far in the test."""

    def count() -> int:
        return sum(
            1
            for record in caplog.get_records("call")
            if record.getMessage().startswith("vault: logged in")
        )

    return count
