"""Hostile input: arbitrary and boundary values, and bytes that are not a message at all, thrown
at every RPC of every service the three servers serve, over real gRPC (hypothesis). No call may
answer UNKNOWN or INTERNAL, no server may crash, and what the services stored stays consistent
(nothing half-written).

The RPCs are found from the service descriptors: every service of the `tai.v1` package, and
the standard health and reflection services each server also runs."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tai.v1
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from support.processes import ServiceProcess, free_port
from support.proto_strategies import messages, wire_bytes

pytestmark = pytest.mark.slow

FORBIDDEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
UNPARSABLE = "could not be parsed"
# Bytes no message type accepts: field number 0, wire type 7, an endless varint, a
# length-delimited field 1 cut short, a tag cut short.
CORRUPT = (b"\x00", b"\x07", b"\xff" * 11, b"\x0a\x05ab", b"\x80")


def tai_services() -> list[ServiceDescriptor]:
    """Every service declared in the `tai.v1` package."""
    found: list[ServiceDescriptor] = []
    for info in pkgutil.iter_modules(tai.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"tai.v1.{info.name}")
            found.extend(module.DESCRIPTOR.services_by_name.values())
    return found


# What every TAI server runs beside its own service (tai_common.grpc.server).
STANDARD_SERVICES: list[ServiceDescriptor] = [
    *health_pb2.DESCRIPTOR.services_by_name.values(),
    *reflection_pb2.DESCRIPTOR.services_by_name.values(),
]
# The process serving each TAI service (tai.v1.Governor: `python -m tai_governor`).
MODULES = {service.full_name: f"tai_{service.name.lower()}" for service in tai_services()}


@dataclass(frozen=True)
class Rpc:
    module: str
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def id(self) -> str:
        return f"{self.module}:{self.service.name}.{self.method.name}"


def rpcs() -> list[Rpc]:
    found = [
        Rpc(MODULES[service.full_name], service, method)
        for service in tai_services()
        for method in service.methods
    ]
    for module in MODULES.values():
        found.extend(
            Rpc(module, service, method)
            for service in STANDARD_SERVICES
            for method in service.methods
        )
    return found


RPCS = rpcs()


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
    ports = {module: free_port() for module in MODULES.values()}
    common = {
        "TAI_STORE": url,
        "TAI_BUS": url,
        "TAI_AUTH": "off",
        "TAI_METRICS_PORT": "0",
        "TAI_SQLITE_SYNCHRONOUS": "NORMAL",
        "TAI_GOVERNOR_TARGET": f"127.0.0.1:{ports['tai_governor']}",
        "TAI_COORDINATOR_TARGET": f"127.0.0.1:{ports['tai_coordinator']}",
        "TAI_LOG_LEVEL": "WARNING",
    }
    processes = {
        module: ServiceProcess(
            module, {**common, "TAI_GRPC_PORT": str(port)}, directory / f"{module}.log"
        )
        for module, port in ports.items()
    }

    async def start_all() -> None:
        # Together: a service waits for those it depends on before it reports SERVING.
        await asyncio.gather(*(process.start(timeout=60) for process in processes.values()))

    try:
        asyncio.run(start_all())
        channels = {
            module: grpc.insecure_channel(process.target) for module, process in processes.items()
        }
        yield Suite(processes, channels, database)
        for channel in channels.values():
            channel.close()
    finally:
        for process in processes.values():
            process.stop()


def send(
    channel: grpc.Channel, rpc: Rpc, requests: Sequence[bytes], timeout: float
) -> tuple[grpc.StatusCode, str]:
    """Sends `requests` as they are (no serializer: the bytes go on the wire unchanged; a
    method taking one request gets the first) and returns the call's status."""
    method = rpc.method
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(rpc.path)(iter(requests), timeout=timeout):
                pass
        elif method.client_streaming:
            channel.stream_unary(rpc.path)(iter(requests), timeout=timeout)
        elif method.server_streaming:
            for _ in channel.unary_stream(rpc.path)(requests[0], timeout=timeout):
                pass
        else:
            channel.unary_unary(rpc.path)(requests[0], timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def parses(rpc: Rpc, data: bytes) -> bool:
    try:
        GetMessageClass(rpc.method.input_type).FromString(data)
    except DecodeError:
        return False
    return True


def check_answer(suite: Suite, rpc: Rpc, data: bytes) -> None:
    """Sends `data` as a request (after a valid one, on a client stream): bytes that do not
    parse get INVALID_ARGUMENT saying so; bytes that parse get the method's ordinary answer."""
    requests = [b"", data] if rpc.method.client_streaming else [data]
    channel = suite.channels[rpc.module]
    if parses(rpc, data):
        # A valid request to a stream opens a subscription: a short deadline ends it.
        timeout = 0.3 if rpc.method.server_streaming else 10
        code, details = send(channel, rpc, requests, timeout)
        assert code not in FORBIDDEN, f"{rpc.path} answered {code} to {data!r}: {details}"
        assert UNPARSABLE not in details, f"{rpc.path} could not parse {data!r}: {details}"
        return
    code, details = send(channel, rpc, requests, 10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{rpc.path}: {code} {details}"
    assert f"{UNPARSABLE} as {rpc.method.input_type.full_name}" in details, details


def test_every_served_service_is_covered(suite: Suite) -> None:
    """The RPCs found from the descriptors are all that the servers serve, so no service
    escapes the hostile calls below."""
    for module, channel in suite.channels.items():
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
        served = {s.name for s in reply.list_services_response.service}
        assert served == {r.service.full_name for r in RPCS if r.module == module}


@pytest.mark.parametrize("rpc", RPCS, ids=[r.id for r in RPCS])
def test_no_input_makes_a_server_fail(suite: Suite, rpc: Rpc) -> None:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(messages(rpc.method.input_type))
    def check(request: Message) -> None:
        timeout = 0.3 if rpc.method.server_streaming else 10
        code, details = send(
            suite.channels[rpc.module], rpc, [request.SerializeToString()], timeout
        )
        assert code not in FORBIDDEN, f"{rpc.path} answered {code}: {details}"

    check()
    process = suite.processes[rpc.module].process
    assert process is not None
    assert process.poll() is None, "the server died"


@pytest.mark.parametrize("rpc", RPCS, ids=[r.id for r in RPCS])
def test_bytes_that_are_not_a_request_are_invalid_argument(suite: Suite, rpc: Rpc) -> None:
    for data in CORRUPT:
        assert not parses(rpc, data)
        check_answer(suite, rpc, data)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(wire_bytes(rpc.method.input_type))
    def check(data: bytes) -> None:
        check_answer(suite, rpc, data)

    check()
    process = suite.processes[rpc.module].process
    assert process is not None
    assert process.poll() is None, "the server died"


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
