"""The Kubernetes manifests of docs/k8s/ against schemas, offline (no cluster needed).

Built-in kinds (Deployment, Service, HorizontalPodAutoscaler, PersistentVolumeClaim, Secret):
the Kubernetes OpenAPI schemas that `kubernetes-validate` bundles, in strict mode (an unknown
field is an error). PyTorchJob (a CRD): docs/k8s/schemas/pytorchjob-kubeflow-v1.json, a
minimal schema of the fields used, written from the training-operator's API types and webhook,
whose pod templates are checked against Kubernetes' own PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import functools
import json
import socket
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

from training.config import PROJECT_ROOT

K8S_DIR = PROJECT_ROOT / "docs" / "k8s"
PYTORCHJOB_SCHEMA = K8S_DIR / "schemas" / "pytorchjob-kubeflow-v1.json"
# The oldest Kubernetes the manifests claim (autoscaling/v2 is GA since 1.23) and the newest
# that kubernetes-validate bundles.
VERSIONS = ["1.30", kv.major_minor(kv.latest_version())]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S_DIR.glob("*.yaml")) for doc in _documents(path)]


@functools.cache
def _pytorchjob_validator(version: str) -> jsonschema.Draft202012Validator:
    """The PyTorchJob schema, with Kubernetes' definitions of `version` to resolve its $refs."""
    path = f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json"
    definitions = kv.schema_contents(path, version)
    schema = json.loads(PYTORCHJOB_SCHEMA.read_text())
    registry = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (definitions, schema)]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise if `doc` does not validate for Kubernetes `version` (or has no schema here)."""
    if doc.get("kind") == "PyTorchJob":
        _pytorchjob_validator(version).validate(doc)
    else:
        kv.validate(doc, version, strict=True)  # SchemaNotFoundError for an unknown kind


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation must work offline: any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("manifest validation tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_manifests_hold_the_kinds_the_docs_describe():
    kinds = {doc["kind"] for _, doc in _all_documents()}
    assert {
        "PyTorchJob",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "Secret",
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "doc"),
    _all_documents(),
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in _all_documents()],
)
def test_manifest_validates(name, doc, version):
    validate(doc, version)


def _doc(file: str, kind: str, name: str = "") -> dict[str, Any]:
    for doc in _documents(K8S_DIR / file):
        if doc["kind"] == kind and (not name or doc["metadata"]["name"] == name):
            return copy.deepcopy(doc)
    raise LookupError(f"{file}: no {kind} {name}")


def _deployment() -> dict[str, Any]:
    return _doc("serving.yaml", "Deployment")


def _job() -> dict[str, Any]:
    return _doc("training-pytorchjob.yaml", "PyTorchJob")


def _container(doc: dict[str, Any], role: str | None = None) -> dict[str, Any]:
    spec = doc["spec"]["pytorchReplicaSpecs"][role] if role else doc["spec"]
    return spec["template"]["spec"]["containers"][0]


def _break(case: str) -> dict[str, Any]:
    """A manifest of docs/k8s/ with one mistake in it."""
    if case == "deployment without selector":
        doc = _deployment()
        del doc["spec"]["selector"]
    elif case == "deployment with a misspelt probe":
        doc = _deployment()
        _container(doc)["readynessProbe"] = _container(doc).pop("readinessProbe")
    elif case == "deployment with a memory limit as a list":
        doc = _deployment()
        _container(doc)["resources"]["limits"]["memory"] = ["3Gi"]
    elif case == "service port as text":
        doc = _doc("serving.yaml", "Service")
        doc["spec"]["ports"][0]["port"] = "eighty"
    elif case == "hpa without scaleTargetRef":
        doc = _doc("serving.yaml", "HorizontalPodAutoscaler")
        del doc["spec"]["scaleTargetRef"]
    elif case == "pvc with an unknown access mode field":
        doc = _doc("training-pytorchjob.yaml", "PersistentVolumeClaim")
        doc["spec"]["accessMode"] = doc["spec"].pop("accessModes")
    elif case == "pytorchjob with two masters":
        doc = _job()
        doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    elif case == "pytorchjob without a container named pytorch":
        doc = _job()
        _container(doc, "Worker")["name"] = "trainer"
    elif case == "pytorchjob with an unknown replica type":
        doc = _job()
        doc["spec"]["pytorchReplicaSpecs"]["Chief"] = doc["spec"]["pytorchReplicaSpecs"]["Worker"]
    elif case == "pytorchjob with a bad restart policy":
        doc = _job()
        doc["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    elif case == "pytorchjob with a bad field in its pod template":
        doc = _job()
        resources = _container(doc, "Master")["resources"]
        resources["request"] = resources.pop("requests")
    else:
        raise ValueError(case)
    return doc


BROKEN = [
    "deployment without selector",
    "deployment with a misspelt probe",
    "deployment with a memory limit as a list",
    "service port as text",
    "hpa without scaleTargetRef",
    "pvc with an unknown access mode field",
    "pytorchjob with two masters",
    "pytorchjob without a container named pytorch",
    "pytorchjob with an unknown replica type",
    "pytorchjob with a bad restart policy",
    "pytorchjob with a bad field in its pod template",
]


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_manifest_fails(case):
    with pytest.raises(jsonschema.ValidationError):
        validate(_break(case), VERSIONS[0])


def test_an_unknown_kind_has_no_schema():
    doc = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    with pytest.raises(kv.SchemaNotFoundError):
        validate(doc, VERSIONS[0])


def test_the_serving_objects_point_at_each_other():
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _doc("serving.yaml", "Service")["spec"]["selector"].items() <= labels.items()
    for file in ("serving.yaml", "serving-hpa-requests.yaml"):
        target = _doc(file, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    container = _container(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e for e in container["env"]}
    assert {"GAMEREC_MODEL_TAG", "GAMEREC_ADMIN_TOKEN"} <= env.keys()
    secret = _doc("admin-token-secret.yaml", "Secret")["metadata"]["name"]
    assert env["GAMEREC_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret


def test_the_training_job_runs_the_cli_on_the_shared_store():
    job = _job()
    claim = _doc("training-pytorchjob.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    for role in ("Master", "Worker"):
        pod = job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        container = _container(job, role)
        assert "-m training.cli train" in " ".join(container["command"] + container["args"])
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        assert env["BENTOML_HOME"].startswith(mounts["data"] + "/")
        assert volumes["data"] == claim
