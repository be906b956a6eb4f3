"""LoRA on a real vLLM (PyPI's CPU build), started from the command line the operator builds for a
`spec.engine: vllm` LLMModel with adapters, driven by the operator's own adapter loop code: the hf://
adapter is loaded by hub id through vLLM's /v1/load_lora_adapter (vLLM downloads hub ids itself; here
from a hub cache laid out by hand, HF_HUB_OFFLINE=1), listed by /v1/models, answered by name through
the router with PEFT's greedy tokens, and unloaded when it leaves the list (404 afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.adapters.client import AdapterClient
from modelyard.operator.adapters.loop import AdapterSyncer, ReadyPod
from modelyard.operator.builders.engines import engine_builder
from modelyard.operator.observed import ObservedState
from modelyard.operator.settings import OperatorSettings
from tests.fixtures.hub_cache import publish
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.integration.engines.test_vllm_backend import (
    CACHE,
    MODEL,
    SPEC,
    operator_container,
    start_vllm,
    stop_vllm,
    vllm_venv,  # noqa: F401  (the fixture)
)
from tests.integration.engines.vllm_model import ensure_vllm_tiny_llama
from tests.integration.router.procs import Proc, start_router, write_config

pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.timeout(900)]

ADAPTER = {"name": "sql", "source": "hf://local/vllm-sql"}
LORA_SPEC: dict[str, Any] = {
    **SPEC,
    "adapters": [ADAPTER],
    "server": {**SPEC["server"], "lora": {"maxLoras": 2, "maxLoraRank": 8, "maxCpuLoras": 2}},
}
PROMPT = [5, 17, 29, 41, 53, 65, 77]
N = 6


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(HF_HOME, the adapter's files, the base model) with the adapter published as local/vllm-sql."""
    base = ensure_vllm_tiny_llama(CACHE / "test-models" / "vllm-tiny-llama")
    root = tmp_path_factory.mktemp("vllm-lora")
    files = make_adapter(base, root / "files", r=8, alpha=16, seed=7)
    publish(root / "hf", "local/vllm-sql", files)
    return root / "hf", files, base


@pytest.fixture(scope="module")
def vllm_lora(
    vllm_venv: Path,  # noqa: F811  (the fixture)
    hub: tuple[Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proc]:
    hf_home = hub[0]
    # What Kubernetes would differ in: the hub cache lives at HF_HOME=/cache/huggingface in a pod.
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    proc = start_vllm(LORA_SPEC, vllm_venv, tmp_path_factory.mktemp("vllm-lora-log") / "vllm.log", env)
    try:
        yield proc
    finally:
        stop_vllm(proc)


def test_the_pod_command_line_turns_lora_on() -> None:
    c = operator_container(LORA_SPEC)
    args = c["args"]
    assert args[args.index("--enable-lora") :] == [
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--max-cpu-loras", "2",
        "--enforce-eager",
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "sql" not in " ".join(args)  # adapters are loaded at runtime, never on the command line


async def test_the_adapter_loop_loads_it_and_the_router_serves_it_with_pefts_tokens(
    vllm_lora: Proc, hub: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, files, base = hub
    model = LLMModel.from_body({"metadata": {"name": "tiny-vllm", "namespace": "t"}, "spec": LORA_SPEC})
    port = int(vllm_lora.url.rsplit(":", 1)[1])
    pod = ReadyPod("tiny-vllm-0", "uid-0", "127.0.0.1", engine_builder("vllm").lora_api)
    async with aiohttp.ClientSession() as session:
        client = AdapterClient(session, port=port)
        syncer = AdapterSyncer(ObservedState(), lambda key: None, OperatorSettings(), client=client)
        served = await syncer.sync_pod(list(model.spec.adapters), pod)
        assert served is not None
        assert served.failures == {}, served.failures
        assert served.loaded == frozenset({"sql"})
        assert await client.loaded("127.0.0.1", pod.api) == {"sql"}
        # Idempotent: a second round finds it loaded and changes nothing.
        assert await syncer.sync_pod(list(model.spec.adapters), pod) == served

        tmp = tmp_path / "router"
        tmp.mkdir()
        config = write_config(tmp / "models.json", {MODEL: {"urls": [vllm_lora.url], "adapters": ["sql"]}})
        router = start_router(tmp, config)
        try:
            sdk = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            # Token ids, not text: random weights pick byte-fallback tokens whose text vLLM holds back.
            reply = sdk.completions.create(
                model="sql",
                prompt=PROMPT,
                max_tokens=N,
                temperature=0,
                logprobs=1,
                extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
            )
            logprobs = reply.choices[0].logprobs
            assert logprobs is not None
            assert logprobs.tokens is not None
            got = [int(t.removeprefix("token_id:")) for t in logprobs.tokens]
            assert got == peft_greedy(base, files, PROMPT, N)
            listed = {m.id: m.model_dump() for m in sdk.models.list().data}
            assert listed["sql"]["parent"] == MODEL
        finally:
            router.kill()

        # Removed from the list: unloaded, and vLLM answers 404 for it.
        assert await syncer.sync_pod([], pod) == type(served)(frozenset())
        direct = openai.OpenAI(base_url=vllm_lora.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            direct.completions.create(model="sql", prompt=PROMPT, max_tokens=2)
