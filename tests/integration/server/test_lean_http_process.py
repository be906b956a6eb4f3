"""The HTTP process never imports torch: it only tokenizes, renders templates and streams.

Checked on real server processes two ways: while it serves, no torch library is mapped into the HTTP
process (and one is mapped into its engine process, so the check can fail); after it stops, the module
list it writes on request (a ``sitecustomize`` hook on its path, SIGUSR1) has no ``torch``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fixtures.models import ServerProcess, running_server
from tests.support.roots import pythonpath

pytestmark = pytest.mark.model

# SIGUSR1 makes a process on this path write its module list (written aside, then renamed: whole).
HOOK = """\
import json, os, signal, sys

_out = os.environ.get("MODELYARD_TEST_MODULES_DIR")
if _out:
    def _dump(*_):
        path = os.path.join(_out, f"modules-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(sorted(sys.modules), f)
        os.rename(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, _dump)
"""
SCHEMA: dict[str, object] = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def dump_dir(tmp_path: Path) -> Path:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    out = tmp_path / "modules"
    out.mkdir()
    return out


def _env(dump_dir: Path) -> dict[str, str]:
    path = os.pathsep.join([pythonpath(dump_dir.parent / "hook"), os.environ.get("PYTHONPATH", "")])
    path = path.rstrip(os.pathsep)
    return {"PYTHONPATH": path, "MODELYARD_TEST_MODULES_DIR": str(dump_dir)}


@pytest.fixture
def lean_llama(tiny_llama_path: Path, dump_dir: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_llama_path), "--served-model-name", "tiny-llama", "--max-model-len", "512"]
    with running_server(args, env=_env(dump_dir), log_dir=server_logs_dir) as server:
        yield server


def _modules_now(server: ServerProcess, dump_dir: Path) -> list[str]:
    """The running HTTP process's ``sys.modules``, after everything it served."""
    dumped = dump_dir / f"modules-{server.process.pid}.json"
    server.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not dumped.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dumped.exists(), f"the HTTP process wrote no module list:\n{server.log_tail()}"
    modules: list[str] = json.loads(dumped.read_text())
    return modules


def test_generation_server_http_process_never_imports_torch(
    lean_llama: ServerProcess, dump_dir: Path
) -> None:
    client = openai.OpenAI(base_url=lean_llama.v1, api_key="x")
    user: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something"}]
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=user,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": dict(SCHEMA)}},
    )
    assert chat.choices[0].message.content is not None
    chunks = list(client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=5, stream=True))
    assert chunks, "the stream produced chunks"
    # A grammar the engine cannot compile is still a 400 naming the field: checked in the engine process.
    bad = {**SCHEMA, "uniqueItems": True, "type": "array"}
    resp = httpx.post(
        f"{lean_llama.v1}/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": user,
            "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": bad}},
        },
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "response_format"

    engine_pid = lean_llama.engine_pid()
    assert _maps_torch(engine_pid), "the engine process maps libtorch (the check can see it)"
    assert not _maps_torch(lean_llama.process.pid), "the HTTP process mapped a torch library"

    modules = _modules_now(lean_llama, dump_dir)
    assert "fastapi" in modules, "the list is the HTTP process's"
    assert "tokenizers" in modules, "the list is the HTTP process's"
    assert "torch" not in modules
    assert not [m for m in modules if m.startswith("torch.")]


def test_embedding_server_http_process_never_imports_torch(
    minilm_path: Path, dump_dir: Path, server_logs_dir: Path
) -> None:
    args = ["--model", str(minilm_path), "--served-model-name", "minilm", "--task", "embed"]
    with running_server(args, env=_env(dump_dir), log_dir=server_logs_dir) as server:
        client = openai.OpenAI(base_url=server.v1, api_key="x")
        result = client.embeddings.create(model="minilm", input=["a sentence", "another one"])
        assert len(result.data) == 2
        assert not _maps_torch(server.process.pid)
        modules = _modules_now(server, dump_dir)
    assert "torch" not in modules
