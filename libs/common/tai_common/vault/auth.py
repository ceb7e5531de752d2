"""How `VaultSecrets` obtains a Vault token: a given token, AppRole, or Kubernetes.

Each method is a small frozen dataclass whose `login` runs in `VaultSecrets`' worker thread (hvac
is synchronous). Credentials given as files are read at every login, not once: a rotated
secret_id, a token rewritten by a Vault agent sink, or a projected service-account token that
the kubelet refreshes hourly are all picked up by the next login, without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from tai_common.core import FailedPrecondition

# The service-account token the kubelet projects into every pod (unless automount is disabled).
KUBERNETES_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True)
class TokenLease:
    """What Vault granted: the token's time to live (0: never expires) and whether renew-self can
    extend it."""

    ttl_seconds: int
    renewable: bool


class VaultAuth(Protocol):
    """One way of obtaining a Vault token."""

    @property
    def method(self) -> str:
        """`token`, `approle` or `kubernetes`: names the method in logs and errors."""
        ...

    @property
    def can_login(self) -> bool:
        """Whether `login` can obtain a new token once the current one has expired."""
        ...

    def login(self, client: Any) -> TokenLease | None:
        """Sets `client.token` to a fresh token (blocking; hvac's `Client`).

        Returns:
            The lease from the login response, or None when there is none (a given token),
            in which case the caller looks the token up.
        """
        ...


class CredentialFileError(FailedPrecondition):
    """A credential file cannot be read; the message names the file, never its content."""


def _read_credential(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        # The path is configuration, not a secret; the OS reason (missing, denied) helps.
        raise CredentialFileError(f"{what} file {path}: {error.strerror}") from None
    if not value:
        raise CredentialFileError(f"{what} file {path} is empty")
    return value


@dataclass(frozen=True)
class TokenAuth:
    """A token handed to the process: directly, or in a file that a Vault agent keeps fresh.

    Only a token file allows a new token after expiry: the file is read again.
    """

    token: SecretStr | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("TokenAuth needs exactly one of token and token_file")

    @property
    def method(self) -> str:
        return "token"

    @property
    def can_login(self) -> bool:
        return self.token_file is not None

    def login(self, client: Any) -> TokenLease | None:
        if self.token_file is not None:
            client.token = _read_credential(self.token_file, "vault token")
        else:
            assert self.token is not None
            client.token = self.token.get_secret_value()
        return None


@dataclass(frozen=True)
class AppRoleAuth:
    """AppRole: a role_id (like a user name) and a secret_id (like a password), each given
    directly or as a file. A role created with `bind_secret_id=false` needs no secret_id."""

    role_id: SecretStr | None = None
    secret_id: SecretStr | None = None
    role_id_file: Path | None = None
    secret_id_file: Path | None = None
    mount: str = "approle"

    def __post_init__(self) -> None:
        if (self.role_id is None) == (self.role_id_file is None):
            raise ValueError("AppRoleAuth needs exactly one of role_id and role_id_file")
        if self.secret_id is not None and self.secret_id_file is not None:
            raise ValueError("AppRoleAuth takes secret_id or secret_id_file, not both")

    @property
    def method(self) -> str:
        return "approle"

    @property
    def can_login(self) -> bool:
        return True

    def login(self, client: Any) -> TokenLease | None:
        if self.role_id_file is not None:
            role_id = _read_credential(self.role_id_file, "approle role_id")
        else:
            assert self.role_id is not None
            role_id = self.role_id.get_secret_value()
        secret_id: str | None = None
        if self.secret_id_file is not None:
            secret_id = _read_credential(self.secret_id_file, "approle secret_id")
        elif self.secret_id is not None:
            secret_id = self.secret_id.get_secret_value()
        response = client.auth.approle.login(role_id, secret_id, mount_point=self.mount)
        return lease_of(response)


@dataclass(frozen=True)
class KubernetesAuth:
    """Kubernetes: the pod's service-account token (a JWT) exchanged for a Vault token of the
    Vault role bound to that service account (the chart configures both sides)."""

    role: str
    token_file: Path = KUBERNETES_TOKEN_FILE
    mount: str = "kubernetes"

    def __post_init__(self) -> None:
        if not self.role:
            raise ValueError("KubernetesAuth needs the Vault role to log in as")

    @property
    def method(self) -> str:
        return "kubernetes"

    @property
    def can_login(self) -> bool:
        return True

    def login(self, client: Any) -> TokenLease | None:
        jwt = _read_credential(self.token_file, "kubernetes service-account token")
        response = client.auth.kubernetes.login(self.role, jwt, mount_point=self.mount)
        return lease_of(response)


def lease_of(response: Any) -> TokenLease:
    """The lease in a login or renew-self response (`auth.lease_duration`, `auth.renewable`)."""
    auth = response["auth"]
    return TokenLease(int(auth["lease_duration"]), bool(auth["renewable"]))
