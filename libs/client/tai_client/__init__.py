"""Typed Python client for the TAI services (`GovernorClient`, …) and the `taictl` CLI.

The clients return the API's protobuf messages; a failed call raises a `TaiError` subclass
grouped by what the caller can do (`RequestError`: fix the request; `RetryableError`: retry;
`RateLimited`: wait, then retry; `ServiceError`: report it) -- see `tai_client.errors`.

`open_channel`, `ChannelOptions` and `TlsFiles` come from `tai_rpc`, the transport both the
SDK and the services use; they are re-exported here so an SDK user needs one import.
"""

from tai_rpc import ChannelOptions, TlsFiles, open_channel

from tai_client.coordinator import CoordinatorClient
from tai_client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    RateLimit,
    RateLimited,
    RequestError,
    RetryableError,
    ServiceError,
    TaiError,
    Unauthenticated,
    Unavailable,
)
from tai_client.governor import GovernorClient
from tai_client.scheduler import SchedulerClient
from tai_client.stream import Stream

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ChannelOptions",
    "CoordinatorClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "GovernorClient",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "QuotaViolation",
    "RateLimit",
    "RateLimited",
    "RequestError",
    "RetryableError",
    "SchedulerClient",
    "ServiceError",
    "Stream",
    "TaiError",
    "TlsFiles",
    "Unauthenticated",
    "Unavailable",
    "open_channel",
]
