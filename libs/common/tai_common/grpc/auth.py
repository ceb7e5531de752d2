"""Authentication and authorisation of every call, in the service itself (defence in depth:
the gateway checks tokens too, but a call that reaches a service without one is refused here).

A call is allowed when its method is open (health, reflection), or it comes from a trusted
service over mutual TLS and is one of the internal calls that service makes, or it carries a
valid bearer token whose role is enough for the method (`tai_common.auth.access`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from tai_common.auth import (
    ANONYMOUS,
    Principal,
    is_open,
    required_role,
    service_may_call,
    set_current_principal,
)
from tai_common.core import PermissionDenied, TaiError, Unauthenticated
from tai_common.grpc.interceptors import Context, GuardInterceptor
from tai_common.messaging import set_current_method

if TYPE_CHECKING:
    from tai_common.auth.jwt_verifier import JwtVerifier

log = logging.getLogger(__name__)

# spiffe://<trust domain>/ns/<namespace>/sa/tai-<service>: the identities Istio (and the
# chart's certificates) give the services' service accounts.
_SPIFFE_SERVICE = re.compile(r"^spiffe://[^/]+/ns/[^/]+/sa/tai-(?P<service>[a-z]+)$")

# Called for every refused call: (method, caller name, status code name, reason).
DeniedHook = Callable[[str, str, str, str], Awaitable[None]]


class Authenticator:
    def __init__(
        self,
        verifier: JwtVerifier | None,
        *,
        service_identities: Mapping[str, str] | None = None,
        on_denied: DeniedHook | None = None,
    ) -> None:
        """`verifier` None means authentication is off: every caller is ANONYMOUS (an admin).
        `service_identities` maps certificate URIs to service names, besides the SPIFFE
        naming convention."""
        self._verifier = verifier
        self._identities = dict(service_identities or {})
        self._on_denied = on_denied

    def interceptor(self) -> GuardInterceptor:
        return GuardInterceptor(self.check)

    async def check(self, method: str, context: Context) -> None:
        set_current_method(method)
        if self._verifier is None:
            set_current_principal(ANONYMOUS)
            return
        if is_open(method):
            return
        known: list[str] = []  # the caller's name, once a token or certificate gave it
        try:
            set_current_principal(await self._authorise(method, context, known))
        except (Unauthenticated, PermissionDenied) as error:
            await self._denied(method, known[0] if known else self._peer_hint(context), error)
            raise

    async def _authorise(self, method: str, context: Context, known: list[str]) -> Principal:
        service = self._service_of(context)
        token = _bearer_token(context)
        if service is not None:
            known.append(f"service:{service}")
        if service is not None and not token:
            if service_may_call(service, method):
                return Principal(f"service:{service}", None, kind="service")
            raise PermissionDenied(f"service {service!r} may not call {method} without a token")
        if not token:
            raise Unauthenticated(
                "missing bearer token: send the metadata 'authorization: Bearer <JWT>'"
            )
        assert self._verifier is not None
        principal = await self._verifier.verify(token)
        known[:] = [principal.name]
        needed = required_role(method)
        if not principal.has(needed):
            held = principal.role.name.lower() if principal.role else "no role"
            raise PermissionDenied(
                f"{principal.name} has {held}; {method} needs the {needed.name.lower()} role"
            )
        return principal

    def _service_of(self, context: Context) -> str | None:
        """The service a verified peer certificate names (None without mutual TLS)."""
        auth = context.auth_context()
        if not auth.get("transport_security_type"):
            return None
        names = [
            value.decode(errors="replace")
            for key in ("x509_uri", "x509_subject_alternative_name")
            for value in auth.get(key, [])
        ]
        for name in names:
            if name in self._identities:
                return self._identities[name]
            match = _SPIFFE_SERVICE.match(name)
            if match:
                return match.group("service")
        return None

    async def _denied(self, method: str, caller: str, error: TaiError) -> None:
        if self._on_denied is None:
            return
        code = "UNAUTHENTICATED" if isinstance(error, Unauthenticated) else "PERMISSION_DENIED"
        try:
            await self._on_denied(method, caller, code, error.message)
        except Exception:
            # Auditing a refusal must not turn it into another error for the caller.
            log.exception("could not record a refused call to %s", method)

    @staticmethod
    def _peer_hint(context: Context) -> str:
        """Who an unauthenticated caller is, as far as the connection tells."""
        return f"unauthenticated@{context.peer() or 'unknown'}"


def _bearer_token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""
