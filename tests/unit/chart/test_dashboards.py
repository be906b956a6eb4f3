"""The Grafana dashboards are generated, structurally sound, and every query is valid PromQL (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.tools import CHART_DIR, promtool_path

DASHBOARD_DIR = CHART_DIR / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
RULES = CHART_DIR / "rules" / "modelyard.rules.yaml"
UNITS = {"short", "reqps", "ops", "s", "percentunit"}
INSTALL = "install it with tests/integration/observability/install.sh (Debian package `prometheus`)"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def grafana_to_promql(expr: str, model: str = "some-model") -> str:
    """Substitute Grafana's template variables the way Grafana does before sending a query."""
    return expr.replace("$__rate_interval", "1m").replace("$model", model)


def all_expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every panel."""
    return [
        (d["uid"], p["title"], t["expr"])
        for d in map(load, DASHBOARDS)
        for p in panels(d)
        for t in p["targets"]
    ]


def test_committed_json_is_what_the_generator_writes() -> None:
    sys.path.insert(0, str(CHART_DIR / "hack"))
    try:
        import dashboards as generator
    finally:
        sys.path.pop(0)
    rendered = generator.render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for name, text in rendered.items():
        assert (DASHBOARD_DIR / name).read_text() == text, (
            f"{name} differs: run python charts/modelyard/hack/dashboards.py"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    d = load(path)
    assert d["uid"].startswith("modelyard-")
    assert d["title"].startswith("Modelyard / ")
    assert d["schemaVersion"] >= 39
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] < g["x"] + g["w"] <= 24, p["title"]
        occupied = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not occupied & cells, f"panel {p['title']!r} overlaps another"
        cells |= occupied
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["title"], p["id"]
        assert p["description"], p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        # dashboard-linter's panel-units-rule: every panel says what its numbers are.
        assert p["fieldConfig"]["defaults"]["unit"] in UNITS, p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert t["expr"].strip()
            assert t["legendFormat"]
            # Rates follow Grafana's scrape-aware interval, never a hard-coded window.
            assert "rate(" not in t["expr"] or "[$__rate_interval]" in t["expr"], t["expr"]


def test_fleet_dashboard_covers_what_operators_watch() -> None:
    fleet = load(DASHBOARD_DIR / "modelyard-fleet.json")
    exprs = " ".join(t["expr"] for p in panels(fleet) for t in p["targets"])
    for needle in (
        "modelyard_router_requests_total",
        'code=~"5.."',
        "histogram_quantile(0.5, sum by (le, model) (rate(modelyard_router_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, model) (rate(modelyard_router_time_to_first_token_seconds",
        "modelyard_router_completion_tokens_total",
        "modelyard_router_requests_in_flight",
        "modelyard_router_requests_held",
    ):
        assert needle in exprs


def test_model_dashboard_puts_router_server_and_operator_side_by_side() -> None:
    model = load(DASHBOARD_DIR / "modelyard-model.json")
    assert next(v for v in model["templating"]["list"] if v["name"] == "model")["multi"] is False
    columns: dict[int, set[str]] = {}
    for p in panels(model):
        columns.setdefault(p["gridPos"]["x"], set()).add(p["title"].split(":")[0])
    exprs = " ".join(t["expr"] for p in panels(model) for t in p["targets"])
    for needle in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
        "modelyard_operator_reconcile_errors_total",
        'modelyard_router_endpoints{model="$model", state="ready"}',
        'modelyard_operator_autoscaler_requests{model="$model"}',
        'modelyard_operator_autoscaler_desired_replicas{model="$model"}',
        'modelyard_operator_autoscaler_decisions_total{model="$model"}',
    ):
        assert needle in exprs
    assert columns[0] == {"Router"} or "Router" in columns[0]
    assert "Server" in columns[8]
    assert "Operator" in columns[16]


def _promtool() -> str:
    tool = promtool_path()
    if tool is None:
        pytest.fail(f"promtool is not installed: {INSTALL}")
    return tool


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (after Grafana's variable substitution) as a recording rule."""
    rules = [
        {"record": f"modelyard:dashboard_query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, _, expr) in enumerate(all_expressions())
    ]
    rules_file = tmp_path / "dashboard-queries.rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    # The check above is only worth something if promtool really parses the expressions.
    bad = tmp_path / "bad.rules.yaml"
    bad.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[1m]"}]}]})
    )
    assert subprocess.run([_promtool(), "check", "rules", str(bad)], capture_output=True).returncode != 0


def test_alert_rules_pass_promtool() -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_metric_names_in_dashboards_exist_in_the_components() -> None:
    """Every metric a dashboard queries is declared by the router, the model server or the operator."""
    sources = [
        Path("router/modelyard/router/metrics.py"),
        Path("operator/modelyard/operator/metrics.py"),
        Path("server/modelyard/server/metrics.py"),
    ]
    from tests.unit.chart.tools import REPO_ROOT

    declared = " ".join((REPO_ROOT / s).read_text() for s in sources)
    # Other engines' names for the same quantities (vLLM's renames, SGLang's sglang:*), declared in the
    # generator's ENGINE_NAMES; tests/integration/engines checks vLLM's against a real vLLM.
    sys.path.insert(0, str(CHART_DIR / "hack"))
    try:
        from dashboards import ENGINE_NAMES
    finally:
        sys.path.remove(str(CHART_DIR / "hack"))
    declared += " ".join(f'"{alt}"' for alts in ENGINE_NAMES.values() for alt in alts)
    names = set()
    for _, _, expr in all_expressions():
        names |= set(re.findall(r"\b((?:modelyard|vllm)[:_][a-z_:]+)\b", expr))
    suffixes = ("_bucket", "_total", "_count", "_sum")
    missing = []
    for name in sorted(names):
        base = name
        for suffix in suffixes:
            if base.endswith(suffix) and f'"{base}"' not in declared:
                base = base[: -len(suffix)]
        if f'"{base}"' not in declared and f'"{base}_total"' not in declared:
            missing.append(name)
    assert missing == []
