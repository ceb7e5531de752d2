"""The operator console in the chart: its own Deployment and Service tai-console in both modes,
from the tai-server image, with the services' security context, HTTP probes on /healthz, a
NetworkPolicy admitting only the ingress gateway, and console.enabled=false removing it all."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_helpers import find, kubernetes_errors, one, render

MODES = {"services": (), "single": ("--set", "mode=single")}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(main)


@pytest.mark.parametrize("mode", MODES)
def test_the_console_is_served_with_the_services_hardening(mode: str) -> None:
    docs = render((), MODES[mode])
    assert kubernetes_errors(docs) == []
    deployment = one(docs, "Deployment", "tai-console")
    pod = deployment["spec"]["template"]["spec"]
    server = one(render((), MODES["single"]), "Deployment", "tai-server")
    main = container(deployment)

    assert main["image"] == container(server)["image"]
    assert main["command"] == ["tai-console"]
    assert main["ports"] == [{"name": "http", "containerPort": 8088, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["TAI_CONSOLE_PORT"] == "8088"
    assert env["TAI_AUTH"] == "jwt"
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["securityContext"] == container(server)["securityContext"]
    assert pod["securityContext"] == server["spec"]["template"]["spec"]["securityContext"]
    assert pod["serviceAccountName"] == "tai-console"
    assert pod["automountServiceAccountToken"] is False
    assert main["resources"]["limits"]["memory"]

    service = one(docs, "Service", "tai-console")["spec"]
    assert service["ports"][0]["port"] == 8088
    assert (
        service["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_only_the_ingress_gateway_reaches_the_console() -> None:
    docs = render()
    policy = one(docs, "NetworkPolicy", "tai-console")["spec"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": 8088, "protocol": "TCP"}]
    (source,) = ingress["from"]
    assert source["podSelector"] == {"matchLabels": {"istio": "ingressgateway"}}
    assert policy["egress"] == []


def test_console_enabled_false_renders_no_console() -> None:
    docs = render((), ("--set", "console.enabled=false", "--set", "istio.enabled=true"))
    assert [d for d in docs if "console" in d["metadata"]["name"]] == []
    routes = one(docs, "VirtualService", "tai")["spec"]["http"]
    assert "console" not in [r["name"] for r in routes]
    deny = one(docs, "AuthorizationPolicy", "tai-require-jwt")["spec"]["rules"][0]
    assert "paths" not in deny["to"][0]["operation"]
    assert find(docs, "Service", "tai-console") == []
