"""Settings for every TAI service, read once from the environment (prefix `TAI_`).

Each service subclasses `ServiceSettings` to set its own defaults (name, ports). Adapters are
chosen from the URLs here, in one place: `tai_common.factory`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Settings shared by the services. Every field can be set as `TAI_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="TAI_", extra="ignore", frozen=True)

    service_name: str = "tai"
    environment: Literal["development", "production"] = "development"
    # Unique per process; names per-replica subscriptions and task leases.
    replica_id: str = Field(default_factory=_default_replica_id)

    # gRPC: the address to bind (0.0.0.0 in containers) and the port (0 = any free port).
    host: str = "127.0.0.1"
    grpc_port: int = 0
    # Prometheus /metrics (0 = disabled).
    metrics_port: int = 0
    # Largest request or response message, either way.
    max_message_bytes: int = 4 * 1024 * 1024
    # On SIGTERM: how long in-flight calls and streams get to finish.
    shutdown_grace_seconds: float = 10.0

    # Adapters, by URL. sqlite:///relative/path or sqlite:////absolute/path.
    store: str = "sqlite:///.tai/tai.db"
    bus: str = "sqlite:///.tai/tai.db"
    # Create missing Pub/Sub or Kafka topics and subscriptions at start (emulators,
    # development). Off, a service that lacks one stops at start with one line naming it;
    # `make provision TAI_BUS=…` (scripts/provision_bus.py) creates them once per install.
    bus_create_missing: bool = False
    # memory:// (each process its own), or shared by every replica: redis://host:port/db (one
    # server) or redis+cluster://host:port[,host:port…] (a Redis Cluster); rediss… for TLS.
    cache: str = "memory://"
    # SQLite durability: FULL syncs every commit to disk; NORMAL survives process crashes but
    # may lose the last commits on power loss.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # This process is the only one on the SQLite file (`tai-server` sets it): the embedded bus
    # delivers to its consumers from memory, with no claim or acknowledgement transactions.
    sqlite_single_process: bool = False

    # --- authentication and authorisation (see tai_common.auth) ---
    # "jwt": every call carries a bearer token (or comes from a trusted service over mTLS).
    # "off": no authentication at all — for `make run` and tests only; logged loudly.
    auth: Literal["jwt", "off"] = "jwt"
    jwt_issuer: str = ""
    jwt_audience: str = "tai"
    # Where the verification keys come from: a JWKS URL, a JWKS file, or a secret (its "jwks"
    # key) in the secret source — rotated keys are picked up without a restart.
    jwt_jwks_url: str = ""
    jwt_jwks_file: str = ""
    jwt_jwks_secret: str = ""
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    # The claim that lists the caller's roles (admin, operator, viewer).
    jwt_roles_claim: str = "roles"
    # The claim that maps each namespace the caller holds to its role there
    # ({"team-a": "operator"}; "*": every namespace). A token without it holds "default" only,
    # with the role of `jwt_roles_claim`.
    jwt_namespaces_claim: str = "tai_namespaces"
    jwt_leeway_seconds: float = 30.0
    # A token signed by an unknown key id reloads the keys (rotation), at most this often.
    jwt_min_refresh_seconds: float = 10.0
    # Keys are reloaded at least this often, so a key removed from the set stops being trusted.
    jwt_max_key_age_seconds: float = 300.0
    # A token this service presents on its own calls to the other services when mTLS is not
    # configured (e.g. the Scheduler's executors).
    service_token: SecretStr = SecretStr("")
    service_token_file: str = ""

    # Mutual TLS between services: this service's certificate and key, and the CA that signs
    # its peers. All three set = TLS on, client certificates required.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # Certificate identities (SPIFFE URIs) of the services, for the internal calls each may
    # make without a token; by default spiffe://<any trust domain>/ns/<any>/sa/tai-<service>.
    tls_service_identities: dict[str, str] = Field(default_factory=dict)

    # Rate limits: requests per second per caller and method (0 = unlimited), with a burst;
    # overrides per method name ("SubmitSignal": 500). Shared by replicas through Redis when
    # `rate_limit_store` is a redis:// or redis+cluster:// URL (defaults to the cache's when
    # that is Redis).
    rate_limit_per_second: float = 0.0
    rate_limit_burst: float = 0.0
    rate_limits: dict[str, float] = Field(default_factory=dict)
    rate_limit_store: str = ""

    # --- namespaces (see tai_common.namespacing) ---
    # Namespaces an installation may hold ("default" included): bounds the per-namespace
    # background passes and the metrics' namespace label.
    max_namespaces: int = Field(default=100, ge=1, le=10_000)
    # Namespaces (in order of creation, "default" first) whose metrics carry their own
    # `namespace` label; the others share the label "other".
    namespace_metric_labels: int = Field(default=20, ge=0, le=1000)
    # How often each replica re-reads the namespaces and their quotas.
    namespace_refresh_seconds: float = Field(default=1.0, gt=0)
    # Quotas of a namespace that sets none (0: unlimited).
    namespace_max_enforced_policies: int = Field(default=0, ge=0)
    namespace_max_signals_per_second: int = Field(default=0, ge=0)
    namespace_max_open_tasks: int = Field(default=0, ge=0)

    # Secrets: env:// (environment variables TAI_SECRET_<NAME>__<KEY> and files mounted at
    # ?dir=…) or vault://host:port?mount=secret&prefix=tai&auth=token|approle|kubernetes&role=…
    secrets: str = "env://"
    # Vault credentials, for the auth method the URL names (files are re-read at each login).
    vault_token: SecretStr | None = None
    vault_token_file: Path | None = None
    vault_role_id: SecretStr | None = None
    vault_role_id_file: Path | None = None
    vault_secret_id: SecretStr | None = None
    vault_secret_id_file: Path | None = None
    vault_kubernetes_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

    # --- tracing (OpenTelemetry) ---
    # OTLP collector (Jaeger ingests OTLP): host:port for gRPC, a URL for HTTP. Empty = no
    # spans are made at all: no tracing code runs per call, and the logs carry no trace ids.
    otlp_endpoint: str = ""
    otlp_protocol: Literal["grpc", "http"] = "grpc"
    # Parent-based sampling of new traces; unset = 1.0 in development, 0.1 in production.
    trace_sample_ratio: float | None = Field(default=None, ge=0.0, le=1.0)

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Other services, for the calls one service makes to another.
    governor_target: str = "127.0.0.1:50051"
    coordinator_target: str = "127.0.0.1:50052"
    scheduler_target: str = "127.0.0.1:50053"

    @field_validator("grpc_port", "metrics_port")
    @classmethod
    def _port_in_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be between 0 and 65535")
        return value
