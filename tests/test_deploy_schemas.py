"""deploy/ against the published schemas, without a cluster or a container engine:

- every Kubernetes manifest (deploy/k8s/**/*.yaml) against the Kubernetes API's own OpenAPI schemas
  of the version we target, with kubernetes-validate in strict mode (unknown fields fail too);
- the Compose file against the Compose Specification's JSON schema, vendored in check-jsonschema
  (`--builtin-schema vendor.compose-spec`).

kustomization.yaml is kustomize's own config, not an API object: `kubectl kustomize` renders it in
tests/test_deploy.py where kubectl is installed.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES_VERSION = "1.30.0"  # the Kubernetes release the manifests target (its API schemas)


def manifests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                found.append((f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


MANIFESTS = manifests()


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=[name for name, _ in MANIFESTS])
def test_kubernetes_manifest_matches_the_api_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_kind_we_ship_is_validated():
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Namespace", "Pod"} <= kinds


def test_kubernetes_validation_catches_a_misspelt_field_and_a_wrong_type():
    deployment = next(doc for _, doc in MANIFESTS if doc["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec():
    done = check_compose(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_validation_catches_a_misspelt_key(tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose["services"]["cloud"]["stop_grace_periods"] = compose["services"]["cloud"].pop("stop_grace_period")
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    done = check_compose(broken)
    assert done.returncode == 1 and "stop_grace_periods" in done.stdout, done.stdout + done.stderr
