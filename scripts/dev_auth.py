"""`make run AUTH=1`: a development token issuer, like Vault's dev mode. Its signing key (ES256)
is made once under .tai/dev-auth/ and reused by later runs; each run writes the JWKS the
services and the gateway verify against, and mints long-lived tokens: one per role for people
(admin, approver, operator, viewer; the admin's holds every namespace, "*", so it can create
namespaces), and one per service for the calls it makes to the others, in every namespace.

For local development only: anyone who can read the key can mint an admin token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tai_common.auth import SERVICE_CALLS, Role, required_role
from tai_rpc import ALL_NAMESPACES

ISSUER = "tai-dev-issuer"
AUDIENCE = "tai"
TOKEN_DAYS = 30
ALGORITHM = "ES256"
# People's tokens, highest role first (the order the banner prints them in).
USER_ROLES = (Role.ADMIN, Role.APPROVER, Role.OPERATOR, Role.VIEWER)


class DevAuthError(Exception):
    """The development issuer cannot be set up (e.g. an unreadable key): one line to print."""


@dataclass(frozen=True)
class DevAuth:
    """What `prepare` made: where the keys are, and the tokens it minted."""

    directory: Path
    jwks_file: Path
    issuer: str
    audience: str
    expires_at: float
    # Role name ("admin", …) -> token, for people.
    user_tokens: dict[str, str]
    # Service name -> file holding its token (TAI_SERVICE_TOKEN_FILE), for services that
    # call others.
    service_token_files: dict[str, Path]


def prepare(directory: Path, services: list[str], now: float | None = None) -> DevAuth:
    """Loads (or makes) the signing key in `directory`, writes its JWKS and mints the tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    key = _signing_key(directory / "signing-key.pem")
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    kid = _thumbprint(public_jwk)
    jwks_file = directory / "jwks.json"
    _write(
        jwks_file,
        json.dumps({"keys": [{**public_jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}]}),
        mode=0o644,
    )
    issued = time.time() if now is None else now
    expires = issued + TOKEN_DAYS * 86_400

    def mint(subject: str, role: Role, *, every_namespace: bool = False) -> str:
        claims: dict[str, Any] = {
            "sub": subject,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(issued),
            "exp": int(expires),
            "roles": [role.name.lower()],
        }
        if every_namespace:
            # The role in every namespace: the platform admin, and the services, whose calls
            # work in whichever namespace they serve.
            claims["tai_namespaces"] = {ALL_NAMESPACES: role.name.lower()}
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})

    user_tokens = {
        role.name.lower(): mint(
            f"dev-{role.name.lower()}", role, every_namespace=role is Role.ADMIN
        )
        for role in USER_ROLES
    }
    for name, token in user_tokens.items():
        _write(directory / f"{name}.jwt", token + "\n")
    service_files: dict[str, Path] = {}
    for service in services:
        role = service_role(service)
        if role is None:
            continue
        path = directory / f"service-{service}.jwt"
        # Named like the identity mutual TLS gives it, so the audit log reads the same.
        _write(path, mint(f"service:{service}", role, every_namespace=True) + "\n")
        service_files[service] = path
    return DevAuth(directory, jwks_file, ISSUER, AUDIENCE, expires, user_tokens, service_files)


def service_role(service: str) -> Role | None:
    """The least role that covers every internal call `service` makes (None: it makes none),
    from the same table that lets those calls through over mutual TLS."""
    calls = SERVICE_CALLS.get(service, frozenset())
    return max((required_role(method) for method in calls), default=None)


def _signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as error:
            raise DevAuthError(
                f"cannot read the development signing key {path} ({error}); delete "
                f"{path.parent} to make a new one (tokens minted before stop working)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DevAuthError(f"{path} is not an EC key; delete {path.parent} to make a new one")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem.decode())
    return key


def _thumbprint(jwk: dict[str, Any]) -> str:
    """The key's RFC 7638 thumbprint (its required members, sorted, no spaces), as its kid:
    the same key keeps the same id across runs."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replaces `path` in one step, readable by its owner only unless `mode` says otherwise
    (a service starting at the same time never reads half a file)."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(partial, mode)
    partial.replace(path)
