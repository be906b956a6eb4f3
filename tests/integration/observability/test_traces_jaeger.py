"""Traces end to end, read back from a real Jaeger (built from its Go module by install_jaeger.sh): the
official SDK sends a request with a W3C traceparent through the real router to a real model server
(tiny Llama); both export OTLP to Jaeger (one over http/protobuf, the other over gRPC, then the other way
round), and its query API shows one trace with the router's spans and
the server's span correctly parented, the GenAI attributes and the engine's phases as events. A streamed
request, a request held until its backend appears and a retried attempt show as spans too; a request
preempted in the engine shows the preemption, and the engine's log line about it names its trace."""

from __future__ import annotations

import ast
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from modelyard.server.modelbuild.tinymodel import ensure_tiny_model
from tests.fixtures.models import ServerProcess, start_server
from tests.integration.observability.jaeger import JaegerBuildError, build_jaeger, start_jaeger
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import free_port

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    try:
        binary = build_jaeger()
    except JaegerBuildError as exc:
        pytest.fail(str(exc))
    proc, ports = start_jaeger(binary, tmp_path_factory.mktemp("jaeger"))
    try:
        yield ports
    finally:
        proc.kill()


PORT = {"http/protobuf": "http", "grpc": "grpc"}


@pytest.fixture(
    scope="module",
    params=[("http/protobuf", "grpc"), ("grpc", "http/protobuf")],
    ids=["server-http-router-grpc", "server-grpc-router-http"],
)
def stack(
    request: pytest.FixtureRequest, jaeger: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, ServerProcess, Path]]:
    """Each protocol from each component: the server through vLLM's flag, the router from the OTEL_*
    variables."""
    server_protocol, router_protocol = request.param
    model_dir = ensure_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")
    server = start_server(
        ["--model", str(model_dir), "--served-model-name", MODEL,
         "--alias", "retried", "--alias", "later",
         "--otlp-traces-endpoint", f"http://127.0.0.1:{jaeger[PORT[server_protocol]]}"],
        env={"OTEL_EXPORTER_OTLP_PROTOCOL": server_protocol, "OTEL_SERVICE_NAME": "modelyard-server",
             "OTEL_BSP_SCHEDULE_DELAY": "100"},
        log_dir=tmp_path_factory.mktemp("server"),
    )  # fmt: skip
    tmp = tmp_path_factory.mktemp("router")
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: the first attempt fails, the retry works
    config = write_config(
        tmp / "models.json", {MODEL: [server.base_url], "retried": [refused, server.base_url], "later": []}
    )
    with pytest.MonkeyPatch.context() as env:  # the router process inherits the test's environment
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", router_protocol)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        endpoint = f"http://127.0.0.1:{jaeger[PORT[router_protocol]]}"
        router = start_router(tmp, config, otlp_traces_endpoint=endpoint)
    try:
        yield router, server, config
    finally:
        router.kill()
        server.stop()


def _trace(ports: dict[str, int], trace_id: str, want: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports['query']}/api/traces/{trace_id}", timeout=5
            ) as r:
                data = json.loads(r.read())["data"]
            spans = data[0]["spans"] if data else []
            processes = data[0]["processes"] if data else {}
            for s in spans:
                s["service"] = processes[s["processID"]]["serviceName"]
            if len(spans) >= want:
                return spans
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(
        f"trace {trace_id}: {len(spans)} spans, wanted {want}: {[s['operationName'] for s in spans]}"
    )


def _parent(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _events(span: dict[str, Any]) -> list[str]:
    return [f["value"] for log in span.get("logs", []) for f in log["fields"] if f["key"] == "event"]


def _event_times(span: dict[str, Any]) -> list[int]:
    return [log["timestamp"] for log in span.get("logs", [])]


def _client(router: Proc, trace_id: str, parent_id: str) -> openai.OpenAI:
    header = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    return openai.OpenAI(
        base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=120, default_headers=header
    )


def _ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def test_one_trace_router_then_server_with_genai_attributes_and_engine_events(
    jaeger: dict[str, int], stack: tuple[Proc, ServerProcess, Path]
) -> None:
    router, _, _ = stack
    trace_id, parent_id = _ids()
    _client(router, trace_id, parent_id).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.5, top_p=0.9
    )
    spans = _trace(jaeger, trace_id, want=4)
    by_name = {s["operationName"]: s for s in spans}
    root = by_name["POST /v1/chat/completions"]
    assert root["service"] == "modelyard-router"
    assert _parent(root) == parent_id  # the client's traceparent is continued
    attempt = by_name["router.upstream_attempt"]
    assert _parent(attempt) == root["spanID"]
    assert _parent(by_name["router.relay"]) == attempt["spanID"]
    server = by_name[f"chat {MODEL}"]
    assert server["service"] == "modelyard-server"
    assert _parent(server) == attempt["spanID"]  # the attempt's context reached the pod
    tags = _tags(server)
    assert tags["gen_ai.operation.name"] == "chat"
    assert tags["gen_ai.request.model"] == MODEL
    assert tags["gen_ai.request.max_tokens"] == 4
    assert tags["gen_ai.request.temperature"] == 0.5
    assert tags["gen_ai.request.top_p"] == 0.9
    assert tags["gen_ai.response.id"].startswith("chatcmpl")
    assert tags["gen_ai.usage.input_tokens"] > 0
    assert 0 < tags["gen_ai.usage.output_tokens"] <= 4
    assert "gen_ai.response.finish_reasons" in tags
    for key in ("time_in_queue", "time_to_first_token", "e2e"):
        assert tags[f"gen_ai.latency.{key}"] >= 0
    # The engine's phases, stamped in the engine process, in the order and at the times they happened.
    assert _events(server) == ["queued", "scheduled", "prefill_done", "first_token", "finished"]
    stamps = _event_times(server)
    assert stamps == sorted(stamps)
    assert server["startTime"] <= stamps[0]
    assert stamps[-1] <= server["startTime"] + server["duration"]


def test_a_stream_a_held_request_and_a_retried_attempt_show_as_spans(
    jaeger: dict[str, int], stack: tuple[Proc, ServerProcess, Path]
) -> None:
    router, server, config = stack
    trace_id, parent_id = _ids()
    stream = _client(router, trace_id, parent_id).completions.create(
        model=MODEL, prompt="Once", max_tokens=4, stream=True
    )
    assert list(stream)
    names = [s["operationName"] for s in _trace(jaeger, trace_id, want=4)]
    assert "router.relay" in names
    assert f"text_completion {MODEL}" in names

    # The balancer picks the refusing endpoint first only by chance (least load, random ties): send
    # requests until one is retried; each one that is shows both attempts as spans.
    attempts: list[dict[str, Any]] = []
    for _ in range(12):
        trace_id, parent_id = _ids()
        _client(router, trace_id, parent_id).completions.create(model="retried", prompt="x", max_tokens=2)
        spans = _trace(jaeger, trace_id, want=4)
        attempts = [s for s in spans if s["operationName"] == "router.upstream_attempt"]
        if len(attempts) >= 2:
            break
    assert len(attempts) >= 2, "no request was retried"

    trace_id, parent_id = _ids()
    done: list[Any] = []
    held = threading.Thread(
        target=lambda: done.append(
            _client(router, trace_id, parent_id).completions.create(model="later", prompt="x", max_tokens=2)
        )
    )
    held.start()
    time.sleep(1.0)  # held: no endpoint yet
    write_config(config, {MODEL: [server.base_url], "retried": [server.base_url], "later": [server.base_url]})
    held.join(60)
    assert done
    names = [s["operationName"] for s in _trace(jaeger, trace_id, want=4)]
    assert "router.hold" in names


@pytest.fixture(scope="module")
def small_kv_server(
    jaeger: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server whose KV pool holds 64 tokens: three rows of 10 + 40 tokens outgrow it, so one is
    preempted."""
    model_dir = ensure_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny-llama")
    server = start_server(
        ["--model", str(model_dir), "--served-model-name", MODEL,
         "--kv-cache-tokens", "64", "--no-enable-prefix-caching",
         "--otlp-traces-endpoint", f"http://127.0.0.1:{jaeger['http']}"],
        env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "100"},
        log_dir=tmp_path_factory.mktemp("small-kv-server"),
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


def test_a_preempted_request_shows_the_preemption_and_the_engine_logs_carry_its_trace_id(
    jaeger: dict[str, int], small_kv_server: ServerProcess
) -> None:
    ids = [_ids() for _ in range(3)]

    def send(index: int) -> None:
        trace_id, parent_id = ids[index]
        client = openai.OpenAI(
            base_url=small_kv_server.v1, api_key="unused", max_retries=0, timeout=120,
            default_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )  # fmt: skip
        prompt = [3 + (index * 37 + i * 11) % 500 for i in range(10)]
        client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    spans = [_trace(jaeger, trace_id, want=1)[0] for trace_id, _ in ids]
    preempted = [s for s in spans if "preempted" in _events(s)]
    assert preempted, [_events(s) for s in spans]
    for span in spans:
        events, stamps = _events(span), _event_times(span)
        assert stamps == sorted(stamps), events
        assert events[:2] == ["queued", "scheduled"], events
        assert events[-1] == "finished", events
        assert events.count("first_token") == 1, events
        # Each preemption sends the request back to the queue: scheduled and prefilled once more.
        assert events.count("scheduled") == events.count("prefill_done") == events.count("preempted") + 1
    # The engine process's own log line about the preemption names the trace it belongs to.
    trace_ids = {span["traceID"] for span in preempted}
    lines = [
        json.loads(line)
        for line in small_kv_server.log_path.read_text().splitlines()
        if '"trace_ids"' in line
    ]
    named = {
        t
        for line in lines
        if line.get("msg", "").startswith("KV cache full")
        for t in _list(line["trace_ids"])
    }
    assert trace_ids <= named, (trace_ids, lines)


def _list(value: Any) -> list[str]:
    """A list field of a JSON log line (non-scalar extras are written as their repr)."""
    return value if isinstance(value, list) else ast.literal_eval(value)
