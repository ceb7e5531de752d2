"""Executors for the Scheduler's tests, registered in the `tai.task_executors` entry-point
group like any plug-in (see this package's pyproject.toml).

Every one records its attempts in the ledger named by the `ledger` parameter (or the
`TAI_TEST_LEDGER` environment variable), and is idempotent by the task's idempotency key: an
attempt of a key already completed returns the recorded result, marked as a replay.

- `test_record`: sleeps `sleep_ms` (default 0), then completes.
- `test_flaky`: fails its first `fail_times` attempts (or every one with `permanent=true`,
  then as a PermanentTaskError), then completes.
- `test_sleep`: sleeps `seconds` (default 1), then completes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping

from tai_scheduler.executors import ExecutorEnvironment, PermanentTaskError, TaskContext

from tai_test_executors import ledger

LEDGER_ENV = "TAI_TEST_LEDGER"


class RecordingExecutor:
    """Records each attempt; what the attempt does before completing is `_work`."""

    def __init__(self, env: ExecutorEnvironment, task_type: str) -> None:
        self._task_type = task_type
        self._worker = env.settings.replica_id

    async def execute(self, ctx: TaskContext) -> Mapping[str, str]:
        path = ctx.parameters.get("ledger") or os.environ.get(LEDGER_ENV, "")
        if not path:
            raise PermanentTaskError(f"no ledger: set parameters[ledger] or {LEDGER_ENV}")
        started = ledger.now_ns()
        recorded = await asyncio.to_thread(ledger.completion_of, path, ctx.idempotency_key)
        if recorded is None:
            try:
                await self._work(ctx)
            except Exception as error:
                await self._record(ctx, path, started, None, outcome=f"failed: {error}")
                raise
            completion: str | None = f"{self._worker}:{ctx.attempt}:{uuid.uuid4().hex[:8]}"
        else:
            completion = None
        final, replay = await self._record(ctx, path, started, completion, outcome="completed")
        return {"completion_id": final or "", "replayed": "true" if replay else "false"}

    async def _record(
        self,
        ctx: TaskContext,
        path: str,
        started: int,
        completion: str | None,
        *,
        outcome: str,
    ) -> tuple[str | None, bool]:
        execution = ledger.Execution(
            key=ctx.idempotency_key,
            task_id=ctx.task_id,
            task_type=self._task_type,
            attempt=ctx.attempt,
            worker=self._worker,
            started_ns=started,
            ended_ns=ledger.now_ns(),
            replay=False,
            outcome=outcome,
        )
        return await asyncio.to_thread(ledger.record, path, execution, completion)

    async def _work(self, ctx: TaskContext) -> None:
        delay_ms = int(ctx.parameters.get("sleep_ms", "0") or 0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)


class FlakyExecutor(RecordingExecutor):
    async def _work(self, ctx: TaskContext) -> None:
        if ctx.parameters.get("permanent") == "true":
            raise PermanentTaskError(f"attempt {ctx.attempt}: refused for good")
        if ctx.attempt <= int(ctx.parameters.get("fail_times", "0") or 0):
            raise RuntimeError(f"attempt {ctx.attempt} failed on purpose")


class SleepExecutor(RecordingExecutor):
    async def _work(self, ctx: TaskContext) -> None:
        await asyncio.sleep(float(ctx.parameters.get("seconds", "1") or 1))


def record(env: ExecutorEnvironment) -> RecordingExecutor:
    return RecordingExecutor(env, "test_record")


def flaky(env: ExecutorEnvironment) -> FlakyExecutor:
    return FlakyExecutor(env, "test_flaky")


def sleep(env: ExecutorEnvironment) -> SleepExecutor:
    return SleepExecutor(env, "test_sleep")
