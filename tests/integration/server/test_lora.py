"""LoRA adapters through the real server and the official SDK, with PEFT as the reference: tokens per
adapter, a mixed concurrent batch, prefix-cache isolation, runtime load/unload, refused loads, metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.fixtures.lora import PeftReference, complete_greedy_concurrently, make_adapter
from tests.fixtures.models import ServerProcess, running_server
from tests.integration.server.helpers import metric

pytestmark = pytest.mark.model

BASE = "tiny-base"
N = 8


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory, tiny_llama_path: Path) -> Path:
    root = tmp_path_factory.mktemp("lora-adapters")
    make_adapter(tiny_llama_path, root / "a1", r=8, alpha=16, seed=1)
    make_adapter(tiny_llama_path, root / "a2", r=4, alpha=8, targets=["q_proj", "v_proj", "o_proj"], seed=2)
    make_adapter(
        tiny_llama_path, root / "a3", r=16, alpha=16, targets=["up_proj", "down_proj"], seed=3, rslora=True
    )
    make_adapter(tiny_llama_path, root / "big", r=32, alpha=32, seed=4)
    make_adapter(tiny_llama_path, root / "head", r=4, targets=["q_proj", "lm_head"], seed=5)
    return root


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path, adapter_root: Path) -> PeftReference:
    return PeftReference(tiny_llama_path, {n: adapter_root / n for n in ("a1", "a2", "a3")})


@pytest.fixture(scope="module")
def server(tiny_llama_path: Path, adapter_root: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_llama_path), "--served-model-name", BASE, "--enable-lora",
            "--lora-modules", f"a1={adapter_root / 'a1'}", "--max-loras", "3", "--max-lora-rank", "16",
            "--max-cpu-loras", "4", "--allowed-lora-paths", str(adapter_root)]  # fmt: skip
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    with running_server(args, env=env, log_dir=server_logs_dir) as proc:
        for name in ("a2", "a3"):
            resp = _post(
                proc, "/load_lora_adapter", {"lora_name": name, "lora_path": str(adapter_root / name)}
            )
            assert resp.status_code == 200, resp.text
            assert resp.text == f"Success: LoRA adapter '{name}' added successfully."
        yield proc


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_llama_path))


def _post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.v1 + path, json=body, timeout=60)


def _prompt(length: int, offset: int = 0) -> list[int]:
    return [5 + (offset * 31 + i * 13) % 900 for i in range(length)]


def _complete(client: openai.OpenAI, model: str, prompt: list[int], **extra: Any) -> str:
    reply = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=N,
        temperature=0,
        extra_body={"ignore_eos": True, "skip_special_tokens": False, **extra},
    )
    return reply.choices[0].text


def _expected(reference: PeftReference, tokenizer: Any, adapter: str | None, prompt: list[int]) -> str:
    return str(tokenizer.decode(reference.greedy(adapter, prompt, N), skip_special_tokens=False))


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def test_models_lists_each_adapter_with_the_base_as_parent(client: openai.OpenAI) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards[BASE]["parent"] is None
    for name in ("a1", "a2", "a3"):
        assert cards[name]["parent"] == BASE
        assert cards[name]["root"] == name  # never the adapter's path
    assert client.models.retrieve("a2").id == "a2"


def test_each_adapter_gives_pefts_greedy_tokens(client: openai.OpenAI, reference, tokenizer) -> None:
    prompt = _prompt(12, 1)
    answers = {name: _complete(client, name, prompt) for name in (BASE, "a1", "a2", "a3")}
    for name, text in answers.items():
        assert text == _expected(reference, tokenizer, None if name == BASE else name, prompt), name
    assert len(set(answers.values())) > 1


def test_a_mixed_concurrent_batch_is_exact_row_by_row(server: ServerProcess, reference, tokenizer) -> None:
    models = [BASE, "a1", "a2", "a3"]
    rows = [(models[i % 4], _prompt(6 + 2 * i, i)) for i in range(12)]

    got = complete_greedy_concurrently(server.v1, rows, N)
    for i, ((model, prompt), text) in enumerate(zip(rows, got, strict=True)):
        assert text == _expected(reference, tokenizer, None if model == BASE else model, prompt), f"row {i}"


def test_a_long_prompt_cached_under_the_base_is_not_reused_by_an_adapter(
    client: openai.OpenAI, reference, tokenizer
) -> None:
    prompt = _prompt(150, 7)
    assert _complete(client, BASE, prompt) == _expected(reference, tokenizer, None, prompt)
    assert _complete(client, "a1", prompt) == _expected(reference, tokenizer, "a1", prompt)
    assert _complete(client, BASE, prompt) == _expected(reference, tokenizer, None, prompt)


def test_adapter_rows_take_n_logprobs_stop_strings_and_grammars(client: openai.OpenAI) -> None:
    prompt = _prompt(10, 3)
    free = _complete(client, "a2", prompt)
    reply = client.completions.create(
        model="a2", prompt=prompt, max_tokens=N, temperature=0, n=2, logprobs=2,
        extra_body={"ignore_eos": True, "skip_special_tokens": False},
    )  # fmt: skip
    assert [c.text for c in reply.choices] == [free, free]
    assert reply.choices[0].logprobs is not None
    assert len(reply.choices[0].logprobs.tokens or []) == N
    stop = free[len(free) // 2 :][:2]
    if stop.strip():
        cut = client.completions.create(
            model="a2", prompt=prompt, max_tokens=N, temperature=0, stop=[stop],
            extra_body={"ignore_eos": True, "skip_special_tokens": False},
        )  # fmt: skip
        assert cut.choices[0].text == free[: free.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model="a3",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=12,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"enum": ["yes", "no"]}},
        },
    )
    assert chat.choices[0].message.content in ('"yes"', '"no"')


def test_every_bad_load_is_refused_and_the_server_keeps_serving(
    server: ServerProcess, client: openai.OpenAI, adapter_root: Path, tiny_llama_path: Path, tmp_path: Path
) -> None:
    cases = {
        "missing path": ({"lora_name": "x", "lora_path": str(adapter_root / "nope")}, "no adapter directory"),
        "outside the roots": ({"lora_name": "x", "lora_path": str(tmp_path)}, "outside the allowed"),
        "rank over max": ({"lora_name": "x", "lora_path": str(adapter_root / "big")}, "--max-lora-rank 16"),
        "unknown target": ({"lora_name": "x", "lora_path": str(adapter_root / "head")}, "lm_head"),
        "duplicate name": ({"lora_name": "a1", "lora_path": str(adapter_root / "a2")}, "already loaded"),
        "name of the base": ({"lora_name": BASE, "lora_path": str(adapter_root / "a2")}, "clashes"),
    }
    wide = make_adapter(tiny_llama_path, adapter_root / "wide", targets=["q_proj"], seed=6)
    _widen(wide)
    cases["shape mismatch"] = ({"lora_name": "x", "lora_path": str(wide)}, "shape mismatch")
    for case, (body, reason) in cases.items():
        resp = _post(server, "/load_lora_adapter", body)
        assert resp.status_code == 400, (case, resp.text)
        error = resp.json()["error"]
        assert reason in error["message"], (case, error)
        assert error["type"] == "invalid_request_error"
    resp = _post(server, "/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "lora_adapter_not_found"
    assert "x" not in {m.id for m in client.models.list().data}
    assert _complete(client, "a1", _prompt(5))  # still serving


def test_unloading_lets_a_running_stream_finish_then_answers_404(
    server: ServerProcess, adapter_root: Path, reference, tokenizer
) -> None:
    loaded = _post(server, "/load_lora_adapter", {"lora_name": "gone", "lora_path": str(adapter_root / "a1")})
    assert loaded.status_code == 200, loaded.text
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)
    prompt = _prompt(9, 2)
    stream = client.completions.create(
        model="gone", prompt=prompt, max_tokens=N, temperature=0, stream=True,
        extra_body={"ignore_eos": True, "skip_special_tokens": False},
    )  # fmt: skip
    chunks = iter(stream)
    text = next(chunks).choices[0].text
    unloaded: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: unloaded.append(_post(server, "/unload_lora_adapter", {"lora_name": "gone"}))
    )
    worker.start()
    worker.join()
    assert unloaded[0].status_code == 200, unloaded[0].text
    text += "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == _expected(reference, tokenizer, "a1", prompt)  # the same weights as a1
    with pytest.raises(openai.NotFoundError) as err:
        _complete(client, "gone", prompt)
    assert err.value.code == "model_not_found"


def test_lora_metrics_follow_vllm(server: ServerProcess, client: openai.OpenAI) -> None:
    _complete(client, "a3", _prompt(4))
    body = httpx.get(server.base_url + "/metrics", timeout=10).text
    info = [line for line in body.splitlines() if line.startswith("vllm:lora_requests_info{")]
    assert len(info) == 1
    assert 'max_lora="3"' in info[0]
    assert 'running_lora_adapters=""' in info[0]
    assert 'waiting_lora_adapters=""' in info[0]
    assert metric(server, "vllm:request_success_total", model_name="a3", finished_reason="length") >= 1
    assert metric(server, "vllm:generation_tokens_total", model_name="a3") >= N


def _widen(adapter: Path) -> None:
    """Give the adapter's lora_A a wider input than the base layer has."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    for key, value in list(tensors.items()):
        if "lora_A" in key:
            tensors[key] = torch.cat([value, value], dim=1)
    save_file(tensors, str(path))
