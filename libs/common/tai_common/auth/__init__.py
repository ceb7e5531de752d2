"""Who is calling and what they may do: principals, roles, the method-to-role table, and JWT
verification (`tai_common.auth.jwt_verifier`, imported by who verifies tokens: it loads PyJWT
and cryptography, 9 MiB a process without authentication does without). The gRPC interceptor
that enforces it is `tai_common.grpc.auth`."""

from tai_common.auth.access import (
    INSTALLATION_METHODS,
    METHOD_ROLES,
    OPEN_METHODS,
    OPEN_PREFIXES,
    SERVICE_CALLS,
    installation_role,
    is_installation_method,
    is_open,
    required_role,
    service_may_call,
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
    "INSTALLATION_METHODS",
    "METHOD_ROLES",
    "OPEN_METHODS",
    "OPEN_PREFIXES",
    "SERVICE_CALLS",
    "Principal",
    "Role",
    "current_principal",
    "installation_role",
    "is_installation_method",
    "is_open",
    "required_role",
    "service_may_call",
    "set_current_principal",
]
