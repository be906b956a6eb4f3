"""Automatic prefix caching seen from outside: /metrics counters and usage's cached_tokens."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.models import LLAMA_NAME, ServerProcess
from tests.integration.server.helpers import auth, metric

pytestmark = pytest.mark.model

# Token-id prompts: a 100-token "system prompt" (six full 16-token blocks) and two different questions.
SYSTEM = [3 + (i * 7) % 200 for i in range(100)]


def _complete(server: ServerProcess, prompt: list[int]) -> dict[str, Any]:
    body = {"model": LLAMA_NAME, "prompt": prompt, "max_tokens": 3, "temperature": 0}
    resp = httpx.post(server.v1 + "/completions", json=body, headers=auth(server), timeout=60)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_a_shared_system_prompt_is_computed_once_and_the_metrics_say_so(llama_server: ServerProcess) -> None:
    queries = metric(llama_server, "vllm:prefix_cache_queries_total", model_name=LLAMA_NAME)
    hits = metric(llama_server, "vllm:prefix_cache_hits_total", model_name=LLAMA_NAME)
    _complete(llama_server, [*SYSTEM, 11, 12, 13])
    _complete(llama_server, [*SYSTEM, 21, 22, 23, 24])
    assert metric(llama_server, "vllm:prefix_cache_queries_total", model_name=LLAMA_NAME) - queries == 207
    # The second request found at least the six full blocks of the system prompt.
    assert metric(llama_server, "vllm:prefix_cache_hits_total", model_name=LLAMA_NAME) - hits >= 96
    assert 0.0 <= metric(llama_server, "vllm:kv_cache_usage_perc", model_name=LLAMA_NAME) <= 1.0


def _chat(server: ServerProcess, question: str) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "the quick brown fox jumps over the lazy dog " * 20},
        {"role": "user", "content": question},
    ]
    body = {"model": LLAMA_NAME, "messages": messages, "max_tokens": 2, "temperature": 0}
    resp = httpx.post(server.v1 + "/chat/completions", json=body, headers=auth(server), timeout=60)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


def test_usage_reports_the_cached_prompt_tokens(llama_server: ServerProcess) -> None:
    _chat(llama_server, "first question")
    second = _chat(llama_server, "another one")
    details = second["usage"].get("prompt_tokens_details") or {}
    # At least the full 16-token blocks of the shared system prompt came from the cache.
    assert details.get("cached_tokens", 0) >= 16
    assert details["cached_tokens"] < second["usage"]["prompt_tokens"]
