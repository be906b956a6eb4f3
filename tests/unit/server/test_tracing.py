"""Server tracing: no recorder, exporter or OpenTelemetry package is loaded when no endpoint is set; when one
is, a request's span carries the GenAI attributes, vLLM's latencies and the engine phases as events, and is
parented on the caller's traceparent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from modelyard.otlp.sampling import sampler_from
from modelyard.otlp.span import Span
from modelyard.otlp.tracer import Tracer
from modelyard.server.engine.types import EngineEvent, GenerationOutput, SamplingParams
from modelyard.server.metrics import ServerMetrics
from modelyard.server.tracing import Tracing, endpoint_from, setup, trace_headers_var
from tests.support.roots import pythonpath

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_off_by_default_creates_no_exporter_and_loads_no_sdk() -> None:
    code = textwrap.dedent(
        """
        import sys
        from modelyard.server.app import create_app
        from modelyard.server.settings import ServerSettings
        app = create_app(ServerSettings())
        assert app.state.tracing is None
        # (FastAPI imports the OpenTelemetry API itself: not ours to avoid.)
        prefixes = ("opentelemetry.sdk", "opentelemetry.exporter", "grpc", "modelyard.otlp.")
        loaded = sorted(m for m in sys.modules if m.startswith(prefixes))
        assert not loaded, loaded
        import threading
        assert not [t for t in threading.enumerate() if t.name == "otlp-exporter"]
        print("ok")
        """
    )
    env = {
        "PYTHONPATH": pythonpath(),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_the_endpoint_comes_from_the_flag_or_the_standard_variables() -> None:
    assert endpoint_from(None, {}) is None
    assert endpoint_from("http://c:4317", {}) == "http://c:4317"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318"
    assert endpoint_from(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1"}) == "http://t:1"
    assert endpoint_from("http://c:4317", {"OTEL_SDK_DISABLED": "true"}) is None
    assert setup(None, {}) is None


def _tracing() -> tuple[Tracing, list[Span]]:
    """Finished spans go to a list (the encoder and exporter have tests of their own: tests/unit/otlp)."""
    ended: list[Span] = []
    tracing = Tracing("http://127.0.0.1:9", {}, tracer=Tracer(sampler_from({}), ended.append))
    return tracing, ended


def test_a_request_span_has_genai_attributes_engine_events_and_the_callers_parent() -> None:
    tracing, memory = _tracing()
    metrics = ServerMetrics("m", 512, lambda: None)
    token = trace_headers_var.set({"traceparent": PARENT})
    try:
        params = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9)
        trace = tracing.request("chat", "m", params, "chatcmpl-1", 2, input_tokens=5)
    finally:
        trace_headers_var.reset(token)
    for generated in (3, 4):
        tracker = metrics.track(5, 7, trace=trace)
        events = (EngineEvent("queued", tracker.start - 0.02), EngineEvent("scheduled", tracker.start - 0.01))
        tracker.on_output(GenerationOutput((1,), events=events))
        tracker.on_output(GenerationOutput((2,), finish_reason="length"))
        tracker.finish("length", generated)
    (span,) = memory
    assert span.name == "chat m"
    assert span.trace_id == TRACE_ID
    assert span.parent_id == "00f067aa0ba902b7"
    attrs = dict(span.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "m"
    assert attrs["gen_ai.request.max_tokens"] == 7
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.request.n"] == 2
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["length", "length"]
    assert attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 7
    for key in ("time_in_queue", "time_to_first_token", "e2e"):
        assert float(attrs[f"gen_ai.latency.{key}"]) >= 0.0, key  # type: ignore[arg-type]
    names = [name for _, name, _ in span.events or ()]
    assert names[:4] == ["queued", "scheduled", "prefill_done", "first_token"]
    assert names[-1] == "finished"
    tracing.shutdown()


def test_engine_stamped_phases_become_events_at_the_engines_times_and_the_engine_gets_the_context() -> None:
    tracing, memory = _tracing()
    metrics = ServerMetrics("m", 512, lambda: None)
    trace = tracing.request("text_completion", "m", SamplingParams(max_tokens=2), "cmpl-1", 1, input_tokens=3)
    assert trace.traceparent is not None
    version, trace_id, span_id, flags = trace.traceparent.split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    tracker = metrics.track(3, 2, trace=trace)
    t = tracker.start
    first = (
        EngineEvent("queued", t + 0.001),
        EngineEvent("scheduled", t + 0.002),
        EngineEvent("prefill_done", t + 0.003),
        EngineEvent("first_token", t + 0.004),
    )
    tracker.on_output(GenerationOutput((1,), events=first))
    tracker.on_output(
        GenerationOutput((2,), finish_reason="length", events=(EngineEvent("finished", t + 0.005),))
    )
    tracker.finish("length", 2)
    (span,) = memory
    assert span.trace_id == trace_id
    assert span.span_id == span_id
    names = [name for _, name, _ in span.events or ()]
    assert names == ["queued", "scheduled", "prefill_done", "first_token", "finished"]  # none added twice
    stamps = [at for at, _, _ in span.events or ()]
    offset = tracing.epoch_offset
    assert stamps == [int((t + k * 0.001 + offset) * 1e9) for k in range(1, 6)]
    attrs = dict(span.attributes)
    assert attrs["gen_ai.latency.time_in_queue"] == pytest.approx(0.001, abs=1e-6)
    assert "gen_ai.request.n" not in attrs  # said only when it is not 1
    tracing.shutdown()


def test_an_app_with_tracing_on_serves_and_spans_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat, completions and a stream through the real app with tracing on: one span each, parented on the
    caller's traceparent (finished spans go to a list: no collector needed here)."""
    from fastapi.testclient import TestClient

    from modelyard.server.app import LoadedRuntime, create_app
    from modelyard.server.modelbuild.tinymodel import build_tokenizer
    from modelyard.server.settings import ServerSettings
    from tests.unit.server.fakes import FakeEngine
    from tests.unit.server.test_app import MODEL, _settings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    tokenizer = build_tokenizer("llama")

    async def loader(settings: ServerSettings, progress: Any) -> LoadedRuntime:
        return LoadedRuntime(FakeEngine(), tokenizer, "generate", 64, "/nonexistent")

    app = create_app(_settings(otlp_traces_endpoint="http://127.0.0.1:9"), loader)
    memory: list[Span] = []
    app.state.tracing.tracer.on_end = memory.append
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/ready").status_code == 200:
                break
        headers = {"traceparent": PARENT}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert client.post("/v1/chat/completions", json=chat, headers=headers).status_code == 200
        completion = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
        assert client.post("/v1/completions", json=completion, headers=headers).status_code == 200
    names = sorted(s.name for s in memory)
    assert names == [f"chat {MODEL}", f"text_completion {MODEL}"]
    assert all(s.trace_id == TRACE_ID and s.parent_id == PARENT.split("-")[2] for s in memory)
