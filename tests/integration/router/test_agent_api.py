"""Agent calls through a router process in front of a real server: the Responses API and forced tool
calls work unchanged, and the router's token metrics count them (keys apply as for chat)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.fixtures.models import ServerProcess, start_server
from tests.fixtures.openai_spec import assert_matches
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import http_get
from tests.support.tool_schemas import WEATHER_PARAMETERS

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

MODEL = "tiny-llama"
KEYS = """
keys:
  - {name: agent, key: sk-agent-000001, models: [tiny-llama]}
"""


@pytest.fixture(scope="module")
def router(
    tiny_llama_path: Path, server_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    server: ServerProcess = start_server(
        ["--model", str(tiny_llama_path), "--served-model-name", MODEL], log_dir=server_logs_dir
    )
    tmp = tmp_path_factory.mktemp("agent-router")
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    try:
        proc = start_router(tmp, write_config(tmp / "models.json", {MODEL: [server.base_url]}), keys)
        try:
            yield proc
        finally:
            proc.kill()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(router: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="sk-agent-000001", max_retries=0)


def _tokens(router: Proc) -> float:
    metrics = http_get(router.metrics_url)[1].decode()
    found = re.search(
        r'modelyard_router_completion_tokens_total\{key="agent",model="tiny-llama"\} (\S+)', metrics
    )
    return float(found.group(1)) if found else 0.0


def test_responses_create_through_the_router_counts_its_tokens(router: Proc, client: openai.OpenAI) -> None:
    before = _tokens(router)
    response = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=6, temperature=0)
    assert_matches("Response", response.model_dump(mode="json", exclude_unset=True, by_alias=True))
    assert response.usage is not None
    assert response.usage.output_tokens == 6
    assert _tokens(router) == before + 6


def test_a_forced_tool_call_through_the_router(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)  # type: ignore[union-attr]


def test_keys_apply_to_responses(router: Proc) -> None:
    bad = openai.OpenAI(base_url=router.url + "/v1", api_key="sk-wrong-0000001", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model=MODEL, input="x", max_output_tokens=2)
