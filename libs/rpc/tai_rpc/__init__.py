"""How a TAI process calls a TAI service: channels with TAI's deadlines, retry policy, TLS and
bearer token (`open_channel`, `ChannelOptions`, `TlsFiles`), and circuit breakers per target
(`CircuitBreaker`, `CircuitBreakers`).

It sits below both the client SDK (`tai_client`) and the services' shared library
(`tai_common`), so neither depends on the other for it.
"""

from tai_rpc.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpenError,
    is_target_failure,
)
from tai_rpc.channel import ChannelOptions, TlsFiles, open_channel
from tai_rpc.namespaces import (
    ALL_NAMESPACES,
    DEFAULT_NAMESPACE,
    NAMESPACE_METADATA,
    namespace_name_problem,
)

__all__ = [
    "ALL_NAMESPACES",
    "DEFAULT_NAMESPACE",
    "NAMESPACE_METADATA",
    "BreakerConfig",
    "BreakerState",
    "ChannelOptions",
    "CircuitBreaker",
    "CircuitBreakers",
    "CircuitOpenError",
    "TlsFiles",
    "is_target_failure",
    "namespace_name_problem",
    "open_channel",
]
