"""Traces across the services and the bus: the spans the three service processes export over
OTLP (to a test receiver) share one trace id for one piece of work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from support.otlp_receiver import OtlpReceiver, ReceivedSpan
from support.processes import ServiceProcess, free_port
from tai.v1 import governor_pb2, governor_pb2_grpc
from tai_client import CoordinatorClient, GovernorClient, SchedulerClient, open_channel

pytestmark = pytest.mark.slow

MakeProcess = Callable[..., ServiceProcess]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = await OtlpReceiver().start()
    yield server
    await server.stop()


async def traced_governor(
    service_processes: MakeProcess, sqlite_url: str, receiver: OtlpReceiver, **env: str
) -> ServiceProcess:
    """A Governor on the embedded default that exports its spans to `receiver`."""
    return await service_processes(
        "tai_governor",
        TAI_STORE=sqlite_url,
        TAI_BUS=sqlite_url,
        TAI_OTLP_ENDPOINT=receiver.endpoint,
        **env,
    ).start()


async def test_one_trace_runs_through_scheduler_governor_bus_and_coordinator(
    service_processes: MakeProcess, sqlite_url: str, receiver: OtlpReceiver
) -> None:
    governor_port, coordinator_port = free_port(), free_port()
    env = {
        "TAI_STORE": sqlite_url,
        "TAI_BUS": sqlite_url,
        "TAI_OTLP_ENDPOINT": receiver.endpoint,
        "TAI_TRACE_SAMPLE_RATIO": "1.0",
        "TAI_GOVERNOR_TARGET": f"127.0.0.1:{governor_port}",
        "TAI_COORDINATOR_TARGET": f"127.0.0.1:{coordinator_port}",
    }
    governor = await service_processes(
        "tai_governor", TAI_GRPC_PORT=str(governor_port), **env
    ).start()
    coordinator = await service_processes(
        "tai_coordinator", TAI_GRPC_PORT=str(coordinator_port), **env
    ).start()
    scheduler = await service_processes("tai_scheduler", **env).start()

    async with (
        open_channel(governor.target) as g,
        open_channel(coordinator.target) as c,
        open_channel(scheduler.target) as s,
    ):
        policy = await GovernorClient(g).propose(
            policy_type="operational",
            name="page-on-alert",
            condition='signal.type == "alert"',
            action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
        )
        # Scheduler → executor call → Governor → bus → Coordinator, in one trace.
        task = await SchedulerClient(s).submit(
            task_type="enforce_policy", parameters={"policy_id": policy.resource_id}
        )

        def task_trace() -> str:
            submits = [s for s in receiver.spans if s.name == "/tai.v1.Scheduler/SubmitTask"]
            return submits[0].trace_id if submits else ""

        def names_in(trace_id: str) -> set[tuple[str, str]]:
            return {(s.service, s.name) for s in receiver.spans if s.trace_id == trace_id}

        expected = {
            ("tai-scheduler", "run task enforce_policy"),
            ("tai-governor", "/tai.v1.Governor/EnforcePolicy"),
            ("tai-coordinator", "process tai-policies"),
        }
        # Each process exports its spans in its own batches, and a span is exported only once
        # it ends: the Scheduler's "run task" span ends after the Governor and the Coordinator
        # have already exported theirs. So wait for every expected span, not for the services.
        await receiver.wait_for(lambda: bool(task_trace()) and expected <= names_in(task_trace()))
        names = names_in(task_trace())
        assert any(name.startswith("store.") for _, name in names)
        del task

        # Coordinator → bus → StreamActions: the delivery continues the signal's trace.
        stream = CoordinatorClient(c).stream_actions("oncall")
        signal = None
        for _ in range(100):
            signal = await CoordinatorClient(c).submit_signal(signal_type="alert", priority=9)
            if signal.action_ids:
                break
            await asyncio.sleep(0.05)
        assert signal is not None
        assert signal.action_ids
        action = await asyncio.wait_for(stream.read(), 15)
        assert action is not grpc.aio.EOF
        stream.cancel()

        def delivered_in_the_signals_trace() -> bool:
            submit = [s for s in receiver.spans if s.name == "/tai.v1.Coordinator/SubmitSignal"]
            deliver = [s for s in receiver.spans if s.name == "deliver action page"]
            return any(d.trace_id == s.trace_id for d in deliver for s in submit)

        await receiver.wait_for(delivered_in_the_signals_trace)


async def test_log_lines_carry_the_trace_and_the_caller(
    service_processes: MakeProcess, sqlite_url: str, receiver: OtlpReceiver
) -> None:
    governor = await traced_governor(service_processes, sqlite_url, receiver, TAI_LOG_LEVEL="DEBUG")
    async with open_channel(governor.target) as channel:
        await GovernorClient(channel).propose(
            policy_type="finance", name="budget", description="do-not-log-me"
        )
    await receiver.wait_for(
        lambda: any(s.name == "/tai.v1.Governor/ProposePolicy" for s in receiver.spans)
    )
    span = next(s for s in receiver.spans if s.name == "/tai.v1.Governor/ProposePolicy")
    lines = [json.loads(line) for line in governor.log_path.read_text().splitlines()]
    access = [line for line in lines if line.get("grpc_method") == "/tai.v1.Governor/ProposePolicy"]
    assert access, "no access log line"
    line = access[0]
    assert {"time", "level", "service", "message"} <= set(line)
    assert line["service"] == "governor"
    assert line["principal"] == "anonymous"
    assert line["trace_id"] == span.trace_id
    assert line["span_id"]
    assert "do-not-log-me" not in governor.log_path.read_text()  # no payloads in logs


async def test_a_call_continues_its_callers_trace_and_a_sampled_out_call_exports_nothing(
    service_processes: MakeProcess, sqlite_url: str, receiver: OtlpReceiver
) -> None:
    governor = await traced_governor(
        service_processes, sqlite_url, receiver, TAI_TRACE_SAMPLE_RATIO="0.0"
    )
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    async with open_channel(governor.target) as channel:
        # No trace of the caller's, and the sampler keeps nothing new: no span at all.
        await GovernorClient(channel).propose(policy_type="finance", name="budget")
        # A sampled caller's trace is continued whatever the ratio (parent-based sampling).
        stub = governor_pb2_grpc.GovernorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetPolicy(
                governor_pb2.GetPolicyRequest(id="no-such-policy"),
                metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),),
            )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    def get_spans() -> list[ReceivedSpan]:
        return [s for s in receiver.spans if s.name == "/tai.v1.Governor/GetPolicy"]

    await receiver.wait_for(lambda: bool(get_spans()))
    (span,) = get_spans()
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent)
    assert span.kind == 2  # SERVER
    assert span.attributes["rpc.service"] == "tai.v1.Governor"
    assert span.attributes["rpc.method"] == "GetPolicy"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status_code != 2  # a caller's mistake is not the server's error
    # The proposal was handled (and its batch exported, if any) before the sampled call.
    assert not [s for s in receiver.spans if s.name == "/tai.v1.Governor/ProposePolicy"]
