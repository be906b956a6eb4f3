"""A tracer exporting to an OTLP endpoint, configured by the standard ``OTEL_*`` variables.

- ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``: ``grpc`` (vLLM's default) or ``http/protobuf``;
- ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``: ``key=value,...``, values percent-decoded;
- ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT``: milliseconds per export (10000);
- ``OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION``: ``gzip`` or none;
- ``OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE``: a CA bundle for TLS; ``..._INSECURE``: gRPC without TLS for an
  endpoint with no scheme (``http://`` is always plaintext, ``https://`` always TLS);
- ``OTEL_TRACES_SAMPLER(_ARG)`` (sampling.py), ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``;
- ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``,
  ``OTEL_BSP_EXPORT_TIMEOUT`` (the batch: 5000 ms, 2048, 512, 30000 ms; the router's queue and batch
  sizes: 8192 and 2048).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import unquote

from modelyard.otlp import http_traces_url, protocol_from
from modelyard.otlp.batch import BatchExporter
from modelyard.otlp.encode import Encoder
from modelyard.otlp.sampling import sampler_from
from modelyard.otlp.span import AttributeValue
from modelyard.otlp.tracer import Tracer
from modelyard.otlp.transport import GrpcTransport, HttpTransport, Transport

if TYPE_CHECKING:
    from modelyard.otlp.loop_export import LoopExporter
    from modelyard.otlp.request_spans import RequestRecorder

log = logging.getLogger("modelyard.otlp")


def build_tracer(endpoint: str, env: Mapping[str, str], default_service: str, scope: str) -> Tracer:
    """A tracer whose sampled spans are batched and exported to ``endpoint`` by a background thread."""
    encoder = Encoder(resource_from(env, default_service), scope)
    exporter = BatchExporter(encoder.request, transport_from(endpoint, env), **batch_from(env))
    return Tracer(sampler_from(env), exporter.add, exporter.shutdown)


# The router's batch when OTEL_BSP_MAX_EXPORT_BATCH_SIZE / OTEL_BSP_MAX_QUEUE_SIZE are unset: four times the
# SDKs' defaults. Each export costs the router the same whatever its size (over gRPC, grpcio's call and
# its threads: ~22k instructions per request at 512 spans, ~0 at 2048; bench/tracing_instructions.py).
ROUTER_MAX_BATCH, ROUTER_MAX_QUEUE = 2048, 8192


def build_loop_recorder(
    endpoint: str,
    env: Mapping[str, str],
    default_service: str,
    scope: str,
    current: ContextVar[Any] | None = None,
) -> tuple[RequestRecorder, LoopExporter]:
    """A recorder of requests' spans (request_spans.py, compiled where it was built), batched and exported
    by a task of the running event loop (no thread; loop_export.py), in batches of up to
    ``ROUTER_MAX_BATCH`` spans unless the environment says otherwise; ``await exporter.aclose()`` sends
    what is left."""
    from modelyard.otlp.loop_export import LoopExporter
    from modelyard.otlp.loop_transport import LoopGrpcTransport, LoopHttpTransport
    from modelyard.otlp.request_spans import recorder_class

    target = _target(endpoint, env)
    transport: LoopGrpcTransport | LoopHttpTransport = (
        LoopGrpcTransport(*target[1:])
        if target[0] == "grpc"
        else LoopHttpTransport(target[1], target[2], target[4], target[5])
    )
    encoder = Encoder(resource_from(env, default_service), scope)
    exporter = LoopExporter(encoder, transport, **batch_from(env, ROUTER_MAX_QUEUE, ROUTER_MAX_BATCH))
    return recorder_class()(sampler_from(env), exporter.add_spans, current), exporter


class BatchSettings(TypedDict):
    schedule_delay_s: float
    max_queue: int
    max_batch: int
    export_timeout_s: float


def batch_from(env: Mapping[str, str], max_queue: int = 2048, max_batch: int = 512) -> BatchSettings:
    """The batch's ``OTEL_BSP_*`` settings, as both exporters take them; unset, the queue and batch sizes
    are the given defaults (the SDKs': 2048 and 512)."""
    return {
        "schedule_delay_s": _number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
        "max_queue": int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", max_queue)),
        "max_batch": int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", max_batch)),
        "export_timeout_s": min(_number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000), _timeout_ms(env)) / 1000,
    }


def transport_from(endpoint: str, env: Mapping[str, str]) -> Transport:
    target = _target(endpoint, env)
    if target[0] == "grpc":
        return GrpcTransport(*target[1:])
    return HttpTransport(target[1], target[2], target[4], target[5])


# (protocol, endpoint or traces URL, headers, gRPC without TLS, compression, CA bundle)
_Target = tuple[str, str, dict[str, str], bool, str, str | None]


def _target(endpoint: str, env: Mapping[str, str]) -> _Target:
    headers = parse_headers(_otlp(env, "HEADERS") or "")
    compression = (_otlp(env, "COMPRESSION") or "").strip().lower()
    certificate = _otlp(env, "CERTIFICATE") or None
    if protocol_from(env) == "grpc":
        if endpoint.startswith("http://"):
            insecure = True
        elif endpoint.startswith("https://"):
            insecure = False
        else:
            insecure = (_otlp(env, "INSECURE") or "false").strip().lower() == "true"
        return "grpc", endpoint, headers, insecure, compression, certificate
    return "http/protobuf", http_traces_url(endpoint), headers, False, compression, certificate


def resource_from(env: Mapping[str, str], default_service: str) -> dict[str, AttributeValue]:
    """``OTEL_RESOURCE_ATTRIBUTES``, then ``service.name`` (``OTEL_SERVICE_NAME`` wins over both)."""
    resource: dict[str, AttributeValue] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "modelyard.otlp",
        "service.name": default_service,
    }
    resource.update(parse_headers(env.get("OTEL_RESOURCE_ATTRIBUTES") or ""))
    if env.get("OTEL_SERVICE_NAME"):
        resource["service.name"] = env["OTEL_SERVICE_NAME"]
    return resource


def parse_headers(value: str) -> dict[str, str]:
    """``key=value,key2=value2`` (the W3C baggage form the OTLP variables use), values percent-decoded;
    malformed members are skipped with a warning."""
    out: dict[str, str] = {}
    for member in value.split(","):
        if not member.strip():
            continue
        key, sep, raw = member.partition("=")
        if not sep or not key.strip():
            log.warning("otlp: ignoring malformed key=value %r", member)
            continue
        out[unquote(key.strip())] = unquote(raw.strip())
    return out


def _otlp(env: Mapping[str, str], name: str) -> str | None:
    """The traces-specific variable, else the general one."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def _timeout_ms(env: Mapping[str, str]) -> float:
    raw = _otlp(env, "TIMEOUT")
    try:
        return float(raw) if raw else 10000.0
    except ValueError:
        log.warning("otlp: OTEL_EXPORTER_OTLP_TIMEOUT %r is not a number of milliseconds", raw)
        return 10000.0


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        log.warning("otlp: %s=%r is not a positive number: using %s", name, raw, default)
        return default
    return value
