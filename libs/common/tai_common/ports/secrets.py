"""The SecretSource port: named secrets, each a set of key/value pairs with a version.

Values are held as `pydantic.SecretStr`, whose `repr` and `str` are redacted: a `Secret` can be
logged, put in an f-string or end up in an exception message by accident without disclosing
anything. The only way to the plain text is `Secret.reveal(key)`, so every disclosure is
explicit and easy to find.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from pydantic import SecretStr

from tai_common.core import InvalidArgument, NotFound

# Segments of letters, digits, `_`, `-` and `.` that start with a letter or digit, joined by `/`.
# A segment never starts with a dot, so `..` (and a path escaping a mounted directory) cannot
# be written; `/` allows Vault folders (`jwt/signing`).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*")


def check_name(name: str) -> str:
    """Returns `name` if it is a valid secret name.

    Raises:
        InvalidArgument: `name` is empty, has an empty or dot-led segment or a character outside
            `[A-Za-z0-9_.-/]`.
    """
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            "name", f"{name!r} is not a secret name (letters, digits, _ . - and / separators)"
        )
    return name


@dataclass(frozen=True)
class Secret:
    """One version of a named secret.

    Attributes:
        name: The secret's name, as passed to `SecretSource.get`.
        version: Increases when the content changes: Vault's KV v2 version number; for the
            environment/file source, a per-process counter bumped whenever a read differs from
            the previous one.
        data: The key/value pairs; values are redacted in `repr`/`str`.
    """

    name: str
    version: int
    data: Mapping[str, SecretStr] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only view: a consumer holding a Secret cannot change what another one sees.
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    @classmethod
    def of(cls, name: str, version: int, values: Mapping[str, str]) -> Secret:
        """Wraps plain values."""
        return cls(name, version, {key: SecretStr(value) for key, value in values.items()})

    def keys(self) -> list[str]:
        """The keys, sorted."""
        return sorted(self.data)

    def reveal(self, key: str) -> str:
        """The plain value of `key`.

        Raises:
            NotFound: the secret has no such key (the message names the key, never a value).
        """
        try:
            return self.data[key].get_secret_value()
        except KeyError:
            raise NotFound("secret key", f"{self.name}:{key}") from None


class SecretSource(Protocol):
    """Reads secrets by name. Implementations must never put a value in a log record, an error
    message or a metric label."""

    async def get(self, name: str) -> Secret:
        """The latest version of the secret `name`.

        Raises:
            InvalidArgument: `name` is not a valid secret name.
            NotFound: there is no such secret (or its latest version is deleted).
            PermissionDenied: the source refuses this process access to it.
            Unavailable: the source cannot be reached right now; retry later.
        """
        ...

    async def close(self) -> None:
        """Releases connections and background tasks. Idempotent."""
        ...
