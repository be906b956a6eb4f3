"""CPU cost of the router's spans, in one process, side by side: recording a request's three spans (server
span, upstream attempt, relay) and encoding them to OTLP protobuf, with modelyard.otlp's recorder and
hand-written encoder vs the same spans built as opentelemetry-proto messages vs OpenTelemetry's Python SDK
(its tracer and its OTLP encoder, where installed).

    python bench/otlp_encoding.py [--requests 2000] [--rounds 7]

CPU time (process_time) per request, median and range over the rounds, variants interleaved in each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from modelyard.otlp.encode import Encoder  # noqa: E402
from modelyard.otlp.propagation import extract  # noqa: E402
from modelyard.otlp.sampling import sampler_from  # noqa: E402
from modelyard.otlp.span import SERVER, Span  # noqa: E402
from modelyard.otlp.tracer import Tracer  # noqa: E402

HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
RESOURCE = {"service.name": "modelyard-router", "telemetry.sdk.language": "python"}


def record_ours(tracer: Tracer) -> None:
    parent = extract(HEADERS)
    with tracer.start_span(
        "POST /v1/completions",
        SERVER,
        [("http.request.method", "POST"), ("url.path", "/v1/completions")],
        parent,
    ) as root:
        with tracer.start_span(
            "router.upstream_attempt",
            attributes={"attempt": 1, "server.address": "http://10.0.0.7:8000"}.items(),
        ):
            headers: dict[str, str] = {}
            tracer.inject(headers)
            with tracer.start_span("router.relay", attributes={"http.response.status_code": 200}.items()):
                pass
        root.set_attribute("http.response.status_code", 200)


def sdk_variant() -> tuple[Callable[[], None], Callable[[], bytes]] | None:
    """The SDK's tracer (spans to a list) and its OTLP encoder, as the router used them before."""
    try:
        from opentelemetry import propagate
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.trace import SpanKind
    except ImportError:
        return None
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("modelyard.router")

    def record() -> None:
        with tracer.start_as_current_span(
            "POST /v1/completions", context=propagate.extract(HEADERS), kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": "/v1/completions"},
        ) as root:  # fmt: skip
            with tracer.start_as_current_span(
                "router.upstream_attempt", attributes={"attempt": 1, "server.address": "http://10.0.0.7:8000"}
            ):
                headers: dict[str, str] = {}
                propagate.inject(headers)
                with tracer.start_as_current_span(
                    "router.relay", attributes={"http.response.status_code": 200}
                ):
                    pass
            root.set_attribute("http.response.status_code", 200)

    def encode() -> bytes:
        spans = memory.get_finished_spans()
        memory.clear()
        return bytes(encode_spans(spans).SerializeToString())

    return record, encode


def encode_with_proto_classes(spans: list[Span]) -> bytes:
    """The same request built from our spans with opentelemetry-proto's generated classes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1 import trace_pb2

    def value(v: Any) -> AnyValue:
        if isinstance(v, bool):
            return AnyValue(bool_value=v)
        if isinstance(v, int):
            return AnyValue(int_value=v)
        if isinstance(v, float):
            return AnyValue(double_value=v)
        return AnyValue(string_value=str(v))

    out = []
    for s in spans:
        out.append(
            trace_pb2.Span(
                trace_id=bytes.fromhex(s.trace_id),
                span_id=bytes.fromhex(s.span_id),
                parent_span_id=bytes.fromhex(s.parent_id) if s.parent_id else b"",
                name=s.name,
                kind=s.kind,  # type: ignore[arg-type]
                start_time_unix_nano=s.start_ns,
                end_time_unix_nano=s.end_ns,
                attributes=[KeyValue(key=k, value=value(v)) for k, v in s.attributes],
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource={"attributes": [KeyValue(key=k, value=value(v)) for k, v in RESOURCE.items()]},
                scope_spans=[trace_pb2.ScopeSpans(scope={"name": "modelyard.router"}, spans=out)],
            )
        ]
    )
    return bytes(request.SerializeToString())


def per_request_us(work: Callable[[], Any], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        work()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="requests per encoded batch")
    parser.add_argument(
        "--out", type=Path, help="also write the JSON here (bench/results/otlp_encoding.json)"
    )
    args = parser.parse_args()
    ended: list[Span] = []
    tracer = Tracer(sampler_from({}), ended.append)
    encoder = Encoder(RESOURCE, "modelyard.router")
    sdk = sdk_variant()
    for _ in range(args.batch):
        record_ours(tracer)
    spans = list(ended)

    variants: dict[str, Callable[[], Any]] = {
        "record: modelyard.otlp": lambda: (record_ours(tracer), ended.clear()),
        "encode: hand-written": lambda: encoder.request(spans),
        "encode: opentelemetry-proto classes": lambda: encode_with_proto_classes(spans),
    }
    batches = {"encode: hand-written", "encode: opentelemetry-proto classes", "encode: SDK encoder"}
    if sdk is not None:
        sdk_record, sdk_encode = sdk
        variants["record: OpenTelemetry SDK"] = sdk_record

        def sdk_encode_batch() -> bytes:
            for _ in range(args.batch):
                sdk_record()
            start = time.process_time()
            body = sdk_encode()
            sdk_encode_batch.spent += time.process_time() - start  # type: ignore[attr-defined]
            return body

        sdk_encode_batch.spent = 0.0  # type: ignore[attr-defined]
        variants["encode: SDK encoder"] = sdk_encode_batch
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, work in variants.items():
            if name == "encode: SDK encoder":
                sdk_encode_batch.spent = 0.0  # type: ignore[attr-defined]
                n = max(1, args.requests // args.batch)
                for _ in range(n):
                    work()
                results[name].append(sdk_encode_batch.spent / (n * args.batch) * 1e6)  # type: ignore[attr-defined]
            elif name in batches:
                n = max(1, args.requests // args.batch)
                results[name].append(per_request_us(work, n) / args.batch)
            else:
                results[name].append(per_request_us(work, args.requests))
    for name, values in results.items():
        print(
            f"{name:40s} {statistics.median(values):7.1f} us/request (3 spans) "
            f"[{min(values):.1f}, {max(values):.1f}]"
        )
    print(json.dumps(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
