"""The gRPC layer every service runs: the server (health, reflection, graceful stop), the
interceptor pattern, error mapping, request parsing, authentication and rate limits, and the
security settings (TLS, authenticator). Used by module where names are generic:
`from tai_common.grpc import security`."""

from tai_common.grpc.auth import Authenticator, DeniedHook
from tai_common.grpc.context import caller_of, principal_of
from tai_common.grpc.errors import (
    ErrorMappingInterceptor,
    abort_for,
    status_code_for,
    to_grpc_status,
)
from tai_common.grpc.interceptors import (
    BehaviorInterceptor,
    Context,
    Continuation,
    GuardInterceptor,
    StreamBehavior,
    UnaryBehavior,
)
from tai_common.grpc.parsing import RequestParsingInterceptor
from tai_common.grpc.rate_limit import RateLimits
from tai_common.grpc.receipts import receipt
from tai_common.grpc.security import SecurityConfigError
from tai_common.grpc.server import GrpcServer, Registrar
from tai_common.grpc.streams import as_generator

__all__ = [
    "Authenticator",
    "BehaviorInterceptor",
    "Context",
    "Continuation",
    "DeniedHook",
    "ErrorMappingInterceptor",
    "GrpcServer",
    "GuardInterceptor",
    "RateLimits",
    "Registrar",
    "RequestParsingInterceptor",
    "SecurityConfigError",
    "StreamBehavior",
    "UnaryBehavior",
    "abort_for",
    "as_generator",
    "caller_of",
    "principal_of",
    "receipt",
    "status_code_for",
    "to_grpc_status",
]
