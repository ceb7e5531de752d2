"""Checks of the errors a call ends with: its status code and the fields its BadRequest names."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tai_client.errors import TaiError, error_class_for


async def expect_error(awaitable: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns its gRPC error.

    A `tai_client` call must raise the typed error for `code` (`tai_client.errors`), made from
    the gRPC error (its `__cause__`); a raw stub's call raises the gRPC error itself.
    """
    with pytest.raises((grpc.aio.AioRpcError, TaiError)) as caught:
        await awaitable
    error = caught.value
    if isinstance(error, TaiError):
        assert type(error) is error_class_for(code), repr(error)
        assert error.code == code, error.message
        assert isinstance(error.__cause__, grpc.aio.AioRpcError)
        error = error.__cause__
    assert error.code() == code, error.details()
    return error


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the error's `google.rpc.BadRequest` details."""
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else []:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
    return fields
