"""Bearer-token verification with PyJWT: RS256/ES256 signatures against a JWKS (from a URL,
a file or a secret), with `iss`, `aud`, `exp` and `nbf` checked and a small clock skew allowed.

Keys are cached; a token signed with a key id the cache does not know triggers one refresh
(key rotation), rate-limited so that garbage key ids cannot make us hammer the key source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from tai_common.auth.principal import Principal, Role
from tai_common.core import Unauthenticated, Unavailable
from tai_common.core.namespace import ALL_NAMESPACES, namespace_name_problem

log = logging.getLogger(__name__)

# Fetches the current JWKS document (a dict with "keys").
JwksLoader = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class VerifierConfig:
    audience: str
    issuer: str = ""
    algorithms: Sequence[str] = ("RS256", "ES256")
    roles_claim: str = "roles"
    namespaces_claim: str = "tai_namespaces"
    leeway_seconds: float = 30.0
    # At most one key refresh (for an unknown key id) this often.
    min_refresh_seconds: float = 10.0
    # Keys older than this are reloaded before use: a key taken out of the set (rotated out,
    # compromised) stops being trusted without a restart.
    max_key_age_seconds: float = 300.0


class JwtVerifier:
    def __init__(self, config: VerifierConfig, load_jwks: JwksLoader) -> None:
        self._config = config
        self._load = load_jwks
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    def replace_keys(self, jwks: dict[str, Any]) -> None:
        """Installs a new key set (e.g. a rotated secret)."""
        keys: dict[str, jwt.PyJWK] = {}
        for key in jwt.PyJWKSet.from_dict(jwks).keys:
            if key.key_id:
                keys[key.key_id] = key
        self._keys = keys
        self._loaded_at = time.monotonic()

    async def verify(self, token: str) -> Principal:
        """The principal a valid token names; `Unauthenticated` with the reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in self._config.algorithms:
            raise Unauthenticated(
                f"invalid token: algorithm {algorithm!r} is not accepted "
                f"(use one of {', '.join(self._config.algorithms)})"
            )
        kid = header.get("kid")
        if not kid:
            raise Unauthenticated("invalid token: it has no key id (kid)")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[str(algorithm)],
                audience=self._config.audience,
                issuer=self._config.issuer or None,
                leeway=self._config.leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"invalid token: its audience is not {self._config.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"invalid token: its issuer is not {self._config.issuer!r}"
            ) from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        role = _role_of(claims.get(self._config.roles_claim))
        namespaces = _namespaces_of(claims.get(self._config.namespaces_claim))
        return Principal(str(claims["sub"]), role, namespaces=namespaces)

    async def _key(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if (
            key is not None
            and time.monotonic() - self._loaded_at < self._config.max_key_age_seconds
        ):
            return key
        if key is not None:
            async with self._lock:
                if time.monotonic() - self._loaded_at >= self._config.max_key_age_seconds:
                    try:
                        self.replace_keys(await self._load())
                    except (OSError, ValueError, jwt.PyJWKError):
                        # Keep the keys we have: an unreachable key source must not lock
                        # everyone out; the next call tries again.
                        log.warning("could not reload the token verification keys")
            key = self._keys.get(kid)
            if key is not None:
                return key
        async with self._lock:
            key = self._keys.get(kid)
            if (
                key is None
                and time.monotonic() - self._loaded_at >= self._config.min_refresh_seconds
            ):
                try:
                    self.replace_keys(await self._load())
                except (OSError, ValueError, jwt.PyJWKError) as error:
                    raise Unavailable(f"cannot load the token verification keys: {error}") from None
                key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"invalid token: unknown signing key {kid!r}")
        return key


def _role_of(claim: Any) -> Role | None:
    """The highest role the claim grants: a list of names, or a space-separated string."""
    names = claim.split() if isinstance(claim, str) else claim if isinstance(claim, list) else []
    roles = [r for r in (Role.parse(str(n)) for n in names) if r is not None]
    return max(roles) if roles else None


def _namespaces_of(claim: Any) -> dict[str, Role] | None:
    """The namespace grants a claim makes: an object {namespace: role} or a list of
    "namespace:role" strings. None when the token has no such claim; names or roles that do
    not parse grant nothing."""
    if claim is None:
        return None
    pairs: list[tuple[Any, Any]] = []
    if isinstance(claim, dict):
        pairs = list(claim.items())
    elif isinstance(claim, list):
        pairs = [(name, role) for name, _, role in (str(i).rpartition(":") for i in claim) if name]
    grants: dict[str, Role] = {}
    for name, role_name in pairs:
        role = _role_of(role_name if isinstance(role_name, list) else str(role_name))
        name = str(name)
        if role is not None and (name == ALL_NAMESPACES or namespace_name_problem(name) is None):
            grants[name] = max(role, grants.get(name, role))
    return grants


def jwks_from_file(path: str) -> JwksLoader:
    async def load() -> dict[str, Any]:
        text = await asyncio.to_thread(Path(path).read_text)
        document: dict[str, Any] = json.loads(text)
        return document

    return load


def jwks_from_url(url: str, timeout: float = 5.0) -> JwksLoader:
    """A JWKS endpoint (e.g. an identity provider's); fetched with PyJWKClient's fetcher."""
    client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=int(max(1, timeout)))

    async def load() -> dict[str, Any]:
        document: dict[str, Any] = await asyncio.to_thread(client.fetch_data)
        return document

    return load
