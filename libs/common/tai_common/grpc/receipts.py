"""The `Receipt` every write returns: the fields every service fills the same way."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from tai.v1 import common_pb2


def receipt(
    receipt_id: str,
    *,
    started: float,
    timestamp_ns: int,
    result_data: Mapping[str, str],
    resource_id: str,
    resource_version: int,
    request_id: str = "",
    replayed: bool = False,
    matched_policy_ids: Sequence[str] = (),
    action_ids: Sequence[str] = (),
) -> common_pb2.Receipt:
    """A successful write's receipt; `started` is the handler's `time.perf_counter()` at the
    start of the call, from which the execution time is measured."""
    return common_pb2.Receipt(
        id=receipt_id,
        request_id=request_id,
        status="success",
        timestamp_ns=timestamp_ns,
        result_data=result_data,
        execution_time_us=int((time.perf_counter() - started) * 1_000_000),
        resource_id=resource_id,
        resource_version=resource_version,
        replayed=replayed,
        matched_policy_ids=list(matched_policy_ids),
        action_ids=list(action_ids),
    )
