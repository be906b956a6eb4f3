"""A hub id as ``lora_path`` (as vLLM takes it): the server fetches the adapter into its hub cache, at the
requested revision, offline from what the cache holds (HF_HUB_OFFLINE=1), and serves PEFT's tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from tests.fixtures.hub_cache import publish
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.fixtures.models import ServerProcess, running_server

pytestmark = pytest.mark.model

BASE = "tiny-base"
N = 6


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_llama_path: Path) -> Path:
    root = tmp_path_factory.mktemp("lora-hub")
    make_adapter(tiny_llama_path, root / "files" / "main", r=8, seed=11)
    make_adapter(tiny_llama_path, root / "files" / "v2", r=4, seed=12)
    publish(root / "hf", "acme/support-lora", root / "files" / "main")
    publish(root / "hf", "acme/support-lora", root / "files" / "v2", revision="v2")
    return root


@pytest.fixture(scope="module")
def server(
    tiny_llama_path: Path, hub: Path, server_logs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # Runtime loads confined elsewhere: a hub download lands in the server's own cache, which needs no root.
    elsewhere = tmp_path_factory.mktemp("allowed")
    args = ["--model", str(tiny_llama_path), "--served-model-name", BASE, "--enable-lora",
            "--max-loras", "2", "--allowed-lora-paths", str(elsewhere)]  # fmt: skip
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "HF_HOME": str(hub / "hf"), "HF_HUB_OFFLINE": "1"}
    with running_server(args, env=env, log_dir=server_logs_dir) as proc:
        yield proc


def _load(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.v1 + "/load_lora_adapter", json=body, timeout=60)


def _text(server: ServerProcess, model: str, prompt: list[int], n: int = N) -> str:
    reply = httpx.post(
        server.v1 + "/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": n,
            "temperature": 0,
            "ignore_eos": True,
            "skip_special_tokens": False,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["text"])


def _reference(base: Path, adapter: Path, prompt: list[int]) -> str:
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    return str(tokenizer.decode(peft_greedy(base, adapter, prompt, N), skip_special_tokens=False))


def test_a_hub_id_loads_from_the_hub_cache_with_pefts_tokens(
    server: ServerProcess, hub: Path, tiny_llama_path: Path
) -> None:
    resp = _load(server, {"lora_name": "support", "lora_path": "acme/support-lora"})
    assert resp.status_code == 200, resp.text
    resp = _load(server, {"lora_name": "support-v2", "lora_path": "acme/support-lora", "revision": "v2"})
    assert resp.status_code == 200, resp.text
    prompt = [5, 17, 29, 41, 53, 65]
    assert _text(server, "support", prompt) == _reference(tiny_llama_path, hub / "files" / "main", prompt)
    assert _text(server, "support-v2", prompt) == _reference(tiny_llama_path, hub / "files" / "v2", prompt)


def test_a_hub_id_missing_from_the_offline_cache_is_a_clear_400(server: ServerProcess) -> None:
    resp = _load(server, {"lora_name": "nope", "lora_path": "acme/not-cached"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "lora_path"
    assert "acme/not-cached is not in the hub cache" in error["message"]
    assert "HF_HUB_OFFLINE" in error["message"]
    resp = _load(server, {"lora_name": "nope", "lora_path": "acme/support-lora", "revision": "v9"})
    assert resp.status_code == 400, resp.text
    # The server still serves.
    assert httpx.get(server.v1 + "/models", timeout=30).status_code == 200


def test_a_revision_with_a_path_is_refused(server: ServerProcess, hub: Path) -> None:
    resp = _load(server, {"lora_name": "p", "lora_path": str(hub / "files" / "main"), "revision": "v2"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "revision"
