"""The embedded SecretSource: mounted files and environment variables.

A secret comes from one of two places, never a mix of both:

- a directory `<dir>/<name>/` holding one file per key: the layout of a Kubernetes secret
  volume and of Vault agent templates. Files are re-read on every `get`, so a rotated file is
  seen without a restart. Kubernetes swaps the `..data` symlink atomically on rotation; reading
  every key through it resolved once gives one consistent snapshot, never old and new keys mixed;
- otherwise, variables `TAI_SECRET_<NAME>__<KEY>`: the name upper-cased with `/`, `-` and `.`
  turned into `_`, the key lower-cased. A double underscore separates name from key because a
  single one could not: `TAI_SECRET_JWT_SIGNING_KEY` would fit both (`jwt`, `signing_key`) and
  (`jwt_signing`, `key`).

Choosing the directory whenever it exists means a stale variable can never shadow a rotated
file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tai_common.core import FailedPrecondition, NotFound, PermissionDenied
from tai_common.ports import Secret, check_name

ENV_PREFIX = "TAI_SECRET_"


def env_prefix(name: str) -> str:
    """The prefix of the variables holding secret `name`: `jwt-keys` → `TAI_SECRET_JWT_KEYS__`."""
    return ENV_PREFIX + name.upper().replace("/", "_").replace("-", "_").replace(".", "_") + "__"


class EnvSecrets:
    """Secrets from a mounted directory and the environment.

    Args:
        directory: Where `<name>/<key>` files are mounted; None reads the environment only.
        environ: The variables to read; the process environment by default.
    """

    def __init__(
        self, directory: Path | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self._directory = directory
        self._environ = os.environ if environ is None else environ
        # name → (last values seen, their version): versions grow when a read differs.
        self._seen: dict[str, tuple[dict[str, str], int]] = {}

    @classmethod
    def from_url(cls, url: str, *, environ: Mapping[str, str] | None = None) -> EnvSecrets:
        """`env://` (environment only) or `env://?dir=/var/run/secrets/tai`.

        Raises:
            ValueError: not an `env://` URL.
        """
        parsed = urlparse(url)
        if parsed.scheme != "env" or parsed.netloc or parsed.path not in ("", "/"):
            raise ValueError(f"not an env secrets URL: {url!r} (expected env://[?dir=/path])")
        directories = parse_qs(parsed.query).get("dir", [])
        return cls(Path(directories[-1]) if directories else None, environ=environ)

    async def get(self, name: str) -> Secret:
        check_name(name)
        values: dict[str, str] | None = None
        if self._directory is not None:
            # File reads are blocking calls; a slow volume must not stall the event loop.
            values = await asyncio.to_thread(self._read_directory, name)
        if values is None:
            values = self._read_environment(name)
        if values is None:
            raise NotFound("secret", name)
        return Secret.of(name, self._version(name, values), values)

    async def close(self) -> None:
        self._seen.clear()

    def _version(self, name: str, values: dict[str, str]) -> int:
        previous = self._seen.get(name)
        if previous is not None and previous[0] == values:
            return previous[1]
        version = 1 if previous is None else previous[1] + 1
        self._seen[name] = (values, version)
        return version

    def _read_environment(self, name: str) -> dict[str, str] | None:
        prefix = env_prefix(name)
        values = {
            variable[len(prefix) :].lower(): value
            for variable, value in self._environ.items()
            if variable.startswith(prefix) and len(variable) > len(prefix)
        }
        return values or None

    def _read_directory(self, name: str) -> dict[str, str] | None:
        assert self._directory is not None
        folder = self._directory / name
        # A file can vanish between listing and reading when a writer replaces the folder's
        # content without the atomic `..data` swap; one more pass then sees the new content.
        for _attempt in range(3):
            try:
                return _read_folder(name, folder)
            except FileNotFoundError:
                continue
        raise FailedPrecondition(f"secret {name!r}: files under {folder} keep changing")

    def __repr__(self) -> str:
        return f"EnvSecrets(directory={self._directory!r})"


def _read_folder(name: str, folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    snapshot = folder / "..data"
    base = snapshot.resolve(strict=True) if snapshot.is_dir() else folder
    values: dict[str, str] = {}
    for entry in base.iterdir():
        # Dot entries are Kubernetes' bookkeeping (`..data`, `..2024_01_01_…`), not keys.
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            raw = entry.read_bytes()
        except PermissionError:
            raise PermissionDenied(f"secret {name!r}: cannot read {entry}") from None
        text = _utf8(raw)
        if text is None:
            # Raised outside any `except`: a UnicodeDecodeError quotes the offending byte,
            # which is part of the secret, and must not ride along as the context.
            raise FailedPrecondition(f"secret {name!r}: key {entry.name!r} is not UTF-8 text")
        # Files written by `echo` or editors end with a newline that is not part of a password.
        values[entry.name] = text.rstrip("\r\n")
    return values


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
