"""Security wiring from settings: the auth and rate-limit interceptors a service's server
runs, its TLS credentials, and the TLS files and token of its own calls to the other services.
The rate limiter itself is chosen by `tai_common.factory`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from tai_rpc.channel import TlsFiles

from tai_common.core import ServiceSettings, StartupError
from tai_common.grpc.auth import Authenticator, DeniedHook
from tai_common.grpc.rate_limit import RateLimits
from tai_common.ports import RateLimiter, SecretSource

if TYPE_CHECKING:
    from tai_common.auth.jwt_verifier import JwksLoader
    from tai_common.namespacing import NamespaceDirectory

log = logging.getLogger(__name__)


class SecurityConfigError(StartupError, ValueError):
    """The settings ask for something that cannot work (e.g. auth on without keys): the
    service stops at start with this message."""


def tls_enabled(settings: ServiceSettings) -> bool:
    configured = [bool(settings.tls_cert), bool(settings.tls_key), bool(settings.tls_ca)]
    if any(configured) and not all(configured):
        raise SecurityConfigError("TAI_TLS_CERT, TAI_TLS_KEY and TAI_TLS_CA go together")
    return all(configured)


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """Mutual TLS: our certificate, and client certificates required, signed by our CA."""
    if not tls_enabled(settings):
        return None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=Path(settings.tls_ca).read_bytes(),
        require_client_auth=True,
    )


def tls_files(settings: ServiceSettings) -> TlsFiles | None:
    """The files of this service's mutual TLS for its calls to the others, when configured."""
    if not tls_enabled(settings):
        return None
    return TlsFiles(settings.tls_ca, settings.tls_cert, settings.tls_key)


def service_token(settings: ServiceSettings) -> str:
    """The token this service presents on its calls to the others ("" for none)."""
    if settings.service_token_file:
        try:
            return Path(settings.service_token_file).read_text().strip()
        except OSError as error:
            raise SecurityConfigError(
                f"TAI_SERVICE_TOKEN_FILE: cannot read {settings.service_token_file!r}: "
                f"{error.strerror or error}"
            ) from None
    return settings.service_token.get_secret_value()


def authenticator(
    settings: ServiceSettings,
    on_denied: DeniedHook | None,
    jwks_loader: JwksLoader | None = None,
    namespaces: NamespaceDirectory | None = None,
) -> Authenticator:
    """The authenticator the settings describe. With TAI_AUTH=off it lets everything through,
    and says so loudly."""
    if settings.auth == "off":
        log.warning(
            "AUTHENTICATION IS OFF (TAI_AUTH=off): every caller is an anonymous admin. "
            "This is for local development and tests only; never run production like this."
        )
        return Authenticator(None, namespaces=namespaces)
    # Only here: PyJWT and cryptography are loaded by a process that verifies tokens.
    from tai_common.auth.jwt_verifier import JwtVerifier, VerifierConfig

    loader = jwks_loader or _jwks_loader(settings)
    verifier = JwtVerifier(
        VerifierConfig(
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            algorithms=tuple(settings.jwt_algorithms),
            roles_claim=settings.jwt_roles_claim,
            namespaces_claim=settings.jwt_namespaces_claim,
            leeway_seconds=settings.jwt_leeway_seconds,
            min_refresh_seconds=settings.jwt_min_refresh_seconds,
            max_key_age_seconds=settings.jwt_max_key_age_seconds,
        ),
        loader,
    )
    return Authenticator(
        verifier,
        service_identities=_identities(settings),
        on_denied=on_denied,
        namespaces=namespaces,
    )


def jwks_from_secret(source: SecretSource, name: str, key: str = "jwks") -> JwksLoader:
    """The JWKS kept in a secret (e.g. in Vault): read afresh at each (re)load, so a rotated
    key set is picked up without a restart."""

    async def load() -> dict[str, Any]:
        document: dict[str, Any] = json.loads((await source.get(name)).reveal(key))
        return document

    return load


def _jwks_loader(settings: ServiceSettings) -> JwksLoader:
    from tai_common.auth.jwt_verifier import jwks_from_file, jwks_from_url

    if settings.jwt_jwks_url:
        return jwks_from_url(settings.jwt_jwks_url)
    if settings.jwt_jwks_file:
        return jwks_from_file(settings.jwt_jwks_file)
    raise SecurityConfigError(
        "TAI_AUTH=jwt needs the token verification keys: set TAI_JWT_JWKS_URL, "
        "TAI_JWT_JWKS_FILE or TAI_JWT_JWKS_SECRET (or TAI_AUTH=off for local development)"
    )


def _identities(settings: ServiceSettings) -> dict[str, str]:
    return dict(settings.tls_service_identities)


def rate_limits(
    settings: ServiceSettings,
    limiter: RateLimiter,
    namespaces: NamespaceDirectory | None = None,
) -> RateLimits:
    """The rate limits the settings set (per namespace, caller and method, with per-method
    overrides) and the namespaces' own, enforced by `limiter`
    (`tai_common.factory.open_rate_limiter`)."""
    return RateLimits(
        limiter,
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        settings.rate_limits,
        namespaces,
    )
