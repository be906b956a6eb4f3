"""The committed CRD is exactly what the generator renders, and it is a valid structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from modelyard.api import crdgen

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crd_matches_the_generator() -> None:
    committed = (ROOT / crdgen.CRD_PATH).read_text()
    assert committed == crdgen.render(), (
        f"{crdgen.CRD_PATH} is stale: run `python -m modelyard.api.crdgen > {crdgen.CRD_PATH}`"
    )


def test_committed_peering_crds_match_the_generator() -> None:
    assert (ROOT / crdgen.PEERING_CRD_PATH).read_text() == crdgen.render_peering()


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / crdgen.CRD_PATH).read_text())
    version = doc["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"])


def test_identity_names_and_subresources() -> None:
    doc = crdgen.crd()
    assert doc["metadata"]["name"] == "llmmodels.modelyard.dev"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LLMModel", "llmmodels", ["llm", "llms"])
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_printer_columns_cover_model_ready_replicas_gpus_reason_age() -> None:
    columns = {c["name"]: c["jsonPath"] for c in crdgen.PRINTER_COLUMNS}
    assert columns["Model"] == ".spec.url"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Replicas"] == ".status.replicaSummary"
    assert columns["GPUs"] == ".spec.resources.gpus"
    assert columns["Reason"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        assert not {"$ref", "title", "const"} & node.keys(), path  # the API server refuses `const`
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert not {"anyOf", "allOf"} & node.keys(), path
        assert "type" in node, f"{path} has no type"


def test_every_spec_field_is_documented(schema: dict[str, Any]) -> None:
    undocumented = [p for p, n in _walk(schema["properties"]["spec"], ".spec") if "description" not in n]
    # Items of documented lists/maps inherit their parent's description.
    assert [p for p in undocumented if not p.endswith(("[]", "{}"))] == []


def test_defaults_are_in_the_schema(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["task"]["default"] == "generate"
    assert spec["task"]["enum"] == ["generate", "embed"]
    assert spec["resources"]["properties"]["gpuResourceName"]["default"] == "nvidia.com/gpu"
    assert spec["resources"]["properties"]["gpus"]["default"] == 1
    assert spec["server"]["properties"]["dtype"]["default"] == "auto"
    assert spec["loadBalancing"]["properties"]["strategy"]["enum"] == ["LeastLoad", "PrefixHash"]


def test_cel_rules_carry_clear_messages(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    messages = {r["message"] for _, node in _walk(spec) for r in node.get("x-kubernetes-validations", [])}
    assert any("supported schemes: hf, pvc, s3" in m for m in messages)
    assert "resources.gpus must be >= 0 (0 runs on CPU)" in messages
    assert "autoscaling.minReplicas must be <= autoscaling.maxReplicas" in messages
    assert any(m.startswith("cache: set exactly one of") for m in messages)
    assert any(m.startswith("resources.gpuResourceName must be an extended resource name") for m in messages)
    # CEL cost estimation needs bounded strings for regex rules.
    assert spec["properties"]["url"]["maxLength"] == 1024


def test_status_conditions_are_a_map_keyed_by_type(schema: dict[str, Any]) -> None:
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def _without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _without_cel(v)
            for k, v in node.items()
            if not k.startswith("x-kubernetes") or k == "x-kubernetes-int-or-string"
        }
    if isinstance(node, list):
        return [_without_cel(v) for v in node]
    return node


def test_example_manifest_validates_against_the_openapi_part(schema: dict[str, Any]) -> None:
    example: dict[str, Any] = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "LLMModel",
        "metadata": {"name": "llama"},
        "spec": {
            "url": "hf://meta-llama/Llama-3.1-8B-Instruct",
            "resources": {"gpus": 2, "cpu": "8", "memory": "64Gi"},
            "cache": {"size": "100Gi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
        },
    }
    jsonschema.validate(example, _without_cel(schema))
    bad = {**example, "spec": {**example["spec"], "task": "classify"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _without_cel(schema))


def test_committed_reference_doc_matches_the_generator() -> None:
    assert (ROOT / crdgen.DOCS_PATH).read_text() == crdgen.render_docs(), (
        f"{crdgen.DOCS_PATH} is stale: run `python -m modelyard.api.crdgen --docs > {crdgen.DOCS_PATH}`"
    )


def test_reference_doc_lists_every_spec_field() -> None:
    doc = crdgen.render_docs()
    for path, _ in _walk(crdgen.openapi_schema()["properties"]["spec"], "spec"):
        if path != "spec" and not path.endswith(("[]", "{}")):
            assert f"| `{path}`" in doc, path


def test_the_resources_default_on_the_api_server_matches_the_operators(schema: dict[str, Any]) -> None:
    from modelyard.api.llmmodel import Resources

    assert schema["properties"]["spec"]["properties"]["resources"]["default"] == Resources().to_wire()
