"""The Scheduler's gRPC API: translates requests to the domain and results to protobuf, and
nothing else. Errors are raised as tai_common.core.errors and mapped to statuses by the
interceptor."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from tai.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from tai_common.core import IdFactory
from tai_common.grpc import caller_of, principal_of, receipt
from tai_common.runtime import ServiceRuntime

from tai_scheduler.convert import (
    optional_overlap_from_proto,
    submission_from_request,
    task_to_proto,
)
from tai_scheduler.service import ScheduleChange, TaskService, TaskUpdate
from tai_scheduler.task import Task

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


def _receipt(
    task: Task, ids: IdFactory, started: float, extra: Mapping[str, str] | None = None
) -> common_pb2.Receipt:
    shown = task_to_proto(task)
    return receipt(
        ids.new_id("rcpt"),
        started=started,
        timestamp_ns=task.updated_at_ns,
        result_data={
            "task_id": task.id,
            "status": task.status.value,
            "next_run_ns": str(shown.next_run_ns),
            **(extra or {}),
        },
        resource_id=task.id,
        resource_version=task.version,
    )


def _update_to_proto(update: TaskUpdate) -> scheduler_pb2.TaskUpdate:
    return scheduler_pb2.TaskUpdate(
        task_id=update.task_id,
        status=update.status.value,
        timestamp_ns=update.timestamp_ns,
        message=update.message,
        attempt=update.attempt,
        task_type=update.task_type,
    )


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, service: TaskService, runtime: ServiceRuntime) -> None:
        self._service = service
        self._runtime = runtime
        self._ids = runtime.deps.ids

    async def SubmitTask(
        self, request: scheduler_pb2.SubmitTaskRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        task = await self._service.submit(
            submission_from_request(request), principal=principal_of(context)
        )
        return _receipt(task, self._ids, started)

    async def CancelTask(
        self, request: scheduler_pb2.CancelTaskRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        task = await self._service.cancel(request.task_id, request.reason, caller_of(context))
        return _receipt(task, self._ids, started)

    async def GetTaskStatus(
        self, request: scheduler_pb2.GetTaskStatusRequest, context: Context
    ) -> scheduler_pb2.TaskStatus:
        return task_to_proto(await self._service.get(request.task_id))

    async def StreamTaskUpdates(
        self, request: scheduler_pb2.StreamTaskUpdatesRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.TaskUpdate]:
        async for update in self._service.stream(request.task_id):
            yield _update_to_proto(update)

    async def ListTasks(
        self, request: scheduler_pb2.ListTasksRequest, context: Context
    ) -> scheduler_pb2.ListTasksResponse:
        tasks, token = await self._service.list_tasks(
            status=request.status,
            task_type=request.task_type,
            parent_task_id=request.parent_task_id,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return scheduler_pb2.ListTasksResponse(
            tasks=[task_to_proto(t) for t in tasks], next_page_token=token
        )

    async def PauseSchedule(
        self, request: scheduler_pb2.PauseScheduleRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        change = await self._service.pause(request.task_id, request.note, caller_of(context))
        return self._change_receipt(change, started)

    async def ResumeSchedule(
        self, request: scheduler_pb2.ResumeScheduleRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        change = await self._service.resume(request.task_id, request.note, caller_of(context))
        return self._change_receipt(change, started)

    async def TriggerSchedule(
        self, request: scheduler_pb2.TriggerScheduleRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        change = await self._service.trigger(request.task_id, caller_of(context))
        return self._change_receipt(change, started)

    async def BackfillSchedule(
        self, request: scheduler_pb2.BackfillScheduleRequest, context: Context
    ) -> common_pb2.Receipt:
        started = time.perf_counter()
        change = await self._service.backfill(
            request.task_id,
            request.start_ns,
            request.end_ns,
            optional_overlap_from_proto(request.overlap_policy),
            caller_of(context),
        )
        return self._change_receipt(change, started)

    async def ListUpcomingRuns(
        self, request: scheduler_pb2.ListUpcomingRunsRequest, context: Context
    ) -> scheduler_pb2.ListUpcomingRunsResponse:
        upcoming = await self._service.upcoming(request.task_id, request.count)
        return scheduler_pb2.ListUpcomingRunsResponse(
            runs=[
                scheduler_pb2.UpcomingRun(
                    scheduled_time_ns=run.scheduled_time_ns,
                    local_time=run.local_time,
                    run_task_id=run.run_task_id,
                )
                for run in upcoming.runs
            ],
            time_zone=upcoming.time_zone,
            paused=upcoming.paused,
        )

    def _change_receipt(self, change: ScheduleChange, started: float) -> common_pb2.Receipt:
        return _receipt(change.task, self._ids, started, change.result)

    async def HealthCheck(
        self, request: common_pb2.HealthCheckRequest, context: Context
    ) -> common_pb2.HealthStatus:
        return self._runtime.health_status(SERVICE_NAME)
