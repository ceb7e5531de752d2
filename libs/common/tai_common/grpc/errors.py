"""One interceptor that turns TAI's errors into gRPC statuses.

Handlers raise `tai_common.core.errors` exceptions and never call `context.abort` themselves;
this is the only place that knows the mapping. Anything else that escapes a handler is a bug: it is
logged with its traceback and reported as INTERNAL without leaking details.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, NoReturn, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tai_common.core import errors
from tai_common.grpc.interceptors import BehaviorInterceptor, Context, StreamBehavior, UnaryBehavior

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.TaiError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_code_for(error: errors.TaiError) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def to_grpc_status(error: errors.TaiError) -> grpc.Status:
    """The status for `error`, with google.rpc details where they help a client fix the call
    (BadRequest naming the field for INVALID_ARGUMENT)."""
    code = status_code_for(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if isinstance(error, errors.InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.reason
                    )
                ]
            )
        )
        status.details.append(detail)
    return cast(grpc.Status, rpc_status.to_status(status))


async def abort_for(error: BaseException, context: Context) -> NoReturn:
    """Ends the call with the status for `error`: its mapped status for a TAI error, the
    status the handler set on the context before raising, else INTERNAL with an incident id
    (the error and its traceback are logged under that id)."""
    if isinstance(error, errors.TaiError):
        status = to_grpc_status(error)
        # Keep trailers set earlier in the call (e.g. the rate-limit headers).
        trailers = (*(context.trailing_metadata() or ()), *status.trailing_metadata)
        await context.abort(status.code, status.details, trailers)
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        # As grpc does: e.g. the UNIMPLEMENTED of a generated base servicer's method (the
        # stock health servicer's List), which sets it and raises NotImplementedError.
        await context.abort(code, str(context.details() or ""))
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error in a handler (incident %s)", incident, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises this to unwind the handler; it must pass through untouched.
    return isinstance(error, grpc.aio.AbortError)


class ErrorMappingInterceptor(BehaviorInterceptor):
    """Maps exceptions escaping the handlers (and the interceptors inside this one) to gRPC
    statuses."""

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def mapped(request: Any, context: Context) -> Any:
            try:
                return await behavior(request, context)
            except Exception as error:
                if _is_abort(error):
                    raise
                await abort_for(error, context)

        return mapped

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as error:
                if _is_abort(error):
                    raise
                await abort_for(error, context)

        return mapped
