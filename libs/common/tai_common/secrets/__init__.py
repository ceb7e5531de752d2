"""The SecretSource port, its adapters and the rotation-aware `WatchedSecret`.

Adapters by URL (the factory picks one from `TAI_SECRETS`):

- `env://` or `env://?dir=/var/run/secrets/tai`: `EnvSecrets`, mounted files and
  `TAI_SECRET_<NAME>__<KEY>` variables (embedded default);
- `vault://host:port?mount=secret&prefix=tai&auth=token|approle|kubernetes&role=…&tls=0|1`:
  `VaultSecrets` (production), with the credentials from settings.

The adapter modules import their client libraries (hvac) only when used, through the two
`open_*` functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tai_common.clock import Clock
from tai_common.secrets.port import Secret, SecretSource, check_name
from tai_common.secrets.watched import ChangeCallback, WatchedSecret

if TYPE_CHECKING:
    from tai_common.secrets.env_secrets import EnvSecrets
    from tai_common.secrets.vault_secrets import VaultCredentials, VaultSecrets

__all__ = [
    "ChangeCallback",
    "Secret",
    "SecretSource",
    "WatchedSecret",
    "check_name",
    "open_env_secrets",
    "open_vault_secrets",
]


def open_env_secrets(url: str, *, environ: Mapping[str, str] | None = None) -> EnvSecrets:
    """The `EnvSecrets` named by an `env://[?dir=/path]` URL.

    Raises:
        ValueError: not an `env://` URL.
    """
    from tai_common.secrets.env_secrets import EnvSecrets

    return EnvSecrets.from_url(url, environ=environ)


async def open_vault_secrets(
    url: str, credentials: VaultCredentials, *, clock: Clock | None = None
) -> VaultSecrets:
    """A logged-in `VaultSecrets` for a `vault://…` URL, its token kept alive in the background.

    Raises:
        ValueError: a malformed URL, or credentials missing for its auth method.
        PermissionDenied: the credentials are refused.
        FailedPrecondition: a credential file cannot be read, or the auth method is missing.
        Unavailable: Vault cannot be reached or is sealed.
    """
    from tai_common.secrets.vault_secrets import VaultConfig, VaultSecrets

    return await VaultSecrets.open(VaultConfig.from_url(url, credentials), clock=clock)
