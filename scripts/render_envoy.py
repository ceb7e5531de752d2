"""Renders the local gateway's Envoy configuration from deploy/envoy/envoy.yaml.template.

    python scripts/render_envoy.py [--out FILE] [--jwks FILE --issuer ISS --audience AUD] …

Without --out it prints the configuration. `make run` renders .tai/envoy.yaml with its ports;
deploy/envoy/envoy.yaml is the same rendering with the defaults (a test keeps it current).
"""

from __future__ import annotations

import argparse
import string
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "envoy" / "envoy.yaml.template"
DEFAULT_DESCRIPTOR = "build/tai_descriptor.binpb"


@dataclass
class GatewayConfig:
    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    admin_port: int = 9901
    upstreams: dict[str, str] = field(
        default_factory=lambda: {
            "governor": "127.0.0.1:50051",
            "coordinator": "127.0.0.1:50052",
            "scheduler": "127.0.0.1:50053",
        }
    )
    descriptor: str = DEFAULT_DESCRIPTOR
    # Auth at the gateway (the services check tokens too): a JWKS file, issuer and audience.
    jwks_file: str = ""
    issuer: str = ""
    audience: str = "tai"
    rate_limit_per_second: int = 1000
    rate_limit_burst: int = 2000
    unary_timeout: str = "15s"
    # The operator console's file server (tai_console), host:port; "" = no console route.
    # Its route comes last (prefix /) and needs no token: the page must load to ask for one.
    console: str = ""


# Unary methods that may run longer than `unary_timeout`, and how long: SimulatePolicy and
# SummarizeDecisions scan up to their `max_seconds` (at most 1800 s), then answer.
LONG_UNARY_TIMEOUTS = {
    "Coordinator/SimulatePolicy": "1815s",
    "Coordinator/SummarizeDecisions": "1815s",
}


def _routes(config: GatewayConfig) -> str:
    lines: list[str] = []
    for name in config.upstreams:
        service = f"tai.v1.{name.capitalize()}"
        cluster = f"tai-{name}"
        for method, timeout in LONG_UNARY_TIMEOUTS.items():
            if method.startswith(f"{name.capitalize()}/"):
                lines += [
                    f"              - match: {{path: /tai.v1.{method}}}",
                    f"                route: {{cluster: {cluster}, timeout: {timeout}}}",
                ]
        # Streams: no timeout, no retry once started.
        lines += [
            f"              - match: {{prefix: /{service}/Stream}}",
            f"                route: {{cluster: {cluster}, timeout: 0s}}",
            f"              - match: {{prefix: /{service}/}}",
            "                route:",
            f"                  cluster: {cluster}",
            f"                  timeout: {config.unary_timeout}",
            "                  retry_policy:",
            "                    retry_on: unavailable,connect-failure,reset",
            "                    num_retries: 2",
        ]
    if config.console:
        # Last: everything not an API path is the console's (its page, modules, /config.json).
        lines += [
            "              - match: {prefix: /}",
            "                route: {cluster: tai-console, timeout: 15s}",
        ]
    return "\n".join(lines)


def _clusters(config: GatewayConfig) -> str:
    lines: list[str] = []
    for name, address in config.upstreams.items():
        host, port = address.rsplit(":", 1)
        lines += [
            f"  - name: tai-{name}",
            "    type: STRICT_DNS",
            "    lb_policy: LEAST_REQUEST",
            "    typed_extension_protocol_options:",
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:",
            '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
            "        explicit_http_config: {http2_protocol_options: {}}",
            "    # Like the seed's circuit breaker: 5 failures in a row eject a host for 30 s.",
            "    outlier_detection:",
            "      consecutive_5xx: 5",
            "      consecutive_gateway_failure: 5",
            "      base_ejection_time: 30s",
            "    load_assignment:",
            f"      cluster_name: tai-{name}",
            "      endpoints:",
            "      - lb_endpoints:",
            "        - endpoint:",
            f"            address: {{socket_address: {{address: {host}, port_value: {port}}}}}",
        ]
    if config.console:
        host, port = config.console.rsplit(":", 1)
        # HTTP/1.1: the console's server is the standard library's.
        lines += [
            "  - name: tai-console",
            "    type: STRICT_DNS",
            "    load_assignment:",
            "      cluster_name: tai-console",
            "      endpoints:",
            "      - lb_endpoints:",
            "        - endpoint:",
            f"            address: {{socket_address: {{address: {host}, port_value: {port}}}}}",
        ]
    return "\n".join(lines)


def _jwt_filter(config: GatewayConfig) -> str:
    if not config.jwks_file:
        return ""
    return f"""          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                tai:
                  issuer: "{config.issuer}"
                  audiences: ["{config.audience}"]
                  local_jwks: {{filename: {config.jwks_file}}}
                  forward: true
                  clock_skew_seconds: 30
              rules:
              # Health is open, as on the services.
              - match: {{prefix: /grpc.health.v1.Health/}}
              - match: {{safe_regex: {{regex: "^/v1/[a-z]+:health$"}}}}
              - match: {{prefix: /tai.v1.}}
                requires: {{provider_name: tai}}
              - match: {{prefix: /v1/}}
                requires: {{provider_name: tai}}
              # Anything else (the console's files, /config.json) matches no rule, so it needs
              # no token: the page loads, then asks for one and sends it on its API calls."""


def render(config: GatewayConfig) -> str:
    template = string.Template(TEMPLATE.read_text())
    return template.substitute(
        listen_address=config.listen_address,
        listen_port=config.listen_port,
        admin_port=config.admin_port,
        descriptor=config.descriptor,
        rate_limit_per_second=config.rate_limit_per_second,
        rate_limit_burst=config.rate_limit_burst,
        routes=_routes(config),
        clusters=_clusters(config),
        jwt_filter=_jwt_filter(config),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--descriptor", default=DEFAULT_DESCRIPTOR)
    parser.add_argument("--jwks", default="")
    parser.add_argument("--issuer", default="")
    parser.add_argument("--audience", default="tai")
    parser.add_argument("--console", default="127.0.0.1:8088", help='host:port, "" for none')
    args = parser.parse_args()
    text = render(
        GatewayConfig(
            listen_port=args.port,
            admin_port=args.admin_port,
            descriptor=args.descriptor,
            jwks_file=args.jwks,
            issuer=args.issuer,
            audience=args.audience,
            console=args.console,
        )
    )
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
