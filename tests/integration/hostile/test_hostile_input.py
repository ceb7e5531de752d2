"""Hostile input: arbitrary and boundary values thrown at every RPC of the three services over
real gRPC (hypothesis). No call may answer UNKNOWN or INTERNAL, no server may crash, and what
the services stored stays consistent (nothing half-written)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from support.processes import ServiceProcess, free_port
from support.proto_strategies import messages
from tai.v1 import coordinator_pb2, governor_pb2, scheduler_pb2  # noqa: F401 (registers them)

pytestmark = pytest.mark.slow

SERVICES = {
    "tai.v1.Governor": "tai_governor",
    "tai.v1.Coordinator": "tai_coordinator",
    "tai.v1.Scheduler": "tai_scheduler",
}
FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@dataclass
class Suite:
    processes: dict[str, ServiceProcess]
    channels: dict[str, grpc.Channel]
    database: Path


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    directory = tmp_path_factory.mktemp("hostile")
    database = directory / "tai.db"
    url = f"sqlite:///{database}"
    governor_port = free_port()
    coordinator_port = free_port()
    common = {
        "TAI_STORE": url,
        "TAI_BUS": url,
        "TAI_AUTH": "off",
        "TAI_METRICS_PORT": "0",
        "TAI_SQLITE_SYNCHRONOUS": "NORMAL",
        "TAI_GOVERNOR_TARGET": f"127.0.0.1:{governor_port}",
        "TAI_COORDINATOR_TARGET": f"127.0.0.1:{coordinator_port}",
        "TAI_LOG_LEVEL": "WARNING",
    }
    ports = {
        "tai.v1.Governor": governor_port,
        "tai.v1.Coordinator": coordinator_port,
        "tai.v1.Scheduler": free_port(),
    }
    processes = {
        name: ServiceProcess(
            module, {**common, "TAI_GRPC_PORT": str(ports[name])}, directory / f"{module}.log"
        )
        for name, module in SERVICES.items()
    }
    try:
        for process in processes.values():
            asyncio.run(process.start(timeout=60))
        channels = {
            name: grpc.insecure_channel(process.target) for name, process in processes.items()
        }
        yield Suite(processes, channels, database)
        for channel in channels.values():
            channel.close()
    finally:
        for process in processes.values():
            process.stop()


def rpcs() -> list[tuple[str, str]]:
    pool = descriptor_pool.Default()
    return [
        (service, method.name)
        for service in SERVICES
        for method in pool.FindServiceByName(service).methods
    ]


@pytest.mark.parametrize(("service", "method"), rpcs(), ids=[f"{s[7:]}.{m}" for s, m in rpcs()])
def test_no_input_makes_a_server_fail(suite: Suite, service: str, method: str) -> None:
    descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    request_type = GetMessageClass(descriptor.input_type)
    response_type = GetMessageClass(descriptor.output_type)
    path = f"/{service}/{method}"
    channel = suite.channels[service]
    if descriptor.server_streaming:
        callable_ = channel.unary_stream(
            path, request_type.SerializeToString, response_type.FromString
        )
    else:
        callable_ = channel.unary_unary(
            path, request_type.SerializeToString, response_type.FromString
        )

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(messages(descriptor.input_type))
    def check(request: object) -> None:
        outcome = (grpc.StatusCode.OK, "")
        try:
            if descriptor.server_streaming:
                for _ in callable_(request, timeout=0.3):
                    pass
            else:
                callable_(request, timeout=10)
        except grpc.RpcError as error:
            outcome = (error.code(), error.details())  # type: ignore[attr-defined]
        assert outcome[0] not in FORBIDDEN, f"{path} answered {outcome[0]}: {outcome[1]}"

    check()
    assert suite.processes[service].process is not None
    assert suite.processes[service].process.poll() is None, "the server died"


def test_what_was_stored_is_consistent(suite: Suite) -> None:
    """Runs after the hostile calls (file order): every stored policy, signal, action and task
    is whole, and every event left the outbox."""
    deadline = time.monotonic() + 30
    with sqlite3.connect(suite.database) as db:
        while db.execute("SELECT count(*) FROM c_outbox").fetchone()[0]:
            assert time.monotonic() < deadline, "the outbox never drained"
            time.sleep(0.2)

        def docs(collection: str) -> list[dict[str, object]]:
            try:
                return [
                    json.loads(row[0]) for row in db.execute(f"SELECT data FROM c_{collection}")
                ]
            except sqlite3.OperationalError:
                return []  # nothing of that kind was ever stored

        versions = {(d["id"], d["version"]) for d in docs("policy_versions")}
        for policy in docs("policies"):
            assert (policy["id"], policy["version"]) in versions
        actions = {d["id"]: d for d in docs("actions")}
        for signal in docs("signals"):
            for action_id in signal["action_ids"]:  # type: ignore[attr-defined]
                assert action_id in actions
        for task in docs("tasks"):
            assert task["status"] in ("pending", "running", "completed", "failed", "cancelled")
