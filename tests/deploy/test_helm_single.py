"""The chart's mode single: one Deployment of the tai-server image runs the three services. What
a cluster and its clients see must hold: the three Services keep their names and gRPC ports and
reach the one pod, the pod is locked down as the services' are, its probes ask the standard
health service, its settings are the server's own (ServerSettings, read the way it reads them),
the SQLite file is on a volume with one owner, monitoring scrapes the one metrics port once, the
network and Istio policies admit what they admit in mode services, and what cannot apply is
refused with a message naming the value."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    CI_VALUES,
    ISTIO_RENDER_ARGS,
    Doc,
    custom_resource_errors,
    find,
    kubernetes_errors,
    one,
    render,
    render_error,
    run_helm,
)
from tai_common.factory import sqlite_path
from tai_server.app import SERVICES, ServerSettings, grpc_ports, service_overrides

SINGLE = ("--set", "mode=single")
PRODUCTION = (CI_VALUES / "production-values.yaml",)
SMALL = (CI_VALUES / "small-values.yaml",)
DEV = (CI_VALUES / "dev-values.yaml",)
PORTS = {"governor": 50051, "coordinator": 50052, "scheduler": 50053}
# Mode single beside what mode services is checked with: the defaults, production (Vault agent,
# Istio, network policy) with two replicas on Firestore, and Istio alone.
CONFIGURATIONS: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    "default": ((), SINGLE),
    "production-two-replicas": (PRODUCTION, (*SINGLE, "--set", "server.replicas=2")),
    "istio": ((), (*SINGLE, *ISTIO_RENDER_ARGS)),
    "small": (SMALL, ()),
    "dev": (DEV, ()),
}


def pod_spec(deployment: Doc) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def main_container(deployment: Doc) -> dict[str, Any]:
    (container,) = pod_spec(deployment)["containers"]
    return dict(container)


def server_settings(configmap: Doc, monkeypatch: pytest.MonkeyPatch) -> ServerSettings:
    """What the process reads from a pod with this ConfigMap (and nothing else of TAI_*)."""
    for key in list(os.environ):
        if key.startswith("TAI_"):
            monkeypatch.delenv(key)
    for key, value in configmap["data"].items():
        monkeypatch.setenv(key, value)
    return ServerSettings()


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_helm_lint(configuration: str) -> None:
    values, extra = CONFIGURATIONS[configuration]
    files = [arg for path in values for arg in ("--values", str(path))]
    result = run_helm("lint", "--strict", str(CHART), *files, *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_rendered_manifests_match_their_schemas(configuration: str) -> None:
    docs = render(*CONFIGURATIONS[configuration])
    assert kubernetes_errors(docs) == []
    assert custom_resource_errors(docs) == []


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_one_deployment_runs_the_three_services(configuration: str) -> None:
    docs = render(*CONFIGURATIONS[configuration])
    # Beside it, the operator console's file server (console.enabled, the default).
    assert [d["metadata"]["name"] for d in find(docs, "Deployment")] == [
        "tai-console",
        "tai-server",
    ]
    assert [d["metadata"]["name"] for d in find(docs, "ConfigMap")] == ["tai-server-config"]
    assert [d["metadata"]["name"] for d in find(docs, "ServiceAccount")] == [
        "tai-console",
        "tai-server",
    ]
    # Fixed replicas: neither a CPU autoscaler nor KEDA.
    assert find(docs, "HorizontalPodAutoscaler") == []
    assert find(docs, "ScaledObject") == []
    deployment = one(docs, "Deployment", "tai-server")
    assert main_container(deployment)["image"].split("/")[-1].startswith("tai-server:")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in main_container(deployment)["ports"]}
    assert ports == {**PORTS, "metrics": 9100}
    for name, port in PORTS.items():
        service = one(docs, "Service", f"tai-{name}")["spec"]
        # Clients, the gateway and the Istio routes keep tai-<service>:<port>…
        (service_port,) = service["ports"]
        assert (service_port["name"], service_port["port"]) == ("grpc", port)
        assert service_port["appProtocol"] == "grpc"
        # …which now reach that service's port on the one pod.
        assert service["selector"].items() <= pod_labels.items()
        assert ports[service_port["targetPort"]] == port


def test_replicas_and_rollout_follow_the_store() -> None:
    """On SQLite: one replica, replaced rather than rolled (a second owner of the file would
    refuse to start). On Firestore: as many as asked, rolled, with a disruption budget once
    there is more than one."""
    small = render(SMALL)
    deployment = one(small, "Deployment", "tai-server")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert find(small, "PodDisruptionBudget") == []
    one_on_firestore = render((), SINGLE)
    assert one(one_on_firestore, "Deployment", "tai-server")["spec"]["replicas"] == 1
    assert find(one_on_firestore, "PodDisruptionBudget") == []
    docs = render(*CONFIGURATIONS["production-two-replicas"])
    deployment = one(docs, "Deployment", "tai-server")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(docs, "PodDisruptionBudget", "tai-server")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= (
        deployment["template"]["metadata"]["labels"].items()
    )


def test_probes_ask_the_health_service_on_the_port_that_starts_last() -> None:
    """The server starts its services in order and stops them in reverse: the last one's
    SERVING means all three serve, and it is the first to turn NOT_SERVING on SIGTERM."""
    assert SERVICES[-1] == "scheduler"
    container = main_container(one(render((), SINGLE), "Deployment", "tai-server"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": PORTS["scheduler"], "service": ""}, probe


def test_the_pod_is_locked_down_as_the_services_are() -> None:
    single = one(render((), SINGLE), "Deployment", "tai-server")
    services = one(render(), "Deployment", "tai-governor")
    assert pod_spec(single)["securityContext"] == pod_spec(services)["securityContext"]
    assert main_container(single)["securityContext"] == main_container(services)["securityContext"]
    assert main_container(single)["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(single)["automountServiceAccountToken"] is False
    assert pod_spec(single)["serviceAccountName"] == "tai-server"


def test_settings_are_the_servers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key is a setting of tai-server; each service gets its port, they call each other
    on loopback (no TAI_<SERVICE>_TARGET), and each presents its own token, from the Secret
    tai-<service>-token as in mode services."""
    docs = render((), SINGLE)
    configmap = one(docs, "ConfigMap", "tai-server-config")
    fields = set(ServerSettings.model_fields)
    assert [k for k in configmap["data"] if k.removeprefix("TAI_").lower() not in fields] == []
    assert not [k for k in configmap["data"] if k.endswith("_TARGET") or k == "TAI_GRPC_PORT"]
    settings = server_settings(configmap, monkeypatch)
    assert settings.chosen() == list(SERVICES)
    assert (settings.metrics_port, settings.host) == (9100, "0.0.0.0")
    assert settings.sqlite_single_process is True
    ports = grpc_ports(settings)
    assert ports == PORTS
    scheduler = service_overrides(settings, "scheduler", ports)
    assert scheduler["governor_target"] == "127.0.0.1:50051"
    assert scheduler["coordinator_target"] == "127.0.0.1:50052"
    assert "service_token_file" not in service_overrides(settings, "governor", ports)
    # The token files are where the pod mounts the Secrets.
    pod = pod_spec(one(docs, "Deployment", "tai-server"))
    (mount,) = [
        m
        for m in main_container({"spec": {"template": {"spec": pod}}})["volumeMounts"]
        if m["name"] == "service-tokens"
    ]
    volume = next(v for v in pod["volumes"] if v["name"] == "service-tokens")
    mounted = {
        f"{mount['mountPath']}/{item['path']}": source["secret"]["name"]
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert {
        name: mounted[service_overrides(settings, name, ports)["service_token_file"]]
        for name in ("coordinator", "scheduler")
    } == {"coordinator": "tai-coordinator-token", "scheduler": "tai-scheduler-token"}


def test_vault_agent_renders_one_token_per_calling_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render(*CONFIGURATIONS["production-two-replicas"])
    settings = server_settings(one(docs, "ConfigMap", "tai-server-config"), monkeypatch)
    annotations = one(docs, "Deployment", "tai-server")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["vault.hashicorp.com/role"] == "tai-server"
    assert settings.service_token_files == {
        "coordinator": "/vault/secrets/coordinator-token",
        "scheduler": "/vault/secrets/scheduler-token",
    }
    for name, path in settings.service_token_files.items():
        # The agent writes /vault/secrets/<x> for agent-inject-secret-<x>.
        file = Path(path).name
        assert annotations[f"vault.hashicorp.com/agent-inject-secret-{file}"] == (
            "secret/data/tai/service-tokens"
        )
        assert annotations[f"vault.hashicorp.com/agent-inject-template-{file}"] == (
            '{{- with secret "secret/data/tai/service-tokens" -}}'
            f"{{{{ .Data.data.{name} }}}}{{{{- end -}}}}"
        )
    assert "vault.hashicorp.com/agent-inject-secret-service-token" not in annotations


def test_sqlite_lives_on_a_volume_the_process_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(SMALL)
    settings = server_settings(one(docs, "ConfigMap", "tai-server-config"), monkeypatch)
    assert settings.store == settings.bus  # one file: store and bus together
    database = sqlite_path(settings.store)
    deployment = one(docs, "Deployment", "tai-server")
    mounts = {m["name"]: m["mountPath"] for m in main_container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert database.parent == Path(mounts["data"])
    claim = one(docs, "PersistentVolumeClaim", "tai-server-data")
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "tai-server-data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # No Firestore, so no way out to Google's APIs.
    assert 443 not in {
        p["port"]
        for rule in one(render(SMALL), "NetworkPolicy", "tai-server")["spec"]["egress"]
        for p in rule["ports"]
    }


def test_an_existing_claim_replaces_the_charts() -> None:
    docs = render(
        SMALL,
        (
            "--set",
            "server.persistence.existingClaim=tai-data-restored",
            "--set",
            "server.persistence.storageClassName=fast-ssd",
        ),
    )
    assert find(docs, "PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in pod_spec(one(docs, "Deployment", "tai-server"))["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "tai-data-restored"
    docs = render(SMALL, ("--set", "server.persistence.storageClassName=fast-ssd"))
    claim = one(docs, "PersistentVolumeClaim", "tai-server-data")["spec"]
    assert claim["storageClassName"] == "fast-ssd"


def test_dev_values_run_the_single_process_on_the_emulators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dev cluster runs as `make run` does, in one process; its data is in the Firestore
    and Pub/Sub emulators, so it needs no volume."""
    docs = render(DEV)
    deployment = one(docs, "Deployment", "tai-server")
    assert deployment["spec"]["replicas"] == 1
    assert main_container(deployment)["image"] == "tai-server:dev"
    assert find(docs, "PersistentVolumeClaim") == []
    settings = server_settings(one(docs, "ConfigMap", "tai-server-config"), monkeypatch)
    assert (settings.store, settings.bus) == ("firestore://tai-dev-local", "pubsub://tai-dev-local")
    assert settings.auth == "off"
    assert settings.service_token_files == {}
    configmap = one(docs, "ConfigMap", "tai-server-config")["data"]
    assert configmap["FIRESTORE_EMULATOR_HOST"] == "firestore-emulator.tai-dev.svc:8080"


def test_the_environment_of_the_three_is_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults.env, then each service's env, then server.env: what each service would have
    had in its own process, unless server.env says otherwise."""
    values = (
        *SINGLE,
        "--set",
        "defaults.env.TAI_LOG_LEVEL=WARNING",
        "--set",
        "services.scheduler.env.TAI_WORKER_CONCURRENCY=32",
        "--set",
        "services.coordinator.env.TAI_SQLITE_SYNCHRONOUS=NORMAL",
        "--set",
        "server.env.TAI_SQLITE_SYNCHRONOUS=FULL",
    )
    data = one(render((), values), "ConfigMap", "tai-server-config")["data"]
    assert data["TAI_LOG_LEVEL"] == "WARNING"
    assert data["TAI_WORKER_CONCURRENCY"] == "32"
    assert data["TAI_SQLITE_SYNCHRONOUS"] == "FULL"


def test_network_policy_admits_clients_and_prometheus() -> None:
    docs = render(*CONFIGURATIONS["production-two-replicas"])
    pod_labels = one(docs, "Deployment", "tai-server")["spec"]["template"]["metadata"]["labels"]
    deny = one(docs, "NetworkPolicy", "tai-default-deny")["spec"]
    assert deny["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert [d["metadata"]["name"] for d in find(docs, "NetworkPolicy")] == [
        "tai-console",
        "tai-default-deny",
        "tai-server",
    ]
    policy = one(docs, "NetworkPolicy", "tai-server")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    grpc_rule, metrics_rule = policy["ingress"]
    assert {p["port"] for p in grpc_rule["ports"]} == set(PORTS.values())
    sources = [peer for peer in grpc_rule["from"]]
    # The ingress gateway, the release's pods, and production's action consumers.
    assert sources[0]["podSelector"]["matchLabels"] == {"istio": "ingressgateway"}
    assert sources[1]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sources[2] == {"namespaceSelector": {"matchLabels": {"tai.dev/action-consumer": "true"}}}
    assert [p["port"] for p in metrics_rule["ports"]] == [9100]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 443, 6379, 8200, 4317, 15012} <= egress_ports


def test_prometheus_scrapes_the_one_metrics_port_once() -> None:
    """One ServiceMonitor, on the Service tai-server (job tai-server): a monitor per service
    would scrape the same endpoint three times."""
    docs = render((), SINGLE)
    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["name"] == "tai-server"
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    selected = [s for s in find(docs, "Service") if selector <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["tai-server"]
    (port,) = selected[0]["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9100, "metrics")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "jobLabel" not in monitor["spec"]


def test_istio_policies_move_to_the_one_pod() -> None:
    """The routes and destination rules are those of mode services (same hosts and ports); the
    authorisation and mTLS policies select the tai-server pod, admit its metrics port, and
    list no token-less internal calls, which stay on the pod's loopback."""
    single = render((), (*SINGLE, *ISTIO_RENDER_ARGS))
    services = render((), ISTIO_RENDER_ARGS)
    for kind in ("VirtualService", "DestinationRule", "Gateway", "RequestAuthentication"):
        assert [d["spec"] for d in find(single, kind)] == [d["spec"] for d in find(services, kind)]
    pod_labels = one(single, "Deployment", "tai-server")["spec"]["template"]["metadata"]["labels"]
    (peer,) = find(single, "PeerAuthentication")
    assert peer["metadata"]["name"] == "tai-server"
    assert peer["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert peer["spec"]["portLevelMtls"] == {9100: {"mode": "PERMISSIVE"}}
    for name, port in PORTS.items():
        policy = one(single, "AuthorizationPolicy", f"tai-{name}")["spec"]
        assert policy["selector"]["matchLabels"].items() <= pod_labels.items()
        rules = json.dumps(policy["rules"])
        assert '"principals"' not in rules
        assert {"requestPrincipals": ["*"]} in [
            f["source"] for r in policy["rules"] for f in r.get("from", [])
        ]
        ports = [t["operation"].get("ports") for r in policy["rules"] for t in r["to"]]
        assert [str(port)] in ports
        assert ["9100"] in ports


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "sqlite with a Deployment per service": (
        {"config": {"backend": "sqlite"}},
        "config.backend=sqlite needs mode=single",
    ),
    "two owners of the SQLite file": (
        {"mode": "single", "config": {"backend": "sqlite"}, "server": {"replicas": 2}},
        "server.replicas (2) must be 1 with config.backend=sqlite",
    ),
    "KEDA on fixed replicas": (
        {"mode": "single", "keda": {"enabled": True}},
        "keda.enabled does not apply to mode single",
    ),
    "a canary of one service": (
        {
            "mode": "single",
            "istio": {"enabled": True},
            "services": {"coordinator": {"canary": {"enabled": True, "tag": "next"}}},
        },
        "services.coordinator (merged with defaults): canary.enabled does not apply to mode single",
    ),
    "two services disagreeing on one process's setting": (
        {
            "mode": "single",
            "services": {
                "coordinator": {"env": {"TAI_SQLITE_SYNCHRONOUS": "NORMAL"}},
                "scheduler": {"env": {"TAI_SQLITE_SYNCHRONOUS": "FULL"}},
            },
        },
        "services.coordinator.env.TAI_SQLITE_SYNCHRONOUS and "
        "services.scheduler.env.TAI_SQLITE_SYNCHRONOUS differ",
    ),
    "grace period shorter than the server's drain": (
        {"mode": "single", "server": {"terminationGracePeriodSeconds": 8}},
        "server (merged with defaults): terminationGracePeriodSeconds (8) must cover",
    ),
    "unknown mode": ({"mode": "all-in-one"}, "at '/mode': value must be one of"),
    "unknown backend": ({"config": {"backend": "postgres"}}, "at '/config/backend'"),
    "autoscaling the server": (
        {"server": {"autoscaling": {"enabled": True}}},
        "at '/server': additional properties 'autoscaling' not allowed",
    ),
    "unknown persistence key": (
        {"server": {"persistence": {"sizee": "1Gi"}}},
        "at '/server/persistence': additional properties 'sizee' not allowed",
    ),
    "a volume size that is not a quantity": (
        {"server": {"persistence": {"size": "lots"}}},
        "at '/server/persistence/size'",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_what_cannot_apply_is_refused(case: str, tmp_path: Path) -> None:
    values, expected = BAD_VALUES[case]
    assert expected in render_error(values, tmp_path)


def test_the_schema_describes_the_server_as_the_defaults_are() -> None:
    """The server's schema copies the workload settings (draft-07 cannot extend a closed
    object) except autoscaling and canary: the copies must not drift."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    definitions = schema["definitions"]
    settings = definitions["serviceSettings"]["properties"]
    server = definitions["server"]["properties"]
    assert {k: v for k, v in settings.items() if k not in ("autoscaling", "canary")} == {
        k: v for k, v in server.items() if k not in ("metricsPort", "persistence")
    }
    assert definitions["server"]["additionalProperties"] is False
    assert schema["properties"]["mode"]["enum"] == ["services", "single"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["mode"] == "services"  # the default is unchanged
    assert values["config"]["backend"] == "firestore"
    assert values["server"]["replicas"] == 1
    assert values["server"]["metricsPort"] == ServerSettings.model_fields["metrics_port"].default
