"""The chart lints and renders for the default values and every ci/*-values.yaml, and what it
renders is valid: built-in kinds against the Kubernetes 1.30 schemas (kubernetes-validate,
strict), custom resources (Istio, prometheus-operator, KEDA) against their published schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest
from deploy_helpers import (
    CHART,
    KUBERNETES_VERSION,
    custom_resource_errors,
    is_custom_resource,
    kubernetes_errors,
    render,
    run_helm,
    values_files,
)

CONFIGURATIONS = values_files()


def test_every_ci_values_file_is_exercised() -> None:
    assert {"production", "dev", "istio", "minimal", "keda", "small"} <= set(CONFIGURATIONS)


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_helm_lint(configuration: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in CONFIGURATIONS[configuration]:
        args += ["--values", str(path)]
    result = run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_built_in_kinds_match_the_kubernetes_schemas(configuration: str) -> None:
    docs = render(CONFIGURATIONS[configuration])
    assert [doc for doc in docs if not is_custom_resource(doc)]
    assert kubernetes_errors(docs) == []


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_custom_resources_match_their_schemas(configuration: str) -> None:
    assert custom_resource_errors(render(CONFIGURATIONS[configuration])) == []


def test_the_validators_refuse_what_they_should() -> None:
    """Both validators have teeth: an unknown field, a wrong type and a wrong enum are
    reported, for KEDA's kinds too."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    typo = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "typo"},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipal": ["*"]}}]}]},
    }
    wrong_enum = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "enum"},
        "spec": {"host": "h", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUESTS"}}},
    }
    unknown_kind = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Nope",
        "metadata": {"name": "n"},
    }
    keda_typo = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "keda-typo"},
        "spec": {
            "scaleTargetRef": {"name": "tai-governor"},
            "maxReplicas": 5,
            "triggers": [{"type": "cpu", "metadata": {"value": 70}}],
        },
    }
    keda_provider = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "keda-provider"},
        "spec": {"podIdentity": {"provider": "google"}},
    }
    errors = custom_resource_errors([typo, wrong_enum, unknown_kind, keda_typo, keda_provider])
    assert any('unknown field "requestPrincipal"' in error for error in errors), errors
    assert any("DestinationRule/enum" in error and "allowed" in error for error in errors), errors
    assert any("no schema" in error for error in errors), errors
    assert 'ScaledObject/keda-typo: /spec: unknown field "maxReplicas"' in errors, errors
    # Trigger metadata values are strings in KEDA's API.
    assert any(
        error.startswith("ScaledObject/keda-typo: /spec/triggers/0/metadata/value")
        for error in errors
    ), errors
    assert any(
        error.startswith("TriggerAuthentication/keda-provider: /spec/podIdentity/provider")
        and '"gcp"' in error
        for error in errors
    ), errors
