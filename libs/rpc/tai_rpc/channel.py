"""Channels to TAI services, with deadlines, retries on UNAVAILABLE, optional mutual TLS and a
bearer token.

Retries use gRPC's own retry policy (a service config on the channel) rather than a hand-written
loop: the library retries only calls that are safe to retry at the transport level and honours
each call's deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tai_rpc.namespaces import NAMESPACE_METADATA


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that signs the servers, and this client's certificate and key (for
    mutual TLS; leave them empty for server-only TLS)."""

    ca_file: str
    cert_file: str = ""
    key_file: str = ""
    # Expect this name in the server's certificate instead of the target's host.
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca_file).read_bytes(),
            private_key=Path(self.key_file).read_bytes() if self.key_file else None,
            certificate_chain=Path(self.cert_file).read_bytes() if self.cert_file else None,
        )


@dataclass(frozen=True)
class ChannelOptions:
    # Deadline of a unary call when the caller gives none.
    default_timeout_seconds: float = 10.0
    max_attempts: int = 4
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 2.0
    max_message_bytes: int = 4 * 1024 * 1024
    tls: TlsFiles | None = None
    # Sent as `authorization: Bearer <token>` on every call; a callable is asked each time (a
    # token that rotates).
    bearer_token: str | Callable[[], str] = ""
    # Sent as `x-tai-namespace` on every call (the namespace the calls work in; empty: the
    # server's "default"); a callable is asked each time.
    namespace: str | Callable[[], str] = ""
    # More client interceptors (e.g. metrics, tracing), run before the token is added.
    interceptors: tuple[grpc.aio.ClientInterceptor, ...] = ()
    # gRPC's load-balancing policy over the target's addresses ("round_robin", "pick_first";
    # empty: gRPC's default), for a target that names several replicas ("ipv4:host:port,…").
    load_balancing: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError("max_attempts must be between 1 and 5 (gRPC's limit)")


def _service_config(options: ChannelOptions) -> str:
    config: dict[str, Any] = {"methodConfig": []}
    if options.load_balancing:
        config["loadBalancingConfig"] = [{options.load_balancing: {}}]
    if options.max_attempts == 1:  # no retries (gRPC wants a retry policy to allow at least 2)
        return json.dumps(config)
    return json.dumps(
        {
            **config,
            "methodConfig": [
                {
                    "name": [
                        {"service": "tai.v1.Governor"},
                        {"service": "tai.v1.Coordinator"},
                        {"service": "tai.v1.Scheduler"},
                    ],
                    "retryPolicy": {
                        "maxAttempts": options.max_attempts,
                        "initialBackoff": f"{options.initial_backoff_seconds}s",
                        "maxBackoff": f"{options.max_backoff_seconds}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


class _CallMetadata:
    """Adds the bearer token and the namespace (when set) to every call's metadata."""

    def __init__(self, options: ChannelOptions) -> None:
        self._token = options.bearer_token
        self._namespace = options.namespace

    def _with_metadata(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        token = self._token() if callable(self._token) else self._token
        if token:
            metadata.add("authorization", f"Bearer {token}")
        namespace = self._namespace() if callable(self._namespace) else self._namespace
        # A namespace the caller put on the call itself wins over the channel's.
        if namespace and not metadata.get_all(NAMESPACE_METADATA):
            metadata.add(NAMESPACE_METADATA, namespace)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under one kind of call only, so each kind gets its own class.
class _UnaryCallMetadata(_CallMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)


class _StreamCallMetadata(_CallMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_metadata(client_call_details), request)


def open_channel(target: str, options: ChannelOptions | None = None) -> grpc.aio.Channel:
    """A channel to `target` (host:port) with TAI's retry policy, TLS and token if given."""
    options = options or ChannelOptions()
    channel_options: list[tuple[str, Any]] = [
        ("grpc.service_config", _service_config(options)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
    ]
    interceptors: list[grpc.aio.ClientInterceptor] = list(options.interceptors)
    if options.bearer_token or options.namespace:
        interceptors += [_UnaryCallMetadata(options), _StreamCallMetadata(options)]
    if options.tls is not None:
        if options.tls.server_name:
            channel_options.append(("grpc.ssl_target_name_override", options.tls.server_name))
        return grpc.aio.secure_channel(
            target,
            options.tls.credentials(),
            options=channel_options,
            interceptors=interceptors or None,
        )
    return grpc.aio.insecure_channel(
        target, options=channel_options, interceptors=interceptors or None
    )
