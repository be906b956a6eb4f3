"""The HTTP layer over a scripted engine: envelopes, streaming, stop strings, n, queue-full, load states."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelyard.server.app import LoadedRuntime, ProgressFn, create_app
from modelyard.server.engine.types import QueueFullError
from modelyard.server.modelbuild.tinymodel import build_tokenizer
from modelyard.server.settings import ServerSettings
from modelyard.server.token_text import bytes_to_unicode
from tests.unit.server.fakes import FakeEngine

MODEL = "fake-model"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer("llama")


def _settings(**overrides: Any) -> ServerSettings:
    return ServerSettings(model="/nonexistent", served_model_name=MODEL, alias=["org/alias"], **overrides)


def _client(engine: FakeEngine, tokenizer: Any, **overrides: Any) -> TestClient:
    async def loader(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
        progress("fake", 0.5)
        return LoadedRuntime(engine, tokenizer, "generate", 64, "/nonexistent")

    return TestClient(create_app(_settings(**overrides), loader))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine, tokenizer: Any) -> Iterator[TestClient]:
    with _client(engine, tokenizer) as c:
        _wait_ready(c)
        yield c


def _wait_ready(client: TestClient) -> None:
    for _ in range(200):
        if client.get("/ready").status_code == 200:
            return
        threading.Event().wait(0.01)
    raise AssertionError("never ready")


@contextlib.contextmanager
def _released(gate: threading.Event) -> Iterator[None]:
    """Open ``gate`` however the block ends: a loader thread left waiting would hang the test's exit."""
    try:
        yield
    finally:
        gate.set()


def _ids(tokenizer: Any, *pieces: str) -> list[list[int]]:
    return [tokenizer.encode(p, add_special_tokens=False) for p in pieces]


def _sse(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_ready_and_health_are_503_with_progress_until_loaded(tokenizer: Any) -> None:
    """/health is the startup probe too: 200 during a load would spend none of its failure budget."""
    gate = threading.Event()

    async def slow_loader(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
        progress("downloading", 0.25)
        await asyncio.to_thread(gate.wait)
        return LoadedRuntime(FakeEngine(), tokenizer, "generate", 64, "x")

    with TestClient(create_app(_settings(), slow_loader)) as client, _released(gate):
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "loading", "stage": "downloading"}
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["stage"] == "downloading"
        assert ready.json()["progress"] == 0.25
        early = client.get("/v1/models")
        assert early.status_code == 503
        assert early.json()["error"]["type"] == "service_unavailable"
        assert "retry-after" in early.headers
        gate.set()
        _wait_ready(client)
        assert client.get("/v1/models").status_code == 200
        assert client.get("/health").json() == {"status": "ok"}


def test_a_dead_engine_fails_liveness_and_readiness(engine: FakeEngine, client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    engine.dead_reason = "the engine loop stopped: RuntimeError('CUDA error')"
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json() == {"status": "failed", "error": engine.dead_reason}
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["error"] == engine.dead_reason


def test_models_do_not_show_the_weights_path(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["data"]
    one = client.get("/v1/models/org/alias").json()
    assert "/nonexistent" not in json.dumps(listed) + json.dumps(one)
    assert {card["root"] for card in listed} == {MODEL}


def test_a_failed_load_fails_health_and_ready(tokenizer: Any) -> None:
    async def broken(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
        raise OSError("no such model")

    with TestClient(create_app(_settings(), broken)) as client:
        for _ in range(100):
            if client.get("/health").status_code == 503:
                break
            threading.Event().wait(0.01)
        assert client.get("/health").json()["status"] == "failed"
        assert client.get("/ready").json()["error"] == "OSError: no such model"


def test_stop_string_split_across_engine_outputs_is_cut_and_aborts(
    engine: FakeEngine, client: TestClient, tokenizer: Any
) -> None:
    engine.script = _ids(tokenizer, "hello wor", "ld ST", "OP ", "more text")
    engine.delay_s = 0.05  # a real engine takes a step per token: the abort lands before the end
    body = {"model": MODEL, "prompt": "x", "max_tokens": 50, "stop": ["STOP"], "stream": True}
    resp = client.post("/v1/completions", json=body)
    chunks = _sse(resp.text)
    assert chunks[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1] if c["choices"])
    assert text == "hello world "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert engine.closed  # the engine request was aborted, not run to the end
    full = client.post("/v1/completions", json={**body, "stream": False}).json()
    assert full["choices"][0]["text"] == "hello world "


def test_multibyte_characters_split_over_outputs_stream_whole(
    engine: FakeEngine, client: TestClient, tokenizer: Any
) -> None:
    byte_char = bytes_to_unicode()
    engine.script = [[tokenizer.convert_tokens_to_ids(byte_char[b])] for b in "a😀b".encode()]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 6}
    chunks = _sse(client.post("/v1/chat/completions", json=body).text)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1] if c["choices"]]
    assert "".join(x or "" for x in contents) == "a😀b"
    assert not any("\ufffd" in (x or "") for x in contents)


def test_n_requests_use_consecutive_seeds(engine: FakeEngine, client: TestClient) -> None:
    out = client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "n": 3, "seed": 10, "max_tokens": 3}
    )
    assert out.status_code == 200
    assert [c["index"] for c in out.json()["choices"]] == [0, 1, 2]
    assert [r.params.seed for r in engine.requests] == [10, 11, 12]
    assert len({r.request_id for r in engine.requests}) == 3
    assert out.json()["usage"]["completion_tokens"] == 9


def test_usage_reports_cached_prompt_tokens_once_per_prompt(engine: FakeEngine, client: TestClient) -> None:
    engine.cached = 3
    body = {"model": MODEL, "max_tokens": 2}
    completion = client.post("/v1/completions", json={**body, "prompt": ["a b c d", "e f g h"], "n": 2})
    chat = client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]})
    assert completion.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 6}
    assert chat.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


def test_sampling_parameters_reach_the_engine(engine: FakeEngine, client: TestClient) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"7": -100},
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "ignore_eos": True,
        "min_tokens": 2,
        "max_completion_tokens": 9,
        "unknown_field": {"ignored": True},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    params = engine.requests[-1].params
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.5, 0.9, 5, 0.1)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.5, -0.5, 1.2)
    assert params.logit_bias == {7: -100}
    assert (params.ignore_eos, params.min_tokens, params.max_tokens) == (True, 2, 9)


def test_retry_after_grows_with_the_queue_it_must_drain(engine: FakeEngine, client: TestClient) -> None:
    """Not a constant 1 s: the waiting requests over the measured completion rate, at most 60 s."""
    for _ in range(3):
        assert client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}).status_code == 200
    engine.queue_full = True
    engine.waiting = 500
    long = client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert long.status_code == 429
    assert int(long.headers["retry-after"]) == 60  # 500 waiting at a few per second: clamped
    assert int(long.headers["retry-after-ms"]) == 60_000
    engine.waiting = 0
    short = client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert 1 <= int(short.headers["retry-after"]) < 60


def test_queue_full_is_429_with_retry_after(engine: FakeEngine, client: TestClient) -> None:
    engine.queue_full = True
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    assert resp.headers["retry-after-ms"] == "2500"
    assert resp.json()["error"]["type"] == "rate_limit_error"


def test_engine_failure_mid_stream_is_an_error_event_then_done(
    engine: FakeEngine, client: TestClient
) -> None:
    engine.fail_at = 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    chunks = _sse(resp.text)
    assert chunks[-1] == "[DONE]"
    assert set(chunks[-2]) == {"error"}
    assert set(chunks[-2]["error"]) == {"message", "type", "param", "code"}


def test_engine_failure_before_any_output_is_a_plain_json_error(
    engine: FakeEngine, client: TestClient
) -> None:
    engine.fail_at = 0
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["type"] == "server_error"


def test_validation_errors_are_400_with_the_parameter_path(client: TestClient) -> None:
    resp = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": 5}]}
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"].startswith("messages[0].content")


def test_request_id_and_api_key(engine: FakeEngine, tokenizer: Any) -> None:
    with _client(engine, tokenizer, api_key="sekret") as client:
        _wait_ready(client)
        denied = client.get("/v1/models", headers={"x-request-id": "abc"})
        assert denied.status_code == 401
        assert denied.headers["x-request-id"] == "abc"
        assert denied.json()["error"]["code"] == "invalid_api_key"
        ok = client.get("/v1/models/org/alias", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert ok.json()["id"] == "org/alias"
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_metrics_use_vllm_names_and_count_finished_requests(client: TestClient) -> None:
    client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3})
    text = client.get("/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
    ):
        assert f"{name}" in text, name
    success = 'vllm:request_success_total{engine="0",finished_reason="length",model_name="fake-model"} 1.0'
    assert success in text
    assert 'vllm:generation_tokens_total{engine="0",model_name="fake-model"} 3.0' in text
    assert 'vllm:request_params_n_count{engine="0",model_name="fake-model"} 1.0' in text
    assert 'vllm:request_params_max_tokens_sum{engine="0",model_name="fake-model"} 3.0' in text


def test_embedding_queue_full_is_429(tokenizer: Any) -> None:
    class FullEmbedder(FakeEngine):
        async def embed(self, batch: list[list[int]]) -> list[list[float]]:
            raise QueueFullError(retry_after_s=1.0)

    async def loader(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
        return LoadedRuntime(FullEmbedder(), tokenizer, "embed", 64, "x")

    with TestClient(create_app(_settings(task="embed"), loader)) as client:
        _wait_ready(client)
        resp = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "1"
        ok = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi", "encoding_format": "base64"})
        assert ok.status_code == 429  # still full: refused again, never a 500
