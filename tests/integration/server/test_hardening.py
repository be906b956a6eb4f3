"""One request must never stall the server (issue 9), on a real server process.

Heavy requests run in a thread while ``/health`` is polled: every poll must answer within 200 ms.
Client-supplied templates are never rendered, work per request is capped with a clear 400, and strings
that are not Unicode text are a 400 envelope, never a 500.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.fixtures.models import LLAMA_NAME, ServerProcess
from tests.fixtures.openai_spec import assert_matches
from tests.integration.server.helpers import auth

pytestmark = pytest.mark.model

HEALTH_BUDGET_S = 0.2


def _post_raw(server: ServerProcess, path: str, raw: bytes) -> httpx.Response:
    headers = {**auth(server), "content-type": "application/json"}
    return httpx.post(server.v1 + path, content=raw, headers=headers, timeout=120)


def _while_health_polled(
    server: ServerProcess, path: str, body: dict[str, Any]
) -> tuple[httpx.Response, float]:
    """Send ``body`` while polling /health; the response and the slowest health answer."""
    raw = json.dumps(body).encode()
    result: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: result.append(_post_raw(server, path, raw)))
    slowest = 0.0
    polls = 0
    with httpx.Client(timeout=30) as http:
        worker.start()
        while worker.is_alive() or polls < 5:
            start = time.perf_counter()
            assert http.get(server.base_url + "/health").status_code == 200
            slowest = max(slowest, time.perf_counter() - start)
            polls += 1
            time.sleep(0.02)
    worker.join()
    return result[0], slowest


def _assert_error(resp: httpx.Response, code: str | None, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    assert_matches("ErrorResponse", resp.json())
    error: dict[str, Any] = resp.json()["error"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_a_4mb_prompt_does_not_stall_health(llama_server: ServerProcess) -> None:
    body = {"model": LLAMA_NAME, "prompt": "The quick brown fox. " * 200_000, "max_tokens": 1}
    resp, slowest = _while_health_polled(llama_server, "/completions", body)
    _assert_error(resp, "context_length_exceeded", "prompt")
    assert slowest < HEALTH_BUDGET_S


def test_100k_messages_do_not_stall_health(llama_server: ServerProcess) -> None:
    body = {"model": LLAMA_NAME, "messages": [{"role": "user", "content": "hi there"}] * 100_000}
    resp, slowest = _while_health_polled(llama_server, "/chat/completions", body)
    _assert_error(resp, "context_length_exceeded", "messages")
    assert slowest < HEALTH_BUDGET_S


def test_a_client_supplied_template_is_never_rendered(llama_server: ServerProcess) -> None:
    bomb = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
    body = {"model": LLAMA_NAME, "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {"chat_template": bomb}}  # fmt: skip
    resp, slowest = _while_health_polled(llama_server, "/chat/completions", body)
    _assert_error(resp, "unsupported_parameter", "chat_template_kwargs.chat_template")
    assert slowest < HEALTH_BUDGET_S


def test_sequences_per_request_are_capped(llama_server: ServerProcess) -> None:
    body = {"model": LLAMA_NAME, "prompt": ["hi"] * 8, "n": 128, "max_tokens": 1}
    resp, slowest = _while_health_polled(llama_server, "/completions", body)
    error = _assert_error(resp, "too_many_sequences")
    assert "1024 sequences" in error["message"]
    assert slowest < HEALTH_BUDGET_S


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/chat/completions", b'{"model":"tiny-llama","messages":[{"role":"user","content":"a\\ud800b"}]}',
         "messages[0].content"),
        ("/completions", b'{"model":"tiny-llama","prompt":"\\udc00"}', "prompt"),
        ("/embeddings", b'{"model":"tiny-llama","input":["ok","\\ud83d"]}', "input[1]"),
        ("/responses", b'{"model":"tiny-llama","input":"x\\ud800"}', "input"),
        ("/chat/completions", b'{"model":"\\ud800","messages":[{"role":"user","content":"x"}]}', "model"),
        # The raw bytes of a surrogate's UTF-8 encoding (invalid UTF-8 that json.loads lets through).
        ("/completions", b'{"model":"a\xed\xa0\x80b","prompt":"x"}', "model"),
        ("/embeddings", b'{"model":"tiny-llama","input":"a\xed\xa0\x80b"}', "input"),
    ],
)  # fmt: skip
def test_lone_surrogates_are_a_400_naming_the_field(
    llama_server: ServerProcess, path: str, raw: bytes, param: str
) -> None:
    _assert_error(_post_raw(llama_server, path, raw), "invalid_unicode", param)


def test_a_valid_surrogate_pair_is_fine(llama_server: ServerProcess) -> None:
    raw = b'{"model":"tiny-llama","prompt":"smile \\ud83d\\ude00","max_tokens":2}'
    assert _post_raw(llama_server, "/completions", raw).status_code == 200


@pytest.mark.parametrize(
    ("shape", "value"),
    [
        ("5,000 nested lists", b"[" * 5000 + b"]" * 5000),
        ("3,000 nested objects", b'{"a":' * 3000 + b"1" + b"}" * 3000),
        ("200 nested lists", b"[" * 200 + b"]" * 200),
    ],
)
@pytest.mark.parametrize("path", ["/chat/completions", "/completions", "/embeddings"])
def test_deep_nesting_is_a_400_envelope_and_the_server_stays_up(
    llama_server: ServerProcess, shape: str, value: bytes, path: str
) -> None:
    raw = b'{"model": "' + LLAMA_NAME.encode() + b'", "prompt": "x", "messages": [], "x": ' + value + b"}"
    _assert_error(_post_raw(llama_server, path, raw), "nesting_too_deep")
    # Unclosed, so the parser gives up on it: the same answer.
    _assert_error(_post_raw(llama_server, path, b"[" * 5000), "nesting_too_deep")
    assert httpx.get(llama_server.base_url + "/health", timeout=10).status_code == 200


def test_nesting_a_json_schema_needs_is_fine(llama_server: ServerProcess) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    body = {
        "model": LLAMA_NAME,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    resp = _post_raw(llama_server, "/chat/completions", json.dumps(body).encode())
    assert resp.status_code == 200, resp.text
