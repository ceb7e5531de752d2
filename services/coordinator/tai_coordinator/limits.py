"""Blast-radius limits: the window a policy's action counts in, and how a hold describes it.

Live, the windows are kept by a `WindowLimiter` (the store on the embedded default, Redis when
the suite has one), shared by every replica. A rehearsal (`SimulatePolicy`) keeps its own in
memory (`RehearsalWindows`), so a draft's limits shape its figures as they would live.
"""

from __future__ import annotations

from collections import deque

from tai.v1 import governor_pb2
from tai_common.ports import Admission

from tai_coordinator.policy_book import ActivePolicy


def limit_key(active: ActivePolicy, limit: governor_pb2.ActionLimit) -> str:
    """The window `limit` counts in: the policy's own, or its target's, shared by the policies
    that limit the same target over the same window."""
    if limit.scope == governor_pb2.LIMIT_SCOPE_TARGET:
        return f"target/{active.policy.action.target_service}/{limit.window_seconds}"
    return f"policy/{active.id}/{limit.window_seconds}"


def describe_limit(active: ActivePolicy, limit: governor_pb2.ActionLimit) -> str:
    """What a decision record says held an action back, e.g. "at most 3 per 600 s for api"."""
    if limit.scope == governor_pb2.LIMIT_SCOPE_TARGET:
        whose = f"target {active.policy.action.target_service}"
    else:
        whose = f"policy {active.id}"
    return f"at most {limit.max_actions} per {limit.window_seconds} s for {whose}"


class RehearsalWindows:
    """Sliding windows in memory, for a rehearsal that reads signals in order of receipt."""

    def __init__(self) -> None:
        self._admitted: dict[str, deque[int]] = {}

    def admit(self, key: str, limit: int, window_ns: int, now_ns: int) -> Admission:
        times = self._admitted.setdefault(key, deque())
        while times and times[0] <= now_ns - window_ns:
            times.popleft()
        if len(times) >= limit:
            return Admission(False, len(times), times[0] + window_ns)
        times.append(now_ns)
        return Admission(True, len(times))
