"""Every overlay renders, and every object it renders is valid against Kubernetes 1.30's schemas,
strictly (unknown fields rejected), offline; KEDA's CRD against a schema of our own; YAML linted."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from types import ModuleType

import pytest

from tests.deploy import keda_schema
from tests.deploy.manifests import DEPLOY, KUBERNETES_VERSION, Manifest, all_of, one, overlay_names

BASE_KINDS = {"ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "NetworkPolicy"}


def kubernetes_validate() -> ModuleType:
    """The package; its absence fails the test (CI runs on this machine: a skip would hide it)."""
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install -e '.[test]' (it ships its schemas, no network).")


def validate_strictly(manifest: Manifest) -> None:
    """kubernetes-validate --strict -k 1.30 for one object; KEDA's CRD against keda_schema.

    The library, not the CLI: the CLI only warns, and passes, on a kind it has no schema for."""
    if (manifest["apiVersion"], manifest["kind"]) in keda_schema.SCHEMAS:
        keda_schema.validate(manifest)
    else:
        kubernetes_validate().validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_documented_overlays_exist():
    assert {"dev", "prod", "keda"} <= set(overlay_names())


def test_every_overlay_renders_the_whole_application(manifests):
    kinds = {m["kind"] for m in manifests}
    assert BASE_KINDS <= kinds
    assert "Secret" not in kinds, "the database Secret is created out of band, never rendered"
    assert len(all_of(manifests, "Deployment")) == 1


def test_the_keda_overlay_adds_a_scaled_object(rendered):
    assert len(all_of(rendered["keda"], "ScaledObject")) == 1
    assert not all_of(rendered["prod"], "ScaledObject")
    assert not all_of(rendered["dev"], "ScaledObject")


def test_every_object_is_valid_for_kubernetes_1_30(manifests):
    import jsonschema

    kv = kubernetes_validate()
    for manifest in manifests:
        try:
            validate_strictly(manifest)
        except (jsonschema.ValidationError, kv.SchemaNotFoundError) as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")


def test_validation_is_strict_and_knows_every_kind(rendered):
    """The checks above would pass vacuously if unknown fields or kinds were let through."""
    kv = kubernetes_validate()
    deployment = copy.deepcopy(one(rendered["prod"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kv.ValidationError):
        validate_strictly(deployment)
    with pytest.raises(kv.SchemaNotFoundError):
        validate_strictly({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_the_keda_schema_rejects_what_keda_would(rendered):
    import jsonschema

    scaled = one(rendered["keda"], "ScaledObject")
    typo = copy.deepcopy(scaled)
    typo["spec"]["minReplicas"] = 1
    unquoted = copy.deepcopy(scaled)
    unquoted["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 5
    unknown_parameter = copy.deepcopy(scaled)
    unknown_parameter["spec"]["triggers"][0]["metadata"]["connectionString"] = "x"
    for bad in (typo, unquoted, unknown_parameter):
        with pytest.raises(jsonschema.ValidationError):
            keda_schema.validate(bad)


def test_yaml_is_lint_clean():
    assert list(DEPLOY.rglob("*.yaml")), "no YAML under deploy/"
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"yamllint (pip install -e '.[test]'):\n{done.stdout}{done.stderr}"
