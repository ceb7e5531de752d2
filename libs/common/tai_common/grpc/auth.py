"""Authentication and authorisation of every call, in the service itself (defence in depth:
the gateway checks tokens too, but a call that reaches a service without one is refused here).

A call is allowed when its method is open (health, reflection), or it comes from a trusted
service over mutual TLS and is one of the internal calls that service makes (in any namespace),
or it carries a valid bearer token whose role in the call's namespace is enough for the method
(`tai_common.auth.access`). The call then works in that namespace (the metadata
`x-tai-namespace`, "default" when absent), which must exist and not be being deleted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from tai_common.auth import (
    ANONYMOUS,
    Principal,
    installation_role,
    is_installation_method,
    is_open,
    required_role,
    service_may_call,
    set_current_principal,
)
from tai_common.core import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TaiError,
    Unauthenticated,
)
from tai_common.core.namespace import (
    ALL_NAMESPACES,
    DEFAULT_NAMESPACE,
    NAMESPACE_METADATA,
    in_namespace,
    namespace_name_problem,
    set_current_namespace,
)
from tai_common.grpc.interceptors import Context, GuardInterceptor
from tai_common.messaging import set_current_method

if TYPE_CHECKING:
    from tai_common.auth.jwt_verifier import JwtVerifier
    from tai_common.namespacing import NamespaceDirectory

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
        namespaces: NamespaceDirectory | None = None,
    ) -> None:
        """`verifier` None means authentication is off: every caller is ANONYMOUS (an admin).
        `service_identities` maps certificate URIs to service names, besides the SPIFFE
        naming convention. `namespaces` None: every call works in "default" (the benchmark's
        bare stack)."""
        self._verifier = verifier
        self._identities = dict(service_identities or {})
        self._on_denied = on_denied
        self._namespaces = namespaces

    def interceptor(self) -> GuardInterceptor:
        return GuardInterceptor(self.check)

    async def check(self, method: str, context: Context) -> None:
        """Establishes who calls and in which namespace, or refuses the call."""
        set_current_method(method)
        named = _named_namespace(context)
        # Until the namespace is known to be valid, the call (and a refusal's audit) is the
        # default namespace's.
        set_current_namespace(DEFAULT_NAMESPACE)
        if is_open(method):
            return
        known: list[str] = []  # the caller's name, once a token or certificate gave it
        try:
            principal = (
                ANONYMOUS
                if self._verifier is None
                else await self._authorise(method, context, known)
            )
            set_current_principal(principal)
            if is_installation_method(method):
                needed = installation_role(method)
                if needed is not None and not principal.has(needed, ALL_NAMESPACES):
                    raise PermissionDenied(
                        f"{principal.name} is not a platform admin: {method} needs the admin "
                        f"role in every namespace ('{ALL_NAMESPACES}')"
                    )
                if not principal.held_namespaces():
                    raise PermissionDenied(f"{principal.name} has no role in any namespace")
                return
            await self._enter_namespace(method, principal, named)
        except (Unauthenticated, PermissionDenied) as error:
            caller = known[0] if known else self._peer_hint(context)
            await self._denied(method, caller, error, named)
            raise

    async def _enter_namespace(self, method: str, principal: Principal, named: str) -> None:
        """Checks the caller may work in the namespace the call names, and that it is open;
        then makes it the call's."""
        problem = None if named == DEFAULT_NAMESPACE else namespace_name_problem(named)
        if problem is not None:
            raise InvalidArgument(NAMESPACE_METADATA, problem)
        if principal.kind == "user":
            held = principal.role_in(named)
            needed = required_role(method)
            if held is None:
                raise PermissionDenied(
                    f"{principal.name} has no role in namespace {named!r} "
                    f"(metadata {NAMESPACE_METADATA})"
                )
            if held < needed:
                raise PermissionDenied(
                    f"{principal.name} has {held.name.lower()} in namespace {named!r}; "
                    f"{method} needs the {needed.name.lower()} role"
                )
        if self._namespaces is not None and named != DEFAULT_NAMESPACE:
            record = await self._namespaces.get(named)
            if record is None:
                raise NotFound("namespace", named)
            if not record.active:
                raise FailedPrecondition(f"namespace {named!r} is being deleted")
        set_current_namespace(named)

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

    async def _denied(self, method: str, caller: str, error: TaiError, named: str) -> None:
        if self._on_denied is None:
            return
        code = "UNAUTHENTICATED" if isinstance(error, Unauthenticated) else "PERMISSION_DENIED"
        # Recorded in the trail of the namespace the call named, when there is one: its admins
        # are the ones to know who knocked.
        namespace = DEFAULT_NAMESPACE
        if namespace_name_problem(named) is None and self._namespaces is not None:
            record = await self._namespaces.get(named)
            if record is not None:
                namespace = named
        try:
            with in_namespace(namespace):
                await self._on_denied(method, caller, code, error.message)
        except Exception:
            # Auditing a refusal must not turn it into another error for the caller.
            log.exception("could not record a refused call to %s", method)

    @staticmethod
    def _peer_hint(context: Context) -> str:
        """Who an unauthenticated caller is, as far as the connection tells."""
        return f"unauthenticated@{context.peer() or 'unknown'}"


def _named_namespace(context: Context) -> str:
    """The namespace the call's metadata names ("default" when none)."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_METADATA and isinstance(value, str):
            return value.strip() or DEFAULT_NAMESPACE
    return DEFAULT_NAMESPACE


def _bearer_token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""
