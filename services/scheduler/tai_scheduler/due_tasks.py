"""The queue depth the Scheduler scales on: `tai_scheduler_due_tasks`, the tasks that are due and
that no live lease holds, counted in the store every few seconds.

The claims' own metric (the dispatch lag) is recorded only when a task is claimed, so a backlog
that nobody claims reads as nothing there; this count sees it. Every replica counts the same
store, so they all report the same number (aggregate with max, not sum). The count is the sum
over the active namespaces (each counted inside it): the replicas serve them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import Gauge
from tai_common.core import Aborted, Clock, Unavailable
from tai_common.core.namespace import DEFAULT_NAMESPACE, in_namespace

from tai_scheduler import metrics
from tai_scheduler.repository import TaskRepository

log = logging.getLogger(__name__)


async def _default_only() -> Sequence[str]:
    return [DEFAULT_NAMESPACE]


class DueTasksGauge:
    """Keeps `gauge` at the number of due, unclaimed tasks, counted every `interval_seconds`."""

    def __init__(
        self,
        repo: TaskRepository,
        clock: Clock,
        interval_seconds: float,
        gauge: Gauge = metrics.DUE_TASKS,
        namespaces: Callable[[], Awaitable[Sequence[str]]] = _default_only,
    ) -> None:
        """`namespaces` names the namespaces counted (the active ones)."""
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._repo = repo
        self._clock = clock
        self._interval = interval_seconds
        self._gauge = gauge
        self._failing = False
        self._namespaces = namespaces

    async def refresh(self) -> int:
        """Counts now, in every namespace, and sets the gauge; returns the count."""
        count = 0
        now = self._clock.now_ns()
        for namespace in await self._namespaces():
            with in_namespace(namespace):
                count += await self._repo.count_due(now)
        self._gauge.set(count)
        return count

    async def run(self) -> None:
        """Refreshes the gauge until cancelled. While the store cannot be reached the gauge
        keeps its last count (as `tai_outbox_backlog` does), and the outage is logged once."""
        while True:
            try:
                await self.refresh()
            except (Unavailable, Aborted) as error:
                if not self._failing:
                    log.warning("cannot count the due tasks (%s); retrying", error)
                self._failing = True
            else:
                self._failing = False
            await asyncio.sleep(self._interval)
