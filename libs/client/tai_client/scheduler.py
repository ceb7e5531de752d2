"""Typed client of the Scheduler.

The methods return the API's own protobuf messages (`tai.v1.scheduler_pb2`, `common_pb2`); a
failed call raises a `tai_client.errors.TaiError` subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc
from tai.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tai_rpc.channel import ChannelOptions

from tai_client.errors import maps_errors
from tai_client.stream import Stream


class SchedulerClient:
    """Calls the Scheduler over `channel`; each unary call gets the default deadline unless
    `timeout` is given."""

    def __init__(self, channel: grpc.aio.Channel, options: ChannelOptions | None = None) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerStub(channel)
        self._timeout = (options or ChannelOptions()).default_timeout_seconds

    @maps_errors
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
        time_zone: str = "",
        catchup_window_seconds: int = 0,
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
            cron_schedule: five-field cron expression, or six with seconds first, read in
                `time_zone`.
            overlap_policy: what a recurring task does when a run is due while one is running.
            timeout_seconds: deadline of one attempt (0 = 60 s).
            time_zone: recurring tasks: IANA time zone of the cron fields ("" = UTC).
            catchup_window_seconds: recurring tasks: after an outage, the missed occurrences
                at most this old run (0 = the latest missed one only; else 10 s to 366 days).
            timeout: deadline of this call.

        Returns:
            The receipt; `resource_id` is the task id.

        Raises:
            InvalidRequest: a field is invalid (`field_violations` names it).
            AlreadyExists: `task_id` is taken.
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
                time_zone=time_zone,
                catchup_window_seconds=catchup_window_seconds,
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def cancel(
        self, task_id: str, *, reason: str = "", timeout: float | None = None
    ) -> common_pb2.Receipt:
        """Cancels a pending or running task (a recurring one stops, with its pending runs).

        Raises:
            NotFound: no such task.
            FailedPrecondition: the task has finished already.
        """
        return await self._stub.CancelTask(
            scheduler_pb2.CancelTaskRequest(task_id=task_id, reason=reason),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def get(self, task_id: str, *, timeout: float | None = None) -> scheduler_pb2.TaskStatus:
        """One task, with every attempt. Raises `NotFound`."""
        return await self._stub.GetTaskStatus(
            scheduler_pb2.GetTaskStatusRequest(task_id=task_id), timeout=timeout or self._timeout
        )

    @maps_errors
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
        """One page of the matching tasks, newest first; `next_page_token` is empty on the last
        page."""
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
        """Every matching task (newest first), page after page (a failed page raises its
        `TaiError`)."""
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

    def watch(self, task_id: str = "") -> Stream[scheduler_pb2.TaskUpdate]:
        """The StreamTaskUpdates call.

        With a `task_id`: the task's current status, then its updates until it reaches a final
        status, then the stream ends (an unknown task: the first read raises `NotFound`).
        Without: every task's updates from now on.
        """
        return Stream(
            self._stub.StreamTaskUpdates(scheduler_pb2.StreamTaskUpdatesRequest(task_id=task_id))
        )

    @maps_errors
    async def pause(
        self, task_id: str, *, note: str = "", timeout: float | None = None
    ) -> common_pb2.Receipt:
        """Pauses a recurring task: it fires nothing until resumed, and its runs that have not
        started are cancelled (`result_data["cancelled_runs"]`).

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or already paused.
            PermissionDenied: another caller's schedule, and this caller is no admin.
        """
        return await self._stub.PauseSchedule(
            scheduler_pb2.PauseScheduleRequest(task_id=task_id, note=note),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def resume(
        self, task_id: str, *, note: str = "", timeout: float | None = None
    ) -> common_pb2.Receipt:
        """Resumes a paused recurring task from now (what came due while paused is skipped:
        `result_data["skipped_while_paused"]`; "skipped_counting" is "true" when more came than
        one pass counts, and the rest show in the task's `skipped_runs` shortly).

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or not paused.
        """
        return await self._stub.ResumeSchedule(
            scheduler_pb2.ResumeScheduleRequest(task_id=task_id, note=note),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def trigger(self, task_id: str, *, timeout: float | None = None) -> common_pb2.Receipt:
        """Runs one occurrence of a recurring task now, under its overlap policy:
        `result_data["outcome"]` is "started", "waiting" or "skipped", and
        `result_data["run_task_id"]` names the run.

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task, or finished.
        """
        return await self._stub.TriggerSchedule(
            scheduler_pb2.TriggerScheduleRequest(task_id=task_id),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def backfill(
        self,
        task_id: str,
        *,
        start_ns: int,
        end_ns: int,
        overlap_policy: scheduler_pb2.OverlapPolicy.ValueType = (
            scheduler_pb2.OVERLAP_POLICY_UNSPECIFIED
        ),
        timeout: float | None = None,
    ) -> common_pb2.Receipt:
        """Runs the occurrences of a recurring task in [start_ns, end_ns) that have no run
        yet (at most 1000), under `overlap_policy` (unspecified: the schedule's;
        OVERLAP_POLICY_BUFFER_ALL runs every one, one after another). `result_data` counts
        them: occurrences, already_run, started, waiting, skipped.

        Raises:
            InvalidRequest: a bad window (`field_violations` names start_ns or end_ns).
            NotFound: no such task.
            FailedPrecondition: not a recurring task, finished, or a backfill in progress.
        """
        return await self._stub.BackfillSchedule(
            scheduler_pb2.BackfillScheduleRequest(
                task_id=task_id, start_ns=start_ns, end_ns=end_ns, overlap_policy=overlap_policy
            ),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def upcoming(
        self, task_id: str, *, count: int = 0, timeout: float | None = None
    ) -> scheduler_pb2.ListUpcomingRunsResponse:
        """The next `count` (0 = 10, at most 100) fire times of a recurring task, with each
        in the schedule's time zone; for a paused one, where it would fire if resumed now.

        Raises:
            NotFound: no such task.
            FailedPrecondition: not a recurring task.
        """
        return await self._stub.ListUpcomingRuns(
            scheduler_pb2.ListUpcomingRunsRequest(task_id=task_id, count=count),
            timeout=timeout or self._timeout,
        )

    @maps_errors
    async def health(self) -> common_pb2.HealthStatus:
        """The Scheduler's health."""
        return await self._stub.HealthCheck(
            common_pb2.HealthCheckRequest(service_name="scheduler"), timeout=self._timeout
        )
