"""Wrong values are refused before anything reaches a cluster, with a message naming the value:
by values.schema.json, or (for what JSON Schema cannot express: comparing two fields, settings
merged from defaults) by the chart's own checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import CHART, SERVICES, find, render, render_error
from redis.asyncio.cluster import RedisCluster
from tai_common.redis import open_redis

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())

BAD_VALUES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "auth off without the dev flag": (
        {"config": {"auth": "off"}},
        ["at '/dev/allowInsecure': value must be true"],
    ),
    "replicas min > max": (
        {"services": {"governor": {"autoscaling": {"minReplicas": 9, "maxReplicas": 3}}}},
        [
            "services.governor (merged with defaults): autoscaling.minReplicas (9) must not be "
            "greater than autoscaling.maxReplicas (3)"
        ],
    ),
    "min above the chart's max": (
        {"services": {"governor": {"autoscaling": {"minReplicas": 60}}}},
        ["autoscaling.minReplicas (60) must not be greater than autoscaling.maxReplicas (50)"],
    ),
    "unknown key in a service override": (
        {"services": {"scheduler": {"replica": 3}}},
        ["at '/services/scheduler': additional properties 'replica' not allowed"],
    ),
    "unknown key in the defaults": (
        {"defaults": {"resource": {}}},
        ["at '/defaults': additional properties 'resource' not allowed"],
    ),
    "unknown top-level key": ({"istoi": {"enabled": True}}, ["additional properties 'istoi'"]),
    "redis that is not a URL": (
        {"config": {"redis": {"url": "localhost:6379"}}},
        ["at '/config/redis/url': 'localhost:6379' does not match pattern"],
    ),
    "redis URL with a password": (
        {"config": {"redis": {"url": "redis://:hunter2@redis:6379/0"}}},
        ["at '/config/redis/url'"],
    ),
    "redis cluster URL with a password": (
        {"config": {"redis": {"url": "rediss+cluster://:hunter2@node-a:6379,node-b:6379"}}},
        ["at '/config/redis/url'"],
    ),
    "redis cluster URL with a database other than 0": (
        {"config": {"redis": {"url": "redis+cluster://node-a:6379/1"}}},
        ["at '/config/redis/url'"],
    ),
    "redis cluster URL without a node": (
        {"config": {"redis": {"url": "redis+cluster://"}}},
        ["at '/config/redis/url'"],
    ),
    "redis cluster URL with an empty address": (
        {"config": {"redis": {"url": "redis+cluster://node-a:6379,,node-b:6379"}}},
        ["at '/config/redis/url'"],
    ),
    "redis cluster URL with query parameters": (
        {"config": {"redis": {"url": "redis+cluster://node-a:6379?password=hunter2"}}},
        ["at '/config/redis/url'"],
    ),
    "a credential among the extra variables": (
        {"config": {"extraEnv": {"TAI_VAULT_TOKEN": "s.abc"}}},
        ["at '/config/extraEnv/TAI_VAULT_TOKEN'", "no credentials in values"],
    ),
    "a secret among a service's settings": (
        {"services": {"coordinator": {"env": {"TAI_SECRET_JWKS__KEY": "x"}}}},
        ["at '/services/coordinator/env/TAI_SECRET_JWKS__KEY'", "no credentials in values"],
    ),
    "jwt without verification keys": (
        {"config": {"jwt": {"jwksUrl": "", "jwksSecret": ""}}},
        ["at '/config/jwt/jwksUrl': minLength", "at '/config/jwt/jwksSecret': minLength"],
    ),
    "vault address with a path": (
        {"config": {"vault": {"address": "https://vault:8200/v1/secret"}}},
        ["at '/config/vault/address'"],
    ),
    "load balancing percentage out of range": (
        {"services": {"coordinator": {"canary": {"weight": 150}}}},
        ["at '/services/coordinator/canary/weight': maximum"],
    ),
    "canary without Istio": (
        {"services": {"coordinator": {"canary": {"enabled": True, "tag": "next"}}}},
        ["services.coordinator (merged with defaults): canary.enabled needs istio.enabled"],
    ),
    "canary without a tag": (
        {"istio": {"enabled": True}, "services": {"coordinator": {"canary": {"enabled": True}}}},
        ["canary.enabled needs canary.tag"],
    ),
    "grace period shorter than the drain": (
        {"defaults": {"terminationGracePeriodSeconds": 8}},
        ["terminationGracePeriodSeconds (8) must cover preStopSleepSeconds"],
    ),
    "unknown service token source": (
        {"serviceToken": {"source": "env"}},
        ["at '/serviceToken/source': value must be one of"],
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_are_refused_with_a_clear_message(case: str, tmp_path: Path) -> None:
    values, expected = BAD_VALUES[case]
    error = render_error(values, tmp_path)
    for text in expected:
        assert text in error, error


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis.cache.svc:6379/0",
        "rediss://redis.example.test:6380",
        "redis+cluster://redis-cluster.cache.svc:6379",
        "rediss+cluster://10.0.0.5:6379,10.0.0.6:6379,10.0.0.7:6379",
        "redis+cluster://[fd00::5]:7000,node-b:7001/0",
    ],
)
async def test_redis_and_redis_cluster_urls_reach_the_services(url: str, tmp_path: Path) -> None:
    """Accepted by the schema, set as the services' cache and rate-limit store, and taken by
    the services' own parser (the one they run at start; it does not connect)."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": {"redis": {"url": url}}}))
    configmaps = [doc for doc in find(render((values,)), "ConfigMap") if "TAI_CACHE" in doc["data"]]
    assert len(configmaps) == len(SERVICES)
    for doc in configmaps:
        assert (doc["data"]["TAI_CACHE"], doc["data"]["TAI_RATE_LIMIT_STORE"]) == (url, url)
    client = open_redis(url, "TAI_CACHE")
    try:
        assert isinstance(client, RedisCluster) == ("+cluster://" in url)
    finally:
        await client.aclose()


def test_auth_off_is_accepted_on_a_declared_dev_cluster() -> None:
    docs = render((), ("--set", "config.auth=off", "--set", "dev.allowInsecure=true"))
    configmaps = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert {doc["data"]["TAI_AUTH"] for doc in configmaps} == {"off"}


def test_the_schema_forbids_auth_off_itself() -> None:
    """Not only the template check: the schema's own rule (helm install runs it first)."""
    assert SCHEMA["if"]["properties"]["config"]["properties"]["auth"] == {"const": "off"}
    allow = SCHEMA["then"]["properties"]["dev"]["properties"]["allowInsecure"]
    assert allow["const"] is True
    assert SCHEMA["properties"]["config"]["properties"]["auth"]["enum"] == ["jwt", "off"]


def test_service_entries_accept_the_defaults_settings_and_their_ports() -> None:
    """The schema copies the settings into the per-service definition (draft-07 cannot extend
    a closed object): the copies must not drift."""
    definitions = SCHEMA["definitions"]
    settings = definitions["serviceSettings"]["properties"]
    service = definitions["service"]["properties"]
    assert {key: value for key, value in service.items() if key not in settings} == {
        "grpcPort": {"$ref": "#/definitions/port"},
        "metricsPort": {"$ref": "#/definitions/port"},
    }
    assert {key: service[key] for key in settings} == settings
    assert definitions["serviceSettings"]["additionalProperties"] is False
    assert definitions["service"]["additionalProperties"] is False
    for name in SERVICES:
        assert SCHEMA["properties"]["services"]["properties"][name] == {
            "$ref": "#/definitions/service"
        }
