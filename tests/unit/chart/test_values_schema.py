"""values.schema.json turns bad values into a clear error at install time, and documents every value."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import yaml

from tests.unit.chart.render import render_error
from tests.unit.chart.tools import CHART_DIR, REPO_ROOT

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["operator.replicas=-1"], "at '/operator/replicas': minimum: got -1, want 0"),
        (["router.replicas=two"], "at '/router/replicas': got string, want integer"),
        (["router.service.type=Ingress"], "at '/router/service/type': value must be one of"),
        (["router.port=70000"], "at '/router/port': maximum: got 70,000, want 65,535"),
        (["router.logLevel=verbose"], "at '/router/logLevel': value must be one of"),
        (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy': value must be one of"),
        (["image.digest=latest"], "at '/image/digest'"),
        (["router.autoscaling.targetCPUUtilizationPercentage=0"], "targetCPUUtilizationPercentage"),
        (["router.maxBodyBytes=10"], "at '/router/maxBodyBytes': minimum"),
        (["watchNamespaces={Bad_NS}"], "at '/watchNamespaces/0'"),
        (["metrics.serviceMonitor.interval=soon"], "at '/metrics/serviceMonitor/interval'"),
        (["router.pdb.minAvailable=half"], "at '/router/pdb/minAvailable'"),
        (["operatr.replicas=2"], "additional properties 'operatr' not allowed"),
        (["router.replica=2"], "at '/router': additional properties 'replica' not allowed"),
        (["image.repository="], "at '/image/repository': minLength"),
    ],
)
def test_invalid_values_fail_with_a_message_naming_the_value(sets: list[str], message: str) -> None:
    err = render_error(*sets)
    assert "values don't meet the specifications of the schema" in err
    assert message in err, err


def test_api_keys_enabled_without_keys_or_secret_is_refused() -> None:
    err = render_error("router.apiKeys.enabled=true")
    assert "router.apiKeys.keys (or router.apiKeys.existingSecret) is required" in err


def _leaves(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every values.yaml key must be declared in the schema, with a description."""
    missing: list[str] = []
    if not isinstance(values, dict) or "properties" not in schema:
        return missing
    for key, value in values.items():
        sub = schema["properties"].get(key)
        if sub is None or not sub.get("description"):
            missing.append(f"{path}{key}")
            continue
        missing += _leaves(value, sub, f"{path}{key}.")
    return missing


def test_every_value_is_declared_and_described_in_the_schema() -> None:
    assert _leaves(VALUES, SCHEMA) == []


def test_every_value_has_a_helm_docs_comment_and_docs_helm_md_lists_it() -> None:
    sys.path.insert(0, str(CHART_DIR / "hack"))
    try:
        import values_table
    finally:
        sys.path.pop(0)
    documented = {key for key, _ in values_table.documented_keys((CHART_DIR / "values.yaml").read_text())}

    def undocumented(values: dict[str, Any], prefix: str = "") -> list[str]:
        missing = []
        for key, value in values.items():
            path = f"{prefix}{key}"
            if path in documented:
                continue
            if isinstance(value, dict) and value:
                missing += undocumented(value, f"{path}.")
            else:
                missing.append(path)
        return missing

    assert undocumented(VALUES) == []
    doc = (REPO_ROOT / "docs" / "helm.md").read_text()
    assert values_table.render_doc(doc) == doc, "run python charts/modelyard/hack/values_table.py"


def test_defaults_satisfy_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(SCHEMA).validate(VALUES)
