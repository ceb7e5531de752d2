"""The error hierarchy of TAI.

Domain code and adapters raise these; one gRPC interceptor (`tai_common.grpc.errors`) maps
each class to its status code. A caller's mistake is never reported as UNKNOWN or INTERNAL.
"""

from __future__ import annotations


class TaiError(Exception):
    """Root of every error TAI raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TaiError):
    """A request field has a value that can never be accepted. `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class NotFound(TaiError):
    """The resource a request names does not exist."""

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} not found")
        self.kind = kind
        self.resource_id = resource_id


class AlreadyExists(TaiError):
    """A create named an id that is already taken."""

    def __init__(self, kind: str, resource_id: str, message: str | None = None) -> None:
        super().__init__(message or f"{kind} {resource_id!r} already exists")
        self.kind = kind
        self.resource_id = resource_id


class FailedPrecondition(TaiError):
    """The resource is not in a state that allows the operation."""


class Aborted(TaiError):
    """A concurrent change won: the caller's expected version is stale. Re-read and retry."""


class PermissionDenied(TaiError):
    """The caller is known but may not do this."""


class Unauthenticated(TaiError):
    """The caller could not be identified."""


class ResourceExhausted(TaiError):
    """A limit (rate, size, quota) was hit."""


class Unavailable(TaiError):
    """A dependency (store, bus, another service) cannot be reached right now; retry later."""


class DeadlineExceeded(TaiError):
    """The operation did not finish in time."""


class StartupError(Exception):
    """Something the operator must fix before a service can start (a missing Pub/Sub topic, a
    setting that cannot work). The entry point prints its message, one line naming the thing
    and the remedy, and exits with status 2 instead of a traceback."""
