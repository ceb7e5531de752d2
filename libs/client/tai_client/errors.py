"""The errors a `tai_client` call raises, grouped by what the caller can do about them.

    TaiError                      every failed call; carries the status and its details
    ├── RequestError              fix the request (or the caller's credentials) first
    │   ├── InvalidRequest        INVALID_ARGUMENT, OUT_OF_RANGE: see `field_violations`
    │   ├── NotFound              NOT_FOUND
    │   ├── AlreadyExists         ALREADY_EXISTS
    │   ├── FailedPrecondition    FAILED_PRECONDITION: the resource's state forbids it
    │   ├── PermissionDenied      PERMISSION_DENIED
    │   └── Unauthenticated       UNAUTHENTICATED
    ├── RetryableError            send it again, after a backoff
    │   ├── Unavailable           UNAVAILABLE
    │   ├── DeadlineExceeded      DEADLINE_EXCEEDED
    │   └── Aborted               ABORTED: read again (or reconnect), then retry
    ├── RateLimited               RESOURCE_EXHAUSTED: wait `retry_after_seconds`, then retry
    └── ServiceError              anything else (INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, …)

Each error keeps the `grpc.aio.AioRpcError` it was made from as `__cause__`, and subclasses
nothing from grpc. The details come from the status's `google.rpc` details (decoded with
grpcio-status) and, for RESOURCE_EXHAUSTED, from the `x-ratelimit-*` trailers TAI's servers set.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class FieldViolation:
    """One field of the request that was refused (from `google.rpc.BadRequest`)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One quota that was exceeded (from `google.rpc.QuotaFailure`)."""

    subject: str
    description: str


@dataclass(frozen=True)
class RateLimit:
    """The caller's budget for the method, from the `x-ratelimit-*` trailers."""

    # Calls the bucket holds when full.
    limit: int
    # Calls left now.
    remaining: int
    # Unix time, in seconds, when the bucket is full again.
    reset_at: float


class TaiError(Exception):
    """A call to a TAI service failed.

    Attributes:
        code: the gRPC status code.
        message: the status message (the server's explanation).
        field_violations: the request fields the server refused, each with why.
        quota_violations: the quotas the call exceeded.
        retry_after_seconds: how long to wait before calling again, when the server said
            (`google.rpc.RetryInfo`, or the rate-limit reset time); else None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        quota_violations: tuple[QuotaViolation, ...] = (),
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        self.quota_violations = quota_violations
        self.retry_after_seconds = retry_after_seconds

    def as_dict(self) -> dict[str, Any]:
        """The error as JSON-ready data (what `taictl --json` prints)."""
        return {
            "type": type(self).__name__,
            "code": self.code.name,
            "message": self.message,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in self.field_violations
            ],
            "quota_violations": [
                {"subject": v.subject, "description": v.description} for v in self.quota_violations
            ],
            "retry_after_seconds": self.retry_after_seconds,
        }


class RequestError(TaiError):
    """The service refused this request: sending it again unchanged fails again."""


class InvalidRequest(RequestError):
    """A field has a value that is never accepted; `field_violations` names each one."""


class NotFound(RequestError):
    """The resource the request names does not exist."""


class AlreadyExists(RequestError):
    """A create named an id that is already taken."""


class FailedPrecondition(RequestError):
    """The resource is not in a state that allows the operation (e.g. enforcing a revoked
    policy, cancelling a finished task)."""


class PermissionDenied(RequestError):
    """The caller is known but may not do this."""


class Unauthenticated(RequestError):
    """The caller could not be identified: no token, or one that is expired or not trusted."""


class RetryableError(TaiError):
    """The call may succeed if sent again after a backoff."""


class Unavailable(RetryableError):
    """The service (or one of its dependencies) cannot be reached right now."""


class DeadlineExceeded(RetryableError):
    """The call did not finish within its deadline."""


class Aborted(RetryableError):
    """A concurrent change won (a stale expected version) or a stream fell behind: read the
    resource again (or reconnect the stream), then retry."""


class RateLimited(TaiError):
    """A rate limit or quota was hit: wait `retry_after_seconds` (when known), then retry.

    gRPC also reports a message over the size limit as RESOURCE_EXHAUSTED; that error has no
    `rate_limit` and no `retry_after_seconds`, and waiting does not help it.

    Attributes:
        rate_limit: the caller's budget from the `x-ratelimit-*` trailers, when sent.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        rate_limit: RateLimit | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        quota_violations: tuple[QuotaViolation, ...] = (),
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(
            code,
            message,
            field_violations=field_violations,
            quota_violations=quota_violations,
            retry_after_seconds=retry_after_seconds,
        )
        self.rate_limit = rate_limit


class ServiceError(TaiError):
    """The service failed in a way neither a changed request nor a retry is known to fix
    (INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, CANCELLED): report it."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[TaiError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
}


def error_class_for(code: grpc.StatusCode) -> type[TaiError]:
    """The class `from_rpc_error` uses for a status code."""
    return _CLASS_BY_CODE.get(code, ServiceError)


def from_rpc_error(
    error: grpc.aio.AioRpcError, *, now: Callable[[], float] = time.time
) -> TaiError:
    """The typed error for a failed call (not raised; raise it `from error`).

    `now` (Unix seconds) turns the `x-ratelimit-reset` time into a wait.
    """
    code = error.code()
    message = error.details() or ""
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    retry_after: float | None = None
    for detail in _status_details(error):
        bad_request = error_details_pb2.BadRequest()
        quota_failure = error_details_pb2.QuotaFailure()
        retry_info = error_details_pb2.RetryInfo()
        if detail.Unpack(bad_request):
            fields.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif detail.Unpack(quota_failure):
            quotas.extend(
                QuotaViolation(v.subject, v.description) for v in quota_failure.violations
            )
        elif detail.Unpack(retry_info):
            retry_after = retry_info.retry_delay.ToTimedelta().total_seconds()
    error_class = error_class_for(code)
    if error_class is RateLimited:
        rate_limit = _rate_limit(error.trailing_metadata())
        if retry_after is None and rate_limit is not None:
            retry_after = max(0.0, rate_limit.reset_at - now())
        return RateLimited(
            code,
            message,
            rate_limit=rate_limit,
            field_violations=tuple(fields),
            quota_violations=tuple(quotas),
            retry_after_seconds=retry_after,
        )
    return error_class(
        code,
        message,
        field_violations=tuple(fields),
        quota_violations=tuple(quotas),
        retry_after_seconds=retry_after,
    )


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Raises the typed error for any `grpc.aio.AioRpcError` raised inside."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error


def maps_errors(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Decorates a client's coroutine method so that a failed call raises a `TaiError`."""

    @functools.wraps(method)
    async def mapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with mapped_errors():
            return await method(*args, **kwargs)

    return mapped


def _status_details(error: grpc.aio.AioRpcError) -> list[Any]:
    try:
        status = rpc_status.from_call(error)
    except (ValueError, DecodeError):
        # Details that do not decode (or do not match the status) are dropped: the code and
        # message still say what happened.
        return []
    return list(status.details) if status is not None else []


def _rate_limit(metadata: Any) -> RateLimit | None:
    headers = {key: value for key, value in (metadata or ()) if key.startswith("x-ratelimit-")}
    try:
        return RateLimit(
            limit=int(headers["x-ratelimit-limit"]),
            remaining=int(headers["x-ratelimit-remaining"]),
            reset_at=float(headers["x-ratelimit-reset"]),
        )
    except (KeyError, ValueError):
        return None
