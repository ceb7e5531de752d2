"""Idempotent retries by request id: the first call's outcome is recorded in the same
transaction as its change; a retry with the same id returns that outcome and writes nothing.

A request id reused for a *different* request is refused, so a client bug cannot silently
return the wrong receipt.
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from tai_common.core import InvalidArgument
from tai_common.core.units import seconds_to_ns
from tai_common.ports import Data, IndexSpec, Transaction

IDEMPOTENCY = "idempotency"
# Records are kept this long (a Firestore TTL policy on `expires_at_ns` removes them).
RETENTION_NS = seconds_to_ns(24 * 3600)
MAX_REQUEST_ID_LENGTH = 128

INDEXES = (IndexSpec(IDEMPOTENCY, ("expires_at_ns",)),)


def request_fingerprint(request: ProtoMessage, id_field: str = "request_id") -> str:
    """A digest of `request` without its request id, to tell a retry from a different request
    that reuses the id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(id_field)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters")


def _key(scope: str, request_id: str) -> str:
    return hashlib.sha256(f"{scope}\x00{request_id}".encode()).hexdigest()


async def recall(tx: Transaction, scope: str, request_id: str, fingerprint: str) -> Data | None:
    """The outcome recorded for (`scope`, `request_id`), or None for a new request."""
    record = await tx.get(IDEMPOTENCY, _key(scope, request_id))
    if record is None:
        return None
    if record.data.get("fingerprint") != fingerprint:
        raise InvalidArgument(
            "request_id",
            f"{request_id!r} was already used for a different {scope} request; "
            "use a new request id for a new request",
        )
    outcome: Data = record.data["outcome"]
    return outcome


def remember(
    tx: Transaction,
    scope: str,
    request_id: str,
    fingerprint: str,
    outcome: dict[str, Any],
    now_ns: int,
) -> None:
    """Records `outcome` for (`scope`, `request_id`) as part of `tx`."""
    tx.set(
        IDEMPOTENCY,
        _key(scope, request_id),
        {
            "scope": scope,
            "request_id": request_id,
            "fingerprint": fingerprint,
            "outcome": outcome,
            "expires_at_ns": now_ns + RETENTION_NS,
        },
    )
