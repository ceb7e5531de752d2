"""What a handler learns about its caller from the call context."""

from __future__ import annotations

from typing import Any

import grpc

from tai_common.auth import Principal, current_principal


def principal_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The name of the caller the auth interceptor established (recorded as created_by /
    last_modified_by); "anonymous" when authentication is off."""
    return current_principal().name


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
    """The caller, with its role."""
    return current_principal()
