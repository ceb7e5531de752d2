"""Who is calling and what they may do: principals, roles, the method-to-role table, and JWT
verification. The gRPC interceptor that enforces it is `tai_common.grpc.auth`."""

from tai_common.auth.access import (
    METHOD_ROLES,
    OPEN_METHODS,
    OPEN_PREFIXES,
    SERVICE_CALLS,
    is_open,
    required_role,
    service_may_call,
)
from tai_common.auth.jwt_verifier import (
    JwksLoader,
    JwtVerifier,
    VerifierConfig,
    jwks_from_file,
    jwks_from_url,
)
from tai_common.auth.principal import (
    ANONYMOUS,
    Principal,
    Role,
    current_principal,
    set_current_principal,
)

__all__ = [
    "ANONYMOUS",
    "METHOD_ROLES",
    "OPEN_METHODS",
    "OPEN_PREFIXES",
    "SERVICE_CALLS",
    "JwksLoader",
    "JwtVerifier",
    "Principal",
    "Role",
    "VerifierConfig",
    "current_principal",
    "is_open",
    "jwks_from_file",
    "jwks_from_url",
    "required_role",
    "service_may_call",
    "set_current_principal",
]
