"""Model pods learn the chart's tracing endpoint each in their engine's way; nothing without one."""

from __future__ import annotations

from typing import Any

from modelyard.operator.builders.deployment import build_deployment
from tests.unit.operator.factories import SETTINGS, model

TRACED = SETTINGS.model_copy(update={"otlp_traces_endpoint": "http://collector.monitoring:4317"})


def _container(settings: Any, **spec: Any) -> dict[str, Any]:
    (container,) = build_deployment(model(**spec), settings)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_no_endpoint_no_tracing_anywhere() -> None:
    for engine in ("modelyard", "vllm", "sglang"):
        c = _container(SETTINGS, engine=engine)
        assert not any(e["name"].startswith("OTEL_") for e in c["env"])
        assert "--otlp-traces-endpoint" not in c["args"]


def test_each_engine_gets_the_endpoint_its_own_way() -> None:
    builtin = _container(TRACED)
    assert _env(builtin)["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://collector.monitoring:4317"
    assert _env(builtin)["OTEL_TRACES_SAMPLER_ARG"] == "1.0"
    assert "--otlp-traces-endpoint" not in builtin["args"]  # the built-in server reads OTEL_*
    vllm = _container(TRACED, engine="vllm")
    i = vllm["args"].index("--otlp-traces-endpoint")
    assert vllm["args"][i + 1] == "http://collector.monitoring:4317"
    sglang = _container(TRACED, engine="sglang")
    assert "--enable-trace" in sglang["args"]
    i = sglang["args"].index("--otlp-traces-endpoint")
    assert sglang["args"][i + 1] == "collector.monitoring:4317"
