"""Typed client of the Scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc
from tai.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tai_rpc.channel import ChannelOptions


class SchedulerClient:
    """Calls the Scheduler over `channel`; each unary call gets the default deadline unless
    `timeout` is given."""

    def __init__(self, channel: grpc.aio.Channel, options: ChannelOptions | None = None) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self._timeout = (options or ChannelOptions()).default_timeout_seconds

    async def submit(
        self,
        *,
        task_type: str,
        parameters: Mapping[str, str] | None = None,
        task_id: str = "",
        scheduled_time_ns: int = 0,
        priority: int = 0,
        retry: scheduler_pb2.RetryConfig | None = None,
        cron_schedule: str = "",
        overlap_policy: scheduler_pb2.OverlapPolicy.ValueType = (
            scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED
        ),
        timeout_seconds: int = 0,
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        """Submits a task (or, with `cron_schedule`, a recurring one).

        Args:
            task_type: selects the executor.
            parameters: the executor's parameters.
            task_id: the task's id (generated when empty; an id already used is refused with
                ALREADY_EXISTS).
            scheduled_time_ns: when to run (0 = now).
            priority: 1–10, higher first among due tasks (0 = 5).
            retry: attempts and backoff (defaults when None).
            cron_schedule: five-field cron expression (UTC), or six with seconds first.
            overlap_policy: what a recurring task does when a run is due while one is running.
            timeout_seconds: deadline of one attempt (0 = 60 s).
            timeout: deadline of this call.

        Returns:
            The receipt; `resource_id` is the task id.
        """
        return await self._stub.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(
                task_id=task_id,
                task_type=task_type,
                parameters=dict(parameters or {}),
                scheduled_time_ns=scheduled_time_ns,
                priority=priority,
                retry=retry,
                cron_schedule=cron_schedule,
                overlap_policy=overlap_policy,
                timeout_seconds=timeout_seconds,
            ),
            timeout=timeout or self._timeout,
        )

    async def cancel(
        self, task_id: str, *, reason: str = "", timeout: float | None = None
    ) -> common_pb2.Receipt:
        return await self._stub.CancelTask(
            scheduler_pb2.CancelTaskRequest(task_id=task_id, reason=reason),
            timeout=timeout or self._timeout,
        )

    async def get(self, task_id: str, *, timeout: float | None = None) -> scheduler_pb2.TaskStatus:
        return await self._stub.GetTaskStatus(
            scheduler_pb2.GetTaskStatusRequest(task_id=task_id), timeout=timeout or self._timeout
        )

    async def list_page(
        self,
        *,
        status: str = "",
        task_type: str = "",
        parent_task_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> scheduler_pb2.ListTasksResponse:
        return await self._stub.ListTasks(
            scheduler_pb2.ListTasksRequest(
                status=status,
                task_type=task_type,
                parent_task_id=parent_task_id,
                page_size=page_size,
                page_token=page_token,
            ),
            timeout=timeout or self._timeout,
        )

    async def list_all(
        self, *, status: str = "", task_type: str = "", parent_task_id: str = ""
    ) -> AsyncIterator[scheduler_pb2.TaskStatus]:
        """Every matching task (newest first), page after page."""
        token = ""
        while True:
            page = await self.list_page(
                status=status, task_type=task_type, parent_task_id=parent_task_id, page_token=token
            )
            for task in page.tasks:
                yield task
            token = page.next_page_token
            if not token:
                return

    def watch(
        self, task_id: str = ""
    ) -> grpc.aio.UnaryStreamCall[scheduler_pb2.StreamTaskUpdatesRequest, scheduler_pb2.TaskUpdate]:
        """The StreamTaskUpdates call (iterate it; `cancel()` it to stop). No deadline.

        With a `task_id`: the task's current status, then its updates until it reaches a final
        status, then the stream ends. Without: every task's updates from now on.
        """
        return self._stub.StreamTaskUpdates(scheduler_pb2.StreamTaskUpdatesRequest(task_id=task_id))

    async def health(self) -> common_pb2.HealthStatus:
        return await self._stub.HealthCheck(
            common_pb2.HealthCheckRequest(service_name="scheduler"), timeout=self._timeout
        )
