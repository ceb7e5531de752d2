"""`python -m bench.peers._temporal_worker ADDRESS TASK_QUEUE LEDGER`: a Temporal worker for
`RecordWorkflow`, whose activity records its start into the ledger. It runs as a process of its
own, as TAI's executors run in the Scheduler's process apart from the bench harness: the
harness's 32 submitters and ledger polls do not share this worker's event loop and GIL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from bench.peers._common import record_start
from bench.peers._temporal_workflow import ACTIVITY, RecordWorkflow


class Recorder:
    def __init__(self, ledger_path: str) -> None:
        self._path = ledger_path
        self._worker = f"temporal-worker-{os.getpid()}"

    @activity.defn(name=ACTIVITY)
    async def record(self) -> None:
        info = activity.info()
        task_id = info.workflow_id or info.activity_id  # always the workflow's, here
        await asyncio.to_thread(
            record_start, self._path, task_id, "temporal", info.attempt, self._worker
        )


async def serve(address: str, task_queue: str, ledger_path: str) -> None:
    client = await Client.connect(address)
    # The default sandbox, with this repository's modules passed through (the workflow's module
    # is imported through its package, whose imports are not workflow code).
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "bench", "tai_test_executors"
        )
    )
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[RecordWorkflow],
        activities=[Recorder(ledger_path).record],
        workflow_runner=runner,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        await stop.wait()


def main(argv: list[str]) -> int:
    address, task_queue, ledger_path = argv
    asyncio.run(serve(address, task_queue, ledger_path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
