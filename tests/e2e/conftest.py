"""The suite as a user meets it: the three services as processes, with authentication on,
behind the local Envoy gateway (gRPC and JSON)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from support.gateway import Gateway, GatewayConfig, GatewaySuite
from support.processes import ServiceProcess, free_port
from support.tokens import AUDIENCE, ISSUER, TokenIssuer


@pytest.fixture(scope="module")
def gateway_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewaySuite]:
    directory = tmp_path_factory.mktemp("e2e")
    issuer = TokenIssuer()
    jwks_file = issuer.write_jwks(directory / "jwks.json")
    url = f"sqlite:///{directory}/tai.db"
    ports = {name: free_port() for name in ("governor", "coordinator", "scheduler")}
    service_token = issuer.token("svc-internal", ["admin"], expires_in=3600)
    common = {
        "TAI_STORE": url,
        "TAI_BUS": url,
        "TAI_AUTH": "jwt",
        "TAI_JWT_JWKS_FILE": str(jwks_file),
        "TAI_JWT_ISSUER": ISSUER,
        "TAI_JWT_AUDIENCE": AUDIENCE,
        "TAI_METRICS_PORT": "0",
        "TAI_SERVICE_TOKEN": service_token,
        "TAI_GOVERNOR_TARGET": f"127.0.0.1:{ports['governor']}",
        "TAI_COORDINATOR_TARGET": f"127.0.0.1:{ports['coordinator']}",
        "TAI_SHUTDOWN_GRACE_SECONDS": "2",
    }
    services = {
        name: ServiceProcess(
            f"tai_{name}", {**common, "TAI_GRPC_PORT": str(port)}, directory / f"{name}.log"
        )
        for name, port in ports.items()
    }
    gateway = Gateway(
        GatewayConfig(
            upstreams={name: f"127.0.0.1:{port}" for name, port in ports.items()},
            jwks_file=str(jwks_file),
            issuer=ISSUER,
            audience=AUDIENCE,
        ),
        directory,
    )
    try:
        for service in services.values():
            asyncio.run(service.start(timeout=60))
        gateway.start()
        yield GatewaySuite(gateway, services, issuer, jwks_file, directory)
    finally:
        gateway.stop()
        for service in services.values():
            service.stop()
