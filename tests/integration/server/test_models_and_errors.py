"""The server answers bad input with the OpenAI error envelope (4xx, never 422) and keeps serving."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.models import LLAMA_ALIAS, LLAMA_NAME, TEST_API_KEY, ServerProcess, start_server
from tests.fixtures.openai_spec import assert_matches
from tests.integration.server.helpers import auth

pytestmark = pytest.mark.model


def _post(server: ServerProcess, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**auth(server), **kwargs.pop("headers", {})}
    return httpx.post(server.v1 + path, headers=headers, timeout=60, **kwargs)


def _assert_envelope(
    resp: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert_matches("ErrorResponse", body)
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert resp.headers.get("x-request-id")


def _still_serving(server: ServerProcess) -> None:
    resp = _post(
        server, "/completions", json={"model": server.model_name, "prompt": "Hello", "max_tokens": 2}
    )
    assert resp.status_code == 200, resp.text


def test_models_list_and_retrieve_follow_the_spec(llama_server: ServerProcess) -> None:
    resp = httpx.get(llama_server.v1 + "/models")
    assert resp.status_code == 200
    assert_matches("ListModelsResponse", resp.json())
    client = openai.OpenAI(base_url=llama_server.v1, api_key="unused")
    assert {m.id for m in client.models.list()} == {LLAMA_NAME, LLAMA_ALIAS}
    # The SDK percent-encodes the '/' of the alias; older SDKs sent it raw: both must resolve.
    assert client.models.retrieve(LLAMA_ALIAS).id == LLAMA_ALIAS
    raw = httpx.get(f"{llama_server.v1}/models/{LLAMA_ALIAS}")
    assert raw.status_code == 200
    assert_matches("Model", raw.json())
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no/such-model")
    assert err.value.code == "model_not_found"


def test_alias_serves_requests(llama_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=llama_server.v1, api_key="unused")
    out = client.completions.create(model=LLAMA_ALIAS, prompt="Hi", max_tokens=2)
    assert out.model == LLAMA_ALIAS


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ("/completions", {"model": LLAMA_NAME, "prompt": {"text": "x"}}, "prompt"),
        ("/completions", {"model": LLAMA_NAME}, "prompt"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "temperature": 3}, "temperature"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "n": 0}, "n"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "top_p": 1.5}, "top_p"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "presence_penalty": 5}, "presence_penalty"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/completions", {"model": LLAMA_NAME, "prompt": [1, -3]}, "prompt"),
        ("/completions", {"model": LLAMA_NAME, "prompt": [10**9]}, "prompt"),
        ("/completions", {"model": LLAMA_NAME, "prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ("/chat/completions", {"model": LLAMA_NAME, "messages": "hello"}, "messages"),
        ("/chat/completions", {"model": LLAMA_NAME, "messages": []}, "messages"),
        ("/chat/completions", {"model": LLAMA_NAME, "messages": [{"role": "wizard", "content": "x"}]}, None),
        (
            "/chat/completions",
            {
                "model": LLAMA_NAME,
                "messages": [{"role": "user", "content": "x"}],
                "top_logprobs": 25,
                "logprobs": True,
            },
            "top_logprobs",
        ),
        (
            "/chat/completions",
            {
                "model": LLAMA_NAME,
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            None,
        ),
    ],
)
def test_invalid_requests_get_400_envelopes(
    llama_server: ServerProcess, path: str, body: dict[str, Any], param: str | None
) -> None:
    resp = _post(llama_server, path, json=body)
    _assert_envelope(resp, 400)
    if param is not None:
        assert (resp.json()["error"]["param"] or "").startswith(param), resp.json()
    _still_serving(llama_server)


def test_invalid_json_is_400_not_422(llama_server: ServerProcess) -> None:
    resp = _post(
        llama_server,
        "/chat/completions",
        content=b'{"model": "x", ',
        headers={"content-type": "application/json"},
    )
    _assert_envelope(resp, 400, code="invalid_json")
    _still_serving(llama_server)


def test_empty_prompts_are_rejected(llama_server: ServerProcess) -> None:
    _assert_envelope(
        _post(llama_server, "/completions", json={"model": LLAMA_NAME, "prompt": ""}), 400, param="prompt"
    )
    _assert_envelope(_post(llama_server, "/completions", json={"model": LLAMA_NAME, "prompt": []}), 400)
    _still_serving(llama_server)


def test_prompt_over_the_context_is_context_length_exceeded(llama_server: ServerProcess) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 200
    client = openai.OpenAI(base_url=llama_server.v1, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=LLAMA_NAME, prompt=long_prompt, max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=LLAMA_NAME, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=100_000
        )
    assert err.value.code == "context_length_exceeded"
    assert err.value.param == "messages"
    # Known before the first byte, so even a stream request gets a plain JSON error.
    resp = _post(
        llama_server, "/completions", json={"model": LLAMA_NAME, "prompt": long_prompt, "stream": True}
    )
    _assert_envelope(resp, 400, code="context_length_exceeded")
    assert resp.headers["content-type"].startswith("application/json")
    _still_serving(llama_server)


def test_unknown_model_is_404_model_not_found(llama_server: ServerProcess) -> None:
    for path, body in [
        ("/completions", {"model": "gpt-4o", "prompt": "x"}),
        ("/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
        ("/embeddings", {"model": "gpt-4o", "input": "x"}),
    ]:
        _assert_envelope(_post(llama_server, path, json=body), 404, code="model_not_found", param="model")
    _still_serving(llama_server)


def test_unknown_routes_and_methods_get_envelopes(llama_server: ServerProcess) -> None:
    _assert_envelope(httpx.get(llama_server.v1 + "/nope"), 404)
    _assert_envelope(httpx.delete(llama_server.v1 + "/models"), 405)


def test_embeddings_on_a_generation_model_is_400(llama_server: ServerProcess) -> None:
    resp = _post(llama_server, "/embeddings", json={"model": LLAMA_NAME, "input": "x"})
    _assert_envelope(resp, 400, code="model_not_supported")


def test_unsupported_features_are_refused_not_ignored(llama_server: ServerProcess) -> None:
    chat = {"model": LLAMA_NAME, "messages": [{"role": "user", "content": "x"}]}
    cases: list[tuple[dict[str, Any], str | None]] = [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            None,
        ),
    ]
    for extra, param in cases:
        _assert_envelope(_post(llama_server, "/chat/completions", json={**chat, **extra}), 400, param=param)
    _assert_envelope(
        _post(llama_server, "/completions", json={"model": LLAMA_NAME, "prompt": "x", "suffix": "y"}),
        400,
        param="suffix",
    )


def test_request_id_is_echoed_or_generated(llama_server: ServerProcess) -> None:
    given = httpx.get(llama_server.v1 + "/models", headers={"x-request-id": "trace-abc-123"})
    assert given.headers["x-request-id"] == "trace-abc-123"
    made = httpx.get(llama_server.v1 + "/models")
    assert len(made.headers["x-request-id"]) >= 16
    error = _post(
        llama_server, "/completions", json={"model": "nope", "prompt": "x"}, headers={"x-request-id": "e-1"}
    )
    assert error.headers["x-request-id"] == "e-1"


def test_probes_and_version(llama_server: ServerProcess) -> None:
    assert llama_server.get("/health")[0] == 200
    status, body = llama_server.get("/ready")
    assert status == 200
    assert b'"ready"' in body
    status, body = llama_server.get("/version")
    assert status == 200
    assert b"version" in body


def test_wrong_or_missing_api_key_is_401(gpt2_server: ServerProcess) -> None:
    for key in ("sk-wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        resp = httpx.post(
            gpt2_server.v1 + "/completions", json={"model": "tiny-gpt2", "prompt": "x"}, headers=headers
        )
        _assert_envelope(resp, 401, code="invalid_api_key")
    client = openai.OpenAI(base_url=gpt2_server.v1, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    # probes stay open for the kubelet and Prometheus
    assert gpt2_server.get("/ready")[0] == 200
    assert gpt2_server.get("/metrics")[0] == 200
    good = openai.OpenAI(base_url=gpt2_server.v1, api_key=TEST_API_KEY)
    assert (
        good.completions.create(model="tiny-gpt2", prompt="Hello", max_tokens=3).choices[0].text is not None
    )


def test_chat_without_a_template_is_a_clear_400(gpt2_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=gpt2_server.v1, api_key=TEST_API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "chat_template_missing"
    assert "chat template" in str(err.value.body)
    _still_serving(gpt2_server)


def test_a_model_that_cannot_load_exits_non_zero(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 1"):
        start_server(["--model", str(tmp_path / "missing-model")], ready_timeout=120, log_dir=tmp_path)
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "model load failed" in log


def test_random_malformed_bodies_never_get_a_5xx(llama_server: ServerProcess) -> None:
    """A seeded mini-fuzz: valid bodies with 1-3 fields replaced by values of the wrong type or range."""
    rng = random.Random(20261122)
    values: list[Any] = [
        None,
        True,
        -1,
        0,
        1,
        2.5,
        1e308,
        -1e308,
        "",
        "x",
        "😀😀",
        [],
        [1],
        [[]],
        [[1, 2]],
        ["a"],
        {},
        {"a": 1},
        2**70,
        -(2**70),
    ]
    bases: dict[str, dict[str, Any]] = {
        "/completions": {"model": LLAMA_NAME, "prompt": "hi", "max_tokens": 3},
        "/chat/completions": {
            "model": LLAMA_NAME,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
        },
        "/embeddings": {"model": LLAMA_NAME, "input": "hi"},
    }
    fields = [
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "logprobs",
        "echo",
        "logit_bias",
        "stream",
        "stream_options",
        "presence_penalty",
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "input",
        "encoding_format",
        "dimensions",
        "stop_token_ids",
        "best_of",
        "tools",
        "tool_choice",
        "response_format",
        "model",
    ]
    statuses: set[int] = set()
    with httpx.Client(timeout=60) as client:
        for _ in range(150):
            path = rng.choice(list(bases))
            body = dict(bases[path])
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(fields)] = rng.choice(values)
            resp = client.post(llama_server.v1 + path, json=body)
            statuses.add(resp.status_code)
            assert resp.status_code < 500, (path, body, resp.text)
            if resp.status_code >= 400:
                assert_matches("ErrorResponse", resp.json())
    assert 400 in statuses
    assert 200 in statuses
    assert 422 not in statuses
    _still_serving(llama_server)
