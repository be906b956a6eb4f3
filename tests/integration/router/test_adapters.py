"""LoRA adapters through the router, in front of two real model servers with LoRA on and an adapter
loaded on only one of them; the official SDK as client and PEFT as the reference for the tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from tests.fixtures.lora import make_adapter, peft_greedy
from tests.fixtures.models import ServerProcess, start_server
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import http_get

pytestmark = [pytest.mark.model, pytest.mark.timeout(420)]

BASE, ADAPTER = "tiny-base", "sql-lora"
N = 8
PROMPT = [5 + (i * 13) % 900 for i in range(12)]
KEYS = """
keys:
  - {name: all, key: sk-all-0000001}
  - {name: sql-only, key: sk-sql-0000001, models: [sql-lora]}
  - {name: base-only, key: sk-base-000001, models: [tiny-base]}
"""


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama_path: Path) -> Path:
    return make_adapter(tiny_llama_path, tmp_path_factory.mktemp("lora") / ADAPTER, r=8, alpha=16, seed=7)


@pytest.fixture(scope="module")
def servers(
    tiny_llama_path: Path, adapter_dir: Path, server_logs_dir: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    common = ["--model", str(tiny_llama_path), "--served-model-name", BASE, "--enable-lora"]
    with_adapter = start_server(
        [*common, "--lora-modules", f"{ADAPTER}={adapter_dir}"], log_dir=server_logs_dir
    )
    try:
        without = start_server(common, log_dir=server_logs_dir)
    except BaseException:
        with_adapter.stop()
        raise
    try:
        yield with_adapter, without
    finally:
        with_adapter.stop()
        without.stop()


@pytest.fixture(scope="module")
def router(
    servers: tuple[ServerProcess, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("router")
    loaded, bare = servers
    config = write_config(
        tmp / "models.json",
        {BASE: {"urls": [loaded.base_url, bare.base_url], "adapters": {ADAPTER: [loaded.base_url]}}},
    )
    keys = tmp / "keys.yaml"
    keys.write_text(KEYS)
    proc = start_router(tmp, config, keys)
    try:
        yield proc
    finally:
        proc.kill()


def sdk(base: str, key: str = "sk-all-0000001") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


async def greedy(client: openai.AsyncOpenAI, model: str) -> str:
    reply = await client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=N,
        temperature=0,
        extra_body={"ignore_eos": True, "skip_special_tokens": False},
    )
    return reply.choices[0].text


def successes(server: ServerProcess, model: str) -> float:
    """Requests the server finished for ``model`` (its vLLM-named counter, labelled by adapter)."""
    status, body = server.get("/metrics")
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "vllm:request_success_total" and sample.labels.get("model_name") == model
    )


def router_metric(router: Proc, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(http_get(router.metrics_url)[1].decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_adapter_calls_go_only_to_the_pod_that_has_it_and_give_its_tokens(
    router: Proc, servers: tuple[ServerProcess, ServerProcess], tiny_llama_path: Path, adapter_dir: Path
) -> None:
    loaded, bare = servers
    tokenizer: Any = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    expected = tokenizer.decode(
        peft_greedy(tiny_llama_path, adapter_dir, PROMPT, N), skip_special_tokens=False
    )
    direct = await greedy(sdk(loaded.base_url), ADAPTER)
    assert direct == expected
    before = successes(loaded, ADAPTER)
    # Concurrent, so least-load alone would put some on the idle pod without the adapter (a 404 there).
    routed = await asyncio.gather(*(greedy(sdk(router.url), ADAPTER) for _ in range(6)))
    assert routed == [expected] * 6
    assert successes(loaded, ADAPTER) - before == 6
    assert successes(bare, ADAPTER) == 0
    base = await greedy(sdk(router.url), BASE)
    assert base != expected  # the adapter changes the tokens: the check above can fail
    assert router_metric(router, "modelyard_router_requests_total", model=ADAPTER, code="200", key="all") == 6
    assert router_metric(router, "modelyard_router_adapter_info", model=ADAPTER, parent=BASE) == 1
    assert router_metric(router, "modelyard_router_endpoints", model=ADAPTER, state="ready") == 1
    assert router_metric(router, "modelyard_router_endpoints", model=BASE, state="ready") == 2


async def test_base_calls_balance_over_both_pods(
    router: Proc, servers: tuple[ServerProcess, ServerProcess]
) -> None:
    before = [successes(s, BASE) for s in servers]
    answers = await asyncio.gather(*(greedy(sdk(router.url), BASE) for _ in range(10)))
    assert len(set(answers)) == 1
    after = [successes(s, BASE) for s in servers]
    gained = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(gained) == 10
    assert min(gained) >= 1, gained


async def test_models_list_adapters_with_their_parent(router: Proc) -> None:
    cards = {m.id: m.model_dump() for m in (await sdk(router.url).models.list()).data}
    assert set(cards) == {BASE, ADAPTER}
    assert (cards[BASE]["parent"], cards[BASE]["root"]) == (None, BASE)
    assert (cards[ADAPTER]["parent"], cards[ADAPTER]["root"]) == (BASE, ADAPTER)
    assert cards[ADAPTER]["object"] == "model"
    assert cards[ADAPTER]["owned_by"] == "modelyard"
    assert (await sdk(router.url).models.retrieve(ADAPTER)).model_dump()["parent"] == BASE


async def test_a_key_limited_to_the_adapter_is_refused_the_base_and_vice_versa(
    router: Proc, tiny_llama_path: Path, adapter_dir: Path
) -> None:
    adapter_key, base_key = sdk(router.url, "sk-sql-0000001"), sdk(router.url, "sk-base-000001")
    assert await greedy(adapter_key, ADAPTER) == await greedy(sdk(router.url), ADAPTER)
    for client, model in ((adapter_key, BASE), (base_key, ADAPTER)):
        with pytest.raises(openai.NotFoundError) as refused:  # the router's envelope for a model not allowed
            await greedy(client, model)
        assert refused.value.code == "model_not_found"
        assert refused.value.status_code == 404
    assert [m.id for m in (await adapter_key.models.list()).data] == [ADAPTER]
    assert [m.id for m in (await base_key.models.list()).data] == [BASE]
    await greedy(base_key, BASE)


async def test_an_unknown_adapter_is_model_not_found(router: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await greedy(sdk(router.url), "no-such-lora")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await sdk(router.url).models.retrieve("no-such-lora")
