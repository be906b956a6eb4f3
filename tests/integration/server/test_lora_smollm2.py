"""LoRA on a real model: SmolLM2-135M-Instruct with a local PEFT adapter gives PEFT's greedy tokens,
alone and mixed with base rows, and a refused load leaves it serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.fixtures.lora import PeftReference, complete_greedy_concurrently, make_adapter
from tests.fixtures.models import SMOLLM2_NAME, ServerProcess, running_server

pytestmark = [pytest.mark.model, pytest.mark.timeout(1800)]

N = 16
QUESTIONS = ["What is the capital of France?", "Name a colour.", "Say hello.", "Count to three."]


@pytest.fixture(scope="module")
def adapters(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smollm2-adapters")
    return {
        "tuned": make_adapter(smollm2_path, root / "tuned", r=8, alpha=16, seed=11),
        "big": make_adapter(smollm2_path, root / "big", r=64, alpha=64, targets=["q_proj"], seed=12),
    }


@pytest.fixture(scope="module")
def server(smollm2_path: Path, adapters: dict[str, Path], server_logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(smollm2_path), "--served-model-name", SMOLLM2_NAME, "--dtype", "float32",
            "--max-model-len", "2048", "--enable-lora", "--lora-modules", f"tuned={adapters['tuned']}",
            "--max-lora-rank", "16", "--allowed-lora-paths", str(adapters["big"].parent)]  # fmt: skip
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    with running_server(args, env=env, log_dir=server_logs_dir) as proc:
        yield proc


def _prompt(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_adapter_and_base_rows_give_pefts_tokens(
    server: ServerProcess, smollm2_path: Path, adapters: dict[str, Path]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    reference = PeftReference(smollm2_path, {"tuned": adapters["tuned"]})
    rows = [(SMOLLM2_NAME if i % 2 else "tuned", _prompt(tokenizer, q)) for i, q in enumerate(QUESTIONS)]

    got = complete_greedy_concurrently(server.v1, rows, N)
    for (model, prompt), text in zip(rows, got, strict=True):
        adapter = None if model == SMOLLM2_NAME else model
        expected = tokenizer.decode(reference.greedy(adapter, prompt, N), skip_special_tokens=False)
        assert text == expected, model


def test_a_rank_over_the_maximum_is_refused_and_the_server_keeps_serving(
    server: ServerProcess, adapters: dict[str, Path]
) -> None:
    resp = httpx.post(
        server.v1 + "/load_lora_adapter",
        json={"lora_name": "big", "lora_path": str(adapters["big"])},
        timeout=60,
    )
    assert resp.status_code == 400
    assert "--max-lora-rank 16" in resp.json()["error"]["message"]
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content is not None
