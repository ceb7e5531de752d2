"""Namespaced calls for the tests: any method of any service, raw over gRPC, with a token and a
namespace; the three services in-process with authentication on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from tai.v1 import coordinator_pb2, governor_pb2, scheduler_pb2
from tai_rpc import NAMESPACE_METADATA

from support import inprocess
from support.secured import auth_settings
from support.tokens import TokenIssuer

SERVICES = [
    s
    for module in (governor_pb2, coordinator_pb2, scheduler_pb2)
    for s in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [m for s in SERVICES for m in s.methods]


class Caller:
    """Raw gRPC calls to any method, with a token and a namespace (or none)."""

    def __init__(self, targets: dict[str, str], token: str) -> None:
        self._channels = {
            name: grpc.aio.insecure_channel(target) for name, target in targets.items()
        }
        self._token = token

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def _metadata(self, namespace: str | None) -> list[tuple[str, str]]:
        metadata = [("authorization", f"Bearer {self._token}")]
        if namespace is not None:
            metadata.append((NAMESPACE_METADATA, namespace))
        return metadata

    def _stub(self, method: MethodDescriptor, streaming: bool) -> Any:
        channel = self._channels[method.containing_service.name]
        path = f"/{method.containing_service.full_name}/{method.name}"
        response = message_factory.GetMessageClass(method.output_type)
        make = channel.unary_stream if streaming else channel.unary_unary
        return make(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )

    async def call(
        self, method: MethodDescriptor, body: dict[str, Any] | None, namespace: str | None
    ) -> tuple[grpc.StatusCode, bytes, str]:
        """(status, the answer's bytes, the status message); a stream is read for 1.5 s."""
        request = message_factory.GetMessageClass(method.input_type)()
        json_format.ParseDict(body or {}, request)
        metadata = self._metadata(namespace)
        try:
            if method.server_streaming:
                call = self._stub(method, True)(request, metadata=metadata, timeout=30)
                received = b""
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(1.5):
                        async for item in call:
                            received += item.SerializeToString()
                call.cancel()
                return grpc.StatusCode.OK, received, ""
            reply: Message = await self._stub(method, False)(request, metadata=metadata, timeout=30)
            return grpc.StatusCode.OK, reply.SerializeToString(), ""
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED:
                return grpc.StatusCode.OK, b"", ""
            return error.code(), b"", error.details() or ""

    async def ok(self, service: str, method: str, body: dict[str, Any], namespace: str) -> Any:
        descriptor = next(
            m for m in METHODS if m.containing_service.name == service and m.name == method
        )
        request = message_factory.GetMessageClass(descriptor.input_type)()
        json_format.ParseDict(body, request)
        return await self._stub(descriptor, False)(
            request, metadata=self._metadata(namespace), timeout=30
        )


@dataclass
class Installation:
    targets: dict[str, str]
    issuer: TokenIssuer
    governor: Any

    def caller(self, grants: dict[str, str]) -> Caller:
        """A caller whose token holds `grants` (namespace -> role)."""
        return Caller(
            self.targets,
            self.issuer.token(f"user-{uuid.uuid4().hex[:6]}", [], extra={"tai_namespaces": grants}),
        )


@contextlib.asynccontextmanager
async def namespaced_suite(
    url: str, tmp_path: Path, issuer: TokenIssuer
) -> AsyncIterator[Installation]:
    settings = auth_settings(issuer.write_jwks(tmp_path / "jwks.json"))
    if url.startswith("firestore://"):
        settings["bus"] = url.replace("firestore://", "pubsub://")
        settings["bus_create_missing"] = True
    # The services' own token holds every namespace, for the calls they make to each other.
    service_token = issuer.token(
        "svc-internal", [], expires_in=3600, extra={"tai_namespaces": {"*": "admin"}}
    )
    bus = str(settings.pop("bus", url))
    async with (
        inprocess.governor(url, bus=bus, **settings) as governor,
        inprocess.coordinator(
            url, governor.target, bus=bus, service_token=service_token, **settings
        ) as coordinator,
        inprocess.scheduler(
            url,
            governor.target,
            coordinator.target,
            bus=bus,
            service_token=service_token,
            **settings,
        ) as scheduler,
    ):
        yield Installation(
            {
                "Governor": governor.target,
                "Coordinator": coordinator.target,
                "Scheduler": scheduler.target,
            },
            issuer,
            governor,
        )


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except grpc.aio.AioRpcError as error:
            last = error
        assert asyncio.get_running_loop().time() < deadline, f"never held ({last!r})"
        await asyncio.sleep(0.2)
