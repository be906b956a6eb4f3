"""`make local` (modelyard-local) gives a working OpenAI endpoint on one machine, and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fixtures.models import SMOLLM2_NAME
from tests.fixtures.processes import popen_dying_with_parent
from tests.support.net import free_port

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def local_stack(smollm2_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    # The default chat model is SmolLM2, converted once into the shared test cache (smollm2_path).
    env = {**os.environ, "MODELYARD_SERVER_TINY_MODEL_CACHE": str(smollm2_path.parent)}
    proc = popen_dying_with_parent(
        [sys.executable, "-m", "modelyard.local", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops everything" in line:
            break
        if time.monotonic() > deadline:
            break
    else:
        pytest.fail("modelyard-local exited early:\n" + "".join(seen[-40:]))
    try:
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def test_lists_the_chat_and_the_embedding_model(local_stack: tuple[str, subprocess.Popen[str]]) -> None:
    client = openai.OpenAI(base_url=local_stack[0], api_key="unused")
    assert {m.id for m in client.models.list()} == {SMOLLM2_NAME, "all-minilm-l6-v2"}


def test_chat_and_embeddings_through_the_router(local_stack: tuple[str, subprocess.Popen[str]]) -> None:
    client = openai.OpenAI(base_url=local_stack[0], api_key="unused")
    chat = client.chat.completions.create(
        model=SMOLLM2_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    assert "Paris" in (chat.choices[0].message.content or "")
    embedding = client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert len(embedding.data[0].embedding) == 384


def test_sigterm_stops_every_component(local_stack: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = local_stack
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as sock:
        sock.settimeout(1)
        with pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))
