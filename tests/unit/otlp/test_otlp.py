"""The one OTLP set-up the router and the server share (modelyard/otlp): endpoint, protocol and service
name from the standard OTEL_* variables."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from modelyard.otlp import endpoint_from, http_traces_url, span_exporter, tracer_provider


def test_the_endpoint_comes_from_the_flag_or_the_standard_variables_unless_disabled() -> None:
    assert endpoint_from(None, {}) is None
    assert endpoint_from("http://c:4317", {}) == "http://c:4317"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1"}) == "http://t:1"
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "false"}) == "http://c:4317"


def test_grpc_by_default_http_protobuf_posts_to_v1_traces() -> None:
    assert isinstance(span_exporter("http://c:4317", {}), GrpcExporter)
    http = span_exporter("http://c:4318", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert isinstance(http, HttpExporter)
    assert http_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert http_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_the_provider_names_the_service_and_sizes_its_batches_from_the_environment() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    provider = tracer_provider("http://127.0.0.1:9", env, "modelyard-test")
    try:
        assert provider.resource.attributes["service.name"] == "modelyard-test"
        assert len(provider._active_span_processor._span_processors) == 1
    finally:
        provider.shutdown()
    named = tracer_provider("http://127.0.0.1:9", {**env, "OTEL_SERVICE_NAME": "mine"}, "modelyard-test")
    assert named.resource.attributes["service.name"] == "mine"
    named.shutdown()
