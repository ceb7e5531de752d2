"""What matters in the rendered workloads: probes, security context, autoscaling ranges,
disruption budgets, network policy, service ports and identities, monitoring, settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import CHART, CI_VALUES, NAMESPACE, ROOT, SERVICES, Doc, find, one, render
from tai_common.core import ServiceSettings
from tai_common.vault import KubernetesAuth, VaultConfig, VaultCredentials

PORTS = {"governor": (50051, 9101), "coordinator": (50052, 9102), "scheduler": (50053, 9103)}
# The seed's replica ranges.
REPLICAS = {"governor": (3, 50), "coordinator": (2, 100), "scheduler": (2, 50)}
PRODUCTION = (CI_VALUES / "production-values.yaml",)
DEV = (CI_VALUES / "dev-values.yaml",)
# The dev values choose mode single (test_helm_single.py); with this, one Deployment per service.
AS_SERVICES = ("--set", "mode=services")


def container(deployment: Doc) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("service", SERVICES)
def test_native_grpc_probes_ask_the_standard_health_service(service: str) -> None:
    grpc_port, _ = PORTS[service]
    main = container(one(render(), "Deployment", f"tai-{service}"))
    assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in main["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"] == {"port": grpc_port, "service": ""}, probe


@pytest.mark.parametrize("service", SERVICES)
def test_pods_are_locked_down(service: str) -> None:
    pod = one(render(), "Deployment", f"tai-{service}")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfiles' USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container({"spec": {"template": {"spec": pod}}})["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {
        m["mountPath"]: m["name"]
        for m in container({"spec": {"template": {"spec": pod}}})["volumeMounts"]
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert pod["serviceAccountName"] == f"tai-{service}"
    assert pod["automountServiceAccountToken"] is False  # no Vault in the default values


def test_the_image_runs_as_the_user_the_chart_expects() -> None:
    """The chart's runAsUser is the recipe's USER (test_container_image.py builds it)."""
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_autoscaling_ranges_and_cpu_target(service: str) -> None:
    hpa = one(render(), "HorizontalPodAutoscaler", f"tai-{service}")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == REPLICAS[service]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"tai-{service}",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["metrics"][0]["resource"]["target"]["type"] == "Utilization"
    # The HPA owns the replica count: the Deployment does not reset it on upgrade.
    assert "replicas" not in one(render(), "Deployment", f"tai-{service}")["spec"]


@pytest.mark.parametrize("service", SERVICES)
def test_disruption_budget_covers_the_pods(service: str) -> None:
    pdb = one(render(), "PodDisruptionBudget", f"tai-{service}")["spec"]
    pod_labels = one(render(), "Deployment", f"tai-{service}")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("service", SERVICES)
def test_spread_over_zones_and_nodes(service: str) -> None:
    pod = one(render(), "Deployment", f"tai-{service}")["spec"]["template"]
    keys = {c["topologyKey"] for c in pod["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in pod["spec"]["topologySpreadConstraints"]:
        assert (
            constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        )
    production = one(render(PRODUCTION), "Deployment", f"tai-{service}")["spec"]["template"]["spec"]
    zone = next(
        c for c in production["topologySpreadConstraints"] if c["topologyKey"].endswith("zone")
    )
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"


@pytest.mark.parametrize("service", SERVICES)
def test_service_ports_and_identity(service: str) -> None:
    grpc_port, metrics_port = PORTS[service]
    ports = {p["name"]: p for p in one(render(), "Service", f"tai-{service}")["spec"]["ports"]}
    assert ports["grpc"]["port"] == grpc_port
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == metrics_port
    one(render(), "ServiceAccount", f"tai-{service}")


def test_network_policy_denies_by_default() -> None:
    docs = render()
    deny = one(docs, "NetworkPolicy", "tai-default-deny")["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    for deployment in find(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deny["podSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("service", SERVICES)
def test_network_policy_allows_only_what_the_service_needs(service: str) -> None:
    grpc_port, metrics_port = PORTS[service]
    policy = one(render(PRODUCTION), "NetworkPolicy", f"tai-{service}")["spec"]
    ingress_ports = {rule["ports"][0]["port"] for rule in policy["ingress"]}
    assert ingress_ports == {grpc_port, metrics_port}
    metrics_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == metrics_port)
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    # DNS, the services, Google APIs, metadata server, Redis, Vault, OTLP, istiod.
    assert {53, 50051, 50052, 50053, 443, 6379, 8200, 4317, 15012} <= egress_ports
    # Dependencies that are not configured get no hole.
    default_ports = {
        p["port"]
        for rule in one(render(), "NetworkPolicy", f"tai-{service}")["spec"]["egress"]
        for p in rule["ports"]
    }
    assert not {6379, 8200, 4317, 15012} & default_ports


def test_service_monitors_name_the_jobs_the_alerts_expect() -> None:
    docs = render()
    alerts = (ROOT / "deploy" / "prometheus" / "tai-alerts.yaml").read_text()
    assert "tai-governor" in alerts
    assert 'job=~"tai-.*"' in alerts
    for service in SERVICES:
        monitor = one(docs, "ServiceMonitor", f"tai-{service}")["spec"]
        service_doc = one(docs, "Service", f"tai-{service}")
        # No jobLabel: Prometheus names the job after the Service, tai-<service>.
        assert "jobLabel" not in monitor
        assert (
            monitor["selector"]["matchLabels"].items() <= service_doc["metadata"]["labels"].items()
        )
        assert monitor["endpoints"][0]["port"] == "metrics"


def test_prometheus_rule_is_the_alert_file() -> None:
    source = ROOT / "deploy" / "prometheus" / "tai-alerts.yaml"
    copy = CHART / "files" / "tai-alerts.yaml"
    if not source.is_file():
        pytest.skip("deploy/prometheus/tai-alerts.yaml is not there yet")
    assert copy.read_bytes() == source.read_bytes(), (
        "deploy/helm/tai/files/tai-alerts.yaml differs from deploy/prometheus/tai-alerts.yaml: "
        "run `make helm-alerts`"
    )
    rule = one(render(), "PrometheusRule", "tai-alerts")
    assert rule["spec"] == yaml.safe_load(source.read_text())


def settings_from(configmap: Doc, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The settings a pod with this ConfigMap reads (and nothing else from the environment)."""
    for key in list(os.environ):
        if key.startswith("TAI_"):
            monkeypatch.delenv(key)
    for key, value in configmap["data"].items():
        monkeypatch.setenv(key, value)
    return ServiceSettings()


@pytest.mark.parametrize(
    ("values", "extra"),
    [((), ()), (PRODUCTION, ()), (DEV, AS_SERVICES)],
    ids=["default", "production", "dev"],
)
@pytest.mark.parametrize("service", SERVICES)
def test_settings_are_real_settings(
    service: str,
    values: tuple[Path, ...],
    extra: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every TAI_* key of the ConfigMap is a field of ServiceSettings, and they parse."""
    configmap = one(render(values, extra), "ConfigMap", f"tai-{service}-config")
    fields = set(ServiceSettings.model_fields)
    unknown = [
        key
        for key in configmap["data"]
        if key.startswith("TAI_") and key.removeprefix("TAI_").lower() not in fields
    ]
    assert unknown == []
    settings = settings_from(configmap, monkeypatch)
    grpc_port, metrics_port = PORTS[service]
    assert (settings.grpc_port, settings.metrics_port, settings.host) == (
        grpc_port,
        metrics_port,
        "0.0.0.0",
    )


def test_authentication_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in SERVICES:
        settings = settings_from(one(render(), "ConfigMap", f"tai-{service}-config"), monkeypatch)
        assert settings.auth == "jwt"
        assert settings.environment == "production"
        assert settings.store == "firestore://tai-example-project"
        assert settings.bus == "pubsub://tai-example-project"


def test_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(PRODUCTION)
    for service in SERVICES:
        configmap = one(docs, "ConfigMap", f"tai-{service}-config")
        settings = settings_from(configmap, monkeypatch)
        assert settings.cache == "redis://10.20.0.3:6379/0"
        assert settings.rate_limit_store == settings.cache
        assert settings.otlp_endpoint == "otel-collector.observability.svc:4317"
        assert settings.rate_limits == {"SubmitSignal": 1000.0}
        assert settings.governor_target == f"tai-governor.{NAMESPACE}.svc:50051"
        # The services' own parser accepts the Vault URL: Kubernetes auth with its own role.
        vault = VaultConfig.from_url(settings.secrets, VaultCredentials())
        assert vault.url == "https://vault.vault.svc:8200"
        assert isinstance(vault.auth, KubernetesAuth)
        assert vault.auth.role == f"tai-{service}"
        assert vault.verify == Path("/etc/tai/vault-ca/ca.crt")
        pod = one(docs, "Deployment", f"tai-{service}")["spec"]["template"]
        assert pod["spec"]["automountServiceAccountToken"] is True  # to log in to Vault
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["vault-ca"]["secret"]["secretName"] == "vault-ca"
        mounts = {
            m["name"]: m["mountPath"]
            for m in container({"spec": {"template": pod}})["volumeMounts"]
        }
        assert mounts["vault-ca"] == "/etc/tai/vault-ca"
        annotations = pod["metadata"]["annotations"]
        if service == "governor":  # makes no internal calls: no service token
            assert "vault.hashicorp.com/agent-inject" not in annotations
            assert "TAI_SERVICE_TOKEN_FILE" not in configmap["data"]
        else:
            assert annotations["vault.hashicorp.com/agent-inject"] == "true"
            assert annotations["vault.hashicorp.com/role"] == f"tai-{service}"
            assert annotations["vault.hashicorp.com/agent-inject-template-service-token"] == (
                '{{- with secret "secret/data/tai/service-tokens" -}}'
                f"{{{{ .Data.data.{service} }}}}{{{{- end -}}}}"
            )
            assert settings.service_token_file == "/vault/secrets/service-token"


def test_dev_cluster_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(DEV, AS_SERVICES)
    assert find(docs, "NetworkPolicy") == []
    assert find(docs, "HorizontalPodAutoscaler") == []
    settings = settings_from(one(docs, "ConfigMap", "tai-scheduler-config"), monkeypatch)
    assert settings.auth == "off"
    assert settings.service_token_file == ""
    assert one(docs, "Deployment", "tai-scheduler")["spec"]["replicas"] == 1


def test_no_secret_is_rendered() -> None:
    for values in [(), PRODUCTION, DEV]:
        assert find(render(values), "Secret") == []


def test_images_default_to_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    image = container(one(render(), "Deployment", "tai-governor"))["image"]
    assert image == f"tai-governor:{chart['appVersion']}"
    image = container(one(render(PRODUCTION), "Deployment", "tai-scheduler"))["image"]
    assert image == f"europe-docker.pkg.dev/acme-tai/tai/tai-scheduler:{chart['appVersion']}"


def test_config_change_rolls_the_pods() -> None:
    before = one(render(), "Deployment", "tai-governor")["spec"]["template"]["metadata"]
    after = one(render((), ("--set", "config.logLevel=DEBUG")), "Deployment", "tai-governor")
    assert (
        before["annotations"]["checksum/config"]
        != (after["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
    )
