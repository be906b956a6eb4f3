"""What the chart copies from the operator and router stays equal to their source of truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.render import find, one, render
from tests.unit.chart.tools import CHART_DIR, REPO_ROOT

REPO_CRDS = REPO_ROOT / "crds"
CHART_CRDS = CHART_DIR / "files" / "crds"
FIX = "copy crds/*.yaml into charts/modelyard/files/crds/"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_chart_carries_a_byte_copy_of_every_crd_in_the_repository() -> None:
    repo = sorted(p.name for p in REPO_CRDS.glob("*.yaml"))
    assert repo, "crds/ is empty"
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == repo, FIX
    for name in repo:
        assert (CHART_CRDS / name).read_bytes() == (REPO_CRDS / name).read_bytes(), f"{name} drifted: {FIX}"


def test_rendered_crds_equal_the_repository_crds_apart_from_helm_metadata() -> None:
    rendered = {d["metadata"]["name"]: d for d in find(render(), "CustomResourceDefinition")}
    expected = {d["metadata"]["name"]: d for p in REPO_CRDS.glob("*.yaml") for d in _docs(p)}
    assert set(rendered) == set(expected)
    for name, crd in expected.items():
        assert rendered[name]["spec"] == crd["spec"], name


def test_the_chart_crds_are_what_the_api_models_generate() -> None:
    from modelyard.api import crdgen

    assert (CHART_CRDS / "modelyard.dev_llmmodels.yaml").read_text() == crdgen.render()
    assert (CHART_CRDS / "kopf.dev_peerings.yaml").read_text() == crdgen.render_peering()


def _chart_rules(component: str) -> dict[str, list[dict[str, object]]]:
    rules: dict[str, list[dict[str, object]]] = yaml.safe_load(
        (CHART_DIR / "files" / "rbac" / f"{component}.yaml").read_text()
    )
    return rules


def test_operator_rbac_rules_equal_the_operators_declaration() -> None:
    from modelyard.operator import rbac

    chart = _chart_rules("operator")
    assert chart["namespaced"] + chart["cluster"] == rbac.RULES, (
        "charts/modelyard/files/rbac/operator.yaml drifted from modelyard.operator.rbac.RULES"
    )
    rendered = one(render(), "ClusterRole", "-operator")
    assert rendered["rules"] == rbac.RULES


def test_router_rbac_rules_equal_the_routers_declaration() -> None:
    rbac = pytest.importorskip("modelyard.router.rbac", reason="the router has not declared its RBAC yet")
    chart = _chart_rules("router")
    assert chart["namespaced"] + chart["cluster"] == rbac.RULES
