"""The one OTLP set-up the router and the server share (modelyard/otlp): endpoint, protocol, headers, batch
and service name from the standard OTEL_* variables."""

from __future__ import annotations

from modelyard.otlp import endpoint_from, http_traces_url
from modelyard.otlp.build import parse_headers, resource_from, transport_from
from modelyard.otlp.transport import GrpcTransport, HttpTransport


def test_the_endpoint_comes_from_the_flag_or_the_standard_variables_unless_disabled() -> None:
    assert endpoint_from(None, {}) is None
    assert endpoint_from("http://c:4317", {}) == "http://c:4317"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1"}) == "http://t:1"
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "false"}) == "http://c:4317"


def test_grpc_by_default_http_protobuf_posts_to_v1_traces() -> None:
    grpc = transport_from("http://127.0.0.1:4317", {})
    assert isinstance(grpc, GrpcTransport)
    grpc.close()
    http = transport_from("http://c:4318", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert isinstance(http, HttpTransport)
    assert http_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert http_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_headers_are_key_value_pairs_percent_decoded() -> None:
    assert parse_headers("api-key=a%20b, x=1,broken,=nokey") == {"api-key": "a b", "x": "1"}
    assert parse_headers("") == {}


def test_the_resource_names_the_service_from_the_environment() -> None:
    assert resource_from({}, "modelyard-test")["service.name"] == "modelyard-test"
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=from-attrs"}
    resource = resource_from(env, "modelyard-test")
    assert resource["service.name"] == "from-attrs"
    assert resource["deployment.environment"] == "prod"
    named = resource_from({**env, "OTEL_SERVICE_NAME": "mine"}, "modelyard-test")
    assert named["service.name"] == "mine"
