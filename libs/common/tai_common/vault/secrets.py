"""The production SecretSource: Vault (or OpenBao) KV v2, through hvac.

- Reads `<mount>/data/<path_prefix>/<name>`: the latest version and its version number.
- hvac is synchronous, so every call runs in one worker thread owned by the adapter: the event
  loop never blocks, and calls are serialised, which hvac's client (whose token a login swaps)
  needs since it is not documented as thread-safe. Every HTTP call has a timeout, so an
  unreachable or hung server yields `Unavailable`, never a hang.
- A background task keeps the token alive: renew-self once a third of its TTL is left; a new
  login when renewal is impossible (not renewable, refused, or capped by the token's max TTL)
  and the auth method can log in again (AppRole, Kubernetes, a token file). A read refused
  because the token died anyway (Vault restarted, token revoked) logs in again once and retries.
- Errors are translated in one place (`_translate`) from the Vault error's class and Vault's own
  short error strings only, never from hvac's message (which can quote a whole response body);
  and they are raised outside the `except` block, so the hvac error is not even attached as
  context. Neither tokens nor values can reach a log record or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import hvac
import hvac.exceptions as vault_errors
import requests.exceptions
from pydantic import SecretStr

from tai_common.core import (
    Clock,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    SystemClock,
    TaiError,
    Unavailable,
    wait_event,
)
from tai_common.ports import Secret, check_name
from tai_common.vault.auth import (
    KUBERNETES_TOKEN_FILE,
    AppRoleAuth,
    KubernetesAuth,
    TokenAuth,
    TokenLease,
    VaultAuth,
    lease_of,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Vault's error strings are short ("permission denied", "invalid role or secret ID"); a longer
# one is cut rather than copied whole into an error message.
_MAX_REASON = 200
_URL_PARAMETERS = frozenset(
    {"mount", "prefix", "auth", "role", "auth_mount", "tls", "ca", "namespace", "timeout"}
)


@dataclass(frozen=True)
class VaultCredentials:
    """The credentials a `vault://` URL cannot carry (they come from settings).

    Each is either the value or a file holding it; files are re-read at every login.
    """

    token: SecretStr | None = None
    token_file: Path | None = None
    role_id: SecretStr | None = None
    role_id_file: Path | None = None
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    kubernetes_token_file: Path = KUBERNETES_TOKEN_FILE


@dataclass(frozen=True)
class VaultConfig:
    """Where and how to read secrets from Vault.

    Attributes:
        url: `http(s)://host:port` of the Vault API.
        auth: How to obtain a token.
        mount: Where the KV v2 engine is mounted.
        path_prefix: Folder of TAI's secrets in that engine (`tai` → `secret/data/tai/<name>`).
        timeout_seconds: Bound on each HTTP call (connect, then each read).
        verify: TLS: True (system CAs), a CA bundle file, or False (never outside tests).
        namespace: Vault Enterprise namespace, if any.
        renew: Keep the token alive in the background.
        retry_seconds: Pause between attempts after a failed renewal or login.
    """

    url: str
    auth: VaultAuth
    mount: str = "secret"
    path_prefix: str = "tai"
    timeout_seconds: float = 5.0
    verify: bool | Path = True
    namespace: str | None = None
    renew: bool = True
    retry_seconds: float = 5.0

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"vault url must be http(s)://host:port, not {self.url!r}")
        if not self.mount.strip("/"):
            raise ValueError("vault mount must not be empty")
        if self.timeout_seconds <= 0 or self.retry_seconds <= 0:
            raise ValueError("vault timeout_seconds and retry_seconds must be positive")

    @classmethod
    def from_url(cls, url: str, credentials: VaultCredentials) -> VaultConfig:
        """Parses `vault://host:port?mount=secret&prefix=tai&auth=token|approle|kubernetes…`.

        Query parameters: `mount` (default `secret`), `prefix` (default `tai`), `auth` (default
        `token`), `role` (the Vault role, for kubernetes), `auth_mount` (default: the auth
        method's name), `tls` (`1` default: https; `0`: plain http), `ca` (CA bundle file),
        `namespace`, `timeout` (seconds, default 5).

        Raises:
            ValueError: not a vault URL, an unknown parameter, or credentials missing for the
                chosen auth method (the message names the settings to set).
        """
        parsed = urlparse(url)
        if parsed.scheme != "vault" or not parsed.hostname or parsed.path not in ("", "/"):
            raise ValueError(f"not a vault secrets URL: {url!r} (expected vault://host:port?…)")
        query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        unknown = sorted(set(query) - _URL_PARAMETERS)
        if unknown:
            raise ValueError(f"vault URL: unknown parameter(s) {', '.join(unknown)}")
        tls = query.get("tls", "1")
        if tls not in ("0", "1"):
            raise ValueError("vault URL: tls must be 0 or 1")
        if tls == "0" and "ca" in query:
            raise ValueError("vault URL: ca makes no sense with tls=0")
        verify: bool | Path = Path(query["ca"]) if "ca" in query else True
        method = query.get("auth", "token")
        auth_mount = query.get("auth_mount")
        auth: VaultAuth
        if method == "token":
            if (credentials.token is None) == (credentials.token_file is None):
                raise ValueError(
                    "vault auth=token needs exactly one of TAI_VAULT_TOKEN, TAI_VAULT_TOKEN_FILE"
                )
            auth = TokenAuth(credentials.token, credentials.token_file)
        elif method == "approle":
            if (credentials.role_id is None) == (credentials.role_id_file is None):
                raise ValueError(
                    "vault auth=approle needs exactly one of TAI_VAULT_ROLE_ID, "
                    "TAI_VAULT_ROLE_ID_FILE (and TAI_VAULT_SECRET_ID or TAI_VAULT_SECRET_ID_FILE)"
                )
            auth = AppRoleAuth(
                credentials.role_id,
                credentials.secret_id,
                credentials.role_id_file,
                credentials.secret_id_file,
                mount=auth_mount or "approle",
            )
        elif method == "kubernetes":
            if not query.get("role"):
                raise ValueError("vault auth=kubernetes needs role=<vault role> in the URL")
            auth = KubernetesAuth(
                query["role"],
                credentials.kubernetes_token_file,
                mount=auth_mount or "kubernetes",
            )
        else:
            raise ValueError(
                f"vault URL: auth must be token, approle or kubernetes, not {method!r}"
            )
        return cls(
            url=f"{'https' if tls == '1' else 'http'}://{parsed.netloc}",
            auth=auth,
            mount=query.get("mount", "secret"),
            path_prefix=query.get("prefix", "tai"),
            timeout_seconds=float(query.get("timeout", "5")),
            verify=verify,
            namespace=query.get("namespace") or None,
        )


@dataclass(frozen=True)
class _Lease:
    """The current token's lease, as this process knows it."""

    ttl: int  # seconds from obtained_at; 0: the token never expires
    renewable: bool
    obtained_at: float  # monotonic time the request that granted `ttl` was sent
    granted: int  # the TTL the token was issued with; a renewal granting less hit its max TTL
    capped: bool = False
    final: bool = False  # nothing more can be done: no renewal, no login

    @property
    def expires_at(self) -> float:
        return self.obtained_at + self.ttl

    @property
    def renew_at(self) -> float:
        return self.obtained_at + self.ttl * 2 / 3


class VaultSecrets:
    """Secrets from Vault KV v2. Make one with `await VaultSecrets.open(config)`."""

    def __init__(self, config: VaultConfig, *, clock: Clock | None = None) -> None:
        self._config = config
        self._clock = clock or SystemClock()
        self._prefix = config.path_prefix.strip("/")
        self._mount = config.mount.strip("/")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tai-vault")
        # token="" and an explicit verify: hvac would otherwise pick up VAULT_TOKEN,
        # ~/.vault-token or VAULT_CACERT behind the settings' back.
        self._client = hvac.Client(
            url=config.url,
            token="",
            verify=str(config.verify) if isinstance(config.verify, Path) else config.verify,
            timeout=config.timeout_seconds,
            namespace=config.namespace,
        )
        self._lease: _Lease | None = None
        self._generation = 0  # bumped by each login: tells a caller whether one happened
        self._login_lock = asyncio.Lock()
        self._lease_changed = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, config: VaultConfig, *, clock: Clock | None = None) -> VaultSecrets:
        """Logs in (so bad credentials fail at start, not at first use) and starts renewal.

        Raises:
            PermissionDenied: the credentials are refused.
            FailedPrecondition: a credential file cannot be read, or the auth method is not
                enabled at its mount.
            Unavailable: Vault cannot be reached or is sealed.
        """
        source = cls(config, clock=clock)
        try:
            await source._login()
        except BaseException:
            await source.close()
            raise
        if config.renew:
            source._keeper = asyncio.create_task(
                source._keep_token_alive(), name="vault-token-renewal"
            )
        return source

    @property
    def lease(self) -> TokenLease | None:
        """The current token's lease as last granted (TTL from that moment), or None before
        login."""
        if self._lease is None:
            return None
        return TokenLease(self._lease.ttl, self._lease.renewable)

    async def get(self, name: str) -> Secret:
        check_name(name)
        if self._closed:
            raise FailedPrecondition("the vault secret source is closed")
        what = f"read secret {name!r}"
        generation = self._generation
        try:
            response = await self._run(lambda: self._read(name), what, name=name)
        except PermissionDenied:
            # Refused either by policy or because the token died (expired, revoked, Vault
            # restarted); only the second is cured by logging in again, so ask Vault which.
            if await self._token_alive():
                raise
            await self._login_again(generation)
            response = await self._run(lambda: self._read(name), what, name=name)
        return self._secret(name, response)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        # Closing in the worker waits for a call in flight (bounded by the timeout) instead of
        # pulling the session from under it.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._forget)
        self._executor.shutdown(wait=False)

    # --- reads -----------------------------------------------------------------------------

    def _read(self, name: str) -> Any:
        path = f"{self._prefix}/{name}" if self._prefix else name
        return self._client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=self._mount, raise_on_deleted_version=True
        )

    def _secret(self, name: str, response: Any) -> Secret:
        body = response["data"]
        values: Mapping[str, Any] = body.get("data") or {}
        # KV v2 stores JSON: non-string values (numbers, nested objects) come back as JSON text.
        return Secret.of(
            name,
            int(body["metadata"]["version"]),
            {
                str(key): value if isinstance(value, str) else json.dumps(value)
                for key, value in values.items()
            },
        )

    def _forget(self) -> None:
        self._client.token = ""
        self._client.adapter.close()

    # --- the token -------------------------------------------------------------------------

    async def _token_alive(self) -> bool:
        try:
            await self._run(lambda: self._client.auth.token.lookup_self(), "look up own token")
        except PermissionDenied:
            return False
        return True

    async def _login(self) -> None:
        async with self._login_lock:
            await self._login_locked()

    async def _login_again(self, seen_generation: int) -> None:
        """Replaces a dead token, unless a login happened since `seen_generation`."""
        async with self._login_lock:
            if self._generation != seen_generation:
                return
            if not self._config.auth.can_login:
                raise PermissionDenied(
                    f"vault {self._config.url}: the token has expired or was revoked, and "
                    f"auth={self._config.auth.method} cannot obtain another (use a token file "
                    "kept fresh by a Vault agent, or approle or kubernetes auth)"
                )
            await self._login_locked()

    async def _login_locked(self) -> None:
        method = self._config.auth.method
        started = self._clock.monotonic()
        lease, granted = await self._run(self._login_sync, f"log in with {method}", login=True)
        self._generation += 1
        self._install(_Lease(lease.ttl_seconds, lease.renewable, started, granted))
        log.info(
            "vault: logged in with %s; token %s",
            method,
            f"ttl {lease.ttl_seconds} s{', renewable' if lease.renewable else ''}"
            if lease.ttl_seconds
            else "never expires",
        )

    def _login_sync(self) -> tuple[TokenLease, int]:
        lease = self._config.auth.login(self._client)
        if lease is not None:
            return lease, lease.ttl_seconds
        # A given token: ask Vault what it is (this also proves it valid).
        data = self._client.auth.token.lookup_self()["data"]
        lease = TokenLease(int(data["ttl"]), bool(data["renewable"]))
        return lease, max(int(data.get("creation_ttl") or 0), lease.ttl_seconds)

    def _install(self, lease: _Lease) -> None:
        self._lease = lease
        self._lease_changed.set()

    async def _keep_token_alive(self) -> None:
        while True:
            lease, generation = self._lease, self._generation
            if lease is None or lease.ttl == 0 or lease.final:
                # Nothing to renew until a read logs in again.
                await self._pause(None)
                continue
            delay = lease.renew_at - self._clock.monotonic()
            if delay > 0:
                await self._pause(delay)
                if self._lease is not lease:
                    continue
            try:
                await self._extend(lease, generation)
            except TaiError as error:
                reason = error.message  # TAI's errors are written never to carry a secret
            except Exception as error:
                # An unexpected answer must not end renewal for the life of the process; its
                # message could quote anything, so only the type is logged.
                reason = f"unexpected {type(error).__name__}"
            else:
                continue
            pause = self._config.retry_seconds
            remaining = lease.expires_at - self._clock.monotonic()
            if remaining > 0:
                # Still valid: try again well before it expires.
                pause = min(pause, max(remaining / 3, 0.1))
            log.warning(
                "vault: could not renew or replace the token (%s); next attempt in %.1f s",
                reason,
                pause,
            )
            await self._pause(pause)

    async def _extend(self, lease: _Lease, generation: int) -> None:
        auth = self._config.auth
        if lease.renewable and not lease.capped:
            started = self._clock.monotonic()
            try:
                renewed = await self._run(
                    lambda: lease_of(self._client.auth.token.renew_self()), "renew the token"
                )
            except (PermissionDenied, FailedPrecondition) as error:
                await self._renewal_refused(lease, generation, error.message)
                return
            if self._generation != generation:
                return  # a read logged in meanwhile; that lease is newer
            if renewed.ttl_seconds <= 0:
                # Renewed up to its max TTL, which is now: the token is as good as expired.
                await self._renewal_refused(lease, generation, "no TTL left")
                return
            capped = renewed.ttl_seconds < lease.granted
            self._install(
                _Lease(renewed.ttl_seconds, renewed.renewable, started, lease.granted, capped)
            )
            # A capped token is not renewed again (it cannot outlive its max TTL): at its next
            # turn, it is replaced by a login, or marked final.
            log.debug("vault: token renewed; ttl %d s", renewed.ttl_seconds)
            return
        if auth.can_login:
            await self._login_again(generation)
            return
        self._install(dataclasses.replace(lease, final=True))
        log.warning(
            "vault: the token cannot be renewed (further) and expires in %.0f s; auth=%s cannot "
            "replace it",
            max(0.0, lease.expires_at - self._clock.monotonic()),
            auth.method,
        )

    async def _renewal_refused(self, lease: _Lease, generation: int, reason: str) -> None:
        """Renewal was refused (expired, revoked, no longer renewable): log in if possible."""
        auth = self._config.auth
        if auth.can_login:
            await self._login_again(generation)
            return
        self._install(dataclasses.replace(lease, final=True))
        log.warning(
            "vault: token renewal refused (%s); auth=%s cannot replace the token",
            reason,
            auth.method,
        )

    async def _pause(self, seconds: float | None) -> None:
        """Sleeps `seconds` (None: forever), or less if the lease changes meanwhile."""
        self._lease_changed.clear()
        await wait_event(self._lease_changed, seconds)

    # --- calls and their errors --------------------------------------------------------------

    async def _run(
        self, call: Callable[[], T], what: str, *, name: str | None = None, login: bool = False
    ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._translated, call, what, name, login)

    def _translated(self, call: Callable[[], T], what: str, name: str | None, login: bool) -> T:
        try:
            return call()
        except (vault_errors.VaultError, requests.exceptions.RequestException) as error:
            failure = self._translate(error, what, name, login)
        # Raised here, outside the `except`, so the hvac error (whose text can quote a whole
        # response body) is not attached as __context__.
        raise failure

    def _translate(self, error: Exception, what: str, name: str | None, login: bool) -> TaiError:
        """The one mapping from hvac/requests errors to TAI errors."""
        where = f"vault {self._config.url}: {what}"
        if isinstance(error, requests.exceptions.Timeout):
            return Unavailable(f"{where}: no answer within {self._config.timeout_seconds:g} s")
        if isinstance(error, requests.exceptions.ConnectionError):
            return Unavailable(f"{where}: cannot connect ({type(error).__name__})")
        if isinstance(error, requests.exceptions.RequestException):
            return Unavailable(f"{where}: {type(error).__name__}")
        reason = self._reason(error)
        if isinstance(error, vault_errors.VaultDown | vault_errors.VaultNotInitialized):
            return Unavailable(f"{where}: sealed, not initialised or in standby ({reason})")
        if isinstance(error, vault_errors.Forbidden | vault_errors.Unauthorized):
            detail = "" if reason == "permission denied" else f" ({reason})"
            return PermissionDenied(f"{where}: permission denied{detail}")
        if isinstance(error, vault_errors.InvalidRequest) and login:
            return PermissionDenied(f"{where}: login refused ({reason})")
        if isinstance(error, vault_errors.InvalidPath):
            if name is not None:
                return NotFound("secret", name)
            return FailedPrecondition(f"{where}: no such path; is the engine or auth enabled?")
        if isinstance(
            error,
            vault_errors.InvalidRequest
            | vault_errors.UnsupportedOperation
            | vault_errors.PreconditionFailed
            | vault_errors.ParamValidationError,
        ):
            return FailedPrecondition(f"{where}: request refused ({reason})")
        # 429, 5xx, and anything unexpected: the server's problem; worth retrying later.
        return Unavailable(f"{where}: {type(error).__name__} ({reason})")

    def _reason(self, error: Exception) -> str:
        """Vault's own error strings, with anything known to be sensitive blanked out."""
        errors = getattr(error, "errors", None)
        if not errors:
            return "no detail"
        text = "; ".join(str(item).strip() for item in errors) if isinstance(errors, list) else ""
        for sensitive in self._sensitive():
            text = text.replace(sensitive, "[redacted]")
        return text[:_MAX_REASON] or "no detail"

    def _sensitive(self) -> list[str]:
        values = [str(self._client.token or "")]
        auth = self._config.auth
        if dataclasses.is_dataclass(auth):
            values += [
                value.get_secret_value()
                for field in dataclasses.fields(auth)
                if isinstance(value := getattr(auth, field.name), SecretStr)
            ]
        # Short strings could blank innocent words; real credentials are long.
        return [value for value in values if len(value) >= 8]
