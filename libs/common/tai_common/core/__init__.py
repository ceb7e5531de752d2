"""What every layer may use and that uses nothing else of TAI: the error hierarchy, injectable
time and ids, the settings, page tokens, the checks on a request's fields (`validation`),
time units (`units`), policy conditions (CEL), the Prometheus metrics the
library exports (`metrics`), and the current trace (`trace_context`)."""

from tai_common.core.clock import (
    Clock,
    IdFactory,
    SystemClock,
    TimeOrderedIds,
    UuidFactory,
    wait_event,
)
from tai_common.core.conditions import (
    MAX_CONDITION_LENGTH,
    MAX_EXPLANATION_LENGTH,
    Bindings,
    Condition,
    Evaluation,
    compile_condition,
    signal_variables,
)
from tai_common.core.config import ServiceSettings
from tai_common.core.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StartupError,
    TaiError,
    Unauthenticated,
    Unavailable,
)
from tai_common.core.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageRequest,
    decode_page_token,
    encode_page_token,
    page_scope,
    page_size,
)
from tai_common.core.trace_context import continued, current_context_carrier, current_ids, tracer

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_CONDITION_LENGTH",
    "MAX_EXPLANATION_LENGTH",
    "MAX_PAGE_SIZE",
    "Aborted",
    "AlreadyExists",
    "Bindings",
    "Clock",
    "Condition",
    "DeadlineExceeded",
    "Evaluation",
    "FailedPrecondition",
    "IdFactory",
    "InvalidArgument",
    "NotFound",
    "PageRequest",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceSettings",
    "StartupError",
    "SystemClock",
    "TaiError",
    "TimeOrderedIds",
    "Unauthenticated",
    "Unavailable",
    "UuidFactory",
    "compile_condition",
    "continued",
    "current_context_carrier",
    "current_ids",
    "decode_page_token",
    "encode_page_token",
    "page_scope",
    "page_size",
    "signal_variables",
    "tracer",
    "wait_event",
]
