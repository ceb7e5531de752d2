"""The Temporal workflow the peer benchmark starts: one activity, which records its start (the
activity lives in `_temporal_worker`, outside the workflow sandbox, and is called by name)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

WORKFLOW = "PeerRecord"
ACTIVITY = "peer_record"


@workflow.defn(name=WORKFLOW)
class RecordWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(ACTIVITY, start_to_close_timeout=timedelta(seconds=60))
