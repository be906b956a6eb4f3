"""Failover between two real vLLM CPU pods behind the router, through vLLM's own API: streams cut by a
SIGKILLed pod go on from the other one as plain continuations (the prompt plus the generated text for
completions; the messages plus the partial assistant message and ``continue_final_message`` for chat).

What vLLM can promise, and so what is asserted (docs/reliability.md, "vLLM and SGLang pods"):

- every stream completes with one ``id`` and ``created``, one opening chunk, one final ``usage`` that
  counts the original prompt and every completion token (``max_tokens`` is kept exactly);
- what the client had before the cut equals the uncut run's text (greedy), and after the cut the text is
  exactly what the surviving pod generates for the continuation request (the router splices it
  unchanged);
- the whole text equals the uncut run's where the carried text re-tokenizes to the tokens that were
  generated (a completion's seam round-trips). Where it does not, the continuation conditions on other
  tokens and may differ: that is the documented limit, and the test counts it rather than hides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fixtures.models import child_pids
from tests.integration.engines.test_vllm_backend import SPEC, start_vllm, stop_vllm, vllm_venv
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import http_get

pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.timeout(1500)]
__all__ = ["vllm_venv"]  # the module-scoped fixture, shared with the vLLM backend test

MODEL = SPEC["servedName"]
MAX_TOKENS = 128
PROMPTS = [
    "Once upon a time",
    "The router said",
    "In a small town",
    "Numbers: one two",
    "Dear diary,",
    "The weather today",
]
CHUNKS_BEFORE_KILL = 2


@dataclass
class Pair:
    servers: list[Proc]
    router: Proc
    router_log: Path


@pytest.fixture(scope="module")
def pair(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("vllm-pair")
    # Both at once: each start costs minutes on a loaded machine.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(start_vllm, SPEC, vllm_venv, tmp / f"vllm-{i}.log") for i in range(2)]
        servers = [f.result() for f in futures]
    router: Proc | None = None
    try:
        config = write_config(
            tmp / "models.json", {MODEL: {"urls": [s.url for s in servers], "engine": "vllm"}}
        )
        router = start_router(tmp, config)
        assert router.log_path is not None
        yield Pair(servers, router, router.log_path)
    finally:
        if router is not None:
            router.kill()
        for server in servers:
            stop_vllm(server)


@dataclass
class Seen:
    ids: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    pieces: list[tuple[str, int]] = field(default_factory=list)  # (text, completion tokens so far)
    roles: int = 0
    finish: list[str] = field(default_factory=list)
    usages: list[dict[str, int]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)

    @property
    def chunks(self) -> int:
        return len(self.pieces)


def _bodies() -> list[tuple[str, dict[str, Any]]]:
    common: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "ignore_eos": True,  # random weights may end early; the cut is what is tested
    }
    out: list[tuple[str, dict[str, Any]]] = []
    for i, prompt in enumerate(PROMPTS):
        cmpl = (f"cmpl-{i}", {**common, "prompt": prompt})
        chat = (f"chat-{i}", {**common, "messages": [{"role": "user", "content": prompt}]})
        # Alternate the order, so that the balancer's alternation puts both kinds on each pod.
        out += [cmpl, chat] if i % 2 == 0 else [chat, cmpl]
    return out


async def _stream(client: openai.AsyncOpenAI, rid: str, body: dict[str, Any], seen: Seen) -> Seen:
    chat = "messages" in body
    path = "/chat/completions" if chat else "/completions"
    headers = {"x-request-id": rid}
    stream = await client.post(
        path,
        body=body,
        cast_to=object,
        stream=True,
        stream_cls=openai.AsyncStream[object],
        options={"headers": headers},
    )
    async for chunk in stream:
        assert isinstance(chunk, dict), chunk
        seen.ids.add(chunk["id"])
        seen.created.add(chunk["created"])
        usage = chunk.get("usage")
        for choice in chunk["choices"]:
            if chat:
                delta = choice["delta"]
                seen.roles += "role" in delta
                text = delta.get("content") or ""
            else:
                text = choice.get("text") or ""
            seen.pieces.append((text, usage["completion_tokens"] if usage else -1))
            if choice.get("finish_reason"):
                seen.finish.append(choice["finish_reason"])
        if not chunk["choices"] and usage:
            seen.usages.append(usage)
    return seen


async def _run(pair: Pair, run: str, kill: bool) -> tuple[dict[str, Seen], int | None]:
    client = openai.AsyncOpenAI(
        base_url=pair.router.url + "/v1", api_key="unused", max_retries=0, timeout=300
    )
    bodies = _bodies()
    seen = {name: Seen() for name, _ in bodies}
    tasks = [
        asyncio.ensure_future(_stream(client, f"{run}-{name}", body, seen[name])) for name, body in bodies
    ]
    killed = None
    if kill:
        while sum(s.chunks >= CHUNKS_BEFORE_KILL for s in seen.values()) < 4:
            assert not any(t.done() and t.exception() for t in tasks)
            await asyncio.sleep(0.01)
        assert not all(t.done() for t in tasks), "every stream ended before the kill"
        killed = await asyncio.to_thread(_kill_busiest, pair.servers)
        print(f"killed server {killed}; chunks then {[s.chunks for s in seen.values()]}")
    await asyncio.gather(*tasks)
    return seen, killed


def _running(server: Proc) -> float:
    for line in http_get(server.url + "/metrics")[1].decode().splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _kill_busiest(servers: list[Proc]) -> int:
    """SIGKILL the API process of the pod generating the most, and its engine-core child (which a
    killed parent would orphan); returns which server it was."""
    index = max(range(len(servers)), key=lambda i: _running(servers[i]))
    popen = servers[index].popen
    assert popen is not None
    children = child_pids(popen.pid)
    os.kill(popen.pid, signal.SIGKILL)
    popen.wait(30)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return index


def _carried(log: Path) -> dict[str, int]:
    """Request id -> tokens carried, from the router's migration log lines."""
    found: dict[str, int] = {}
    for line in log.read_text().splitlines():
        m = re.search(r"stream (\S+) continues on \S+ \((\d+) tokens carried\)", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def _post(server: Proc, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _continued(server: Proc, body: dict[str, Any], carried_text: str, carried: int) -> str:
    """What the pod generates for the router's continuation of ``body`` (not streamed)."""
    rest = {"model": MODEL, "max_tokens": MAX_TOKENS - carried, "temperature": 0, "ignore_eos": True}
    if "messages" in body:
        messages = [*body["messages"], {"role": "assistant", "content": carried_text}]
        reply = _post(
            server,
            "/v1/chat/completions",
            {**rest, "messages": messages, "continue_final_message": True, "add_generation_prompt": False},
        )
        return str(reply["choices"][0]["message"]["content"] or "")
    return str(
        _post(server, "/v1/completions", {**rest, "prompt": body["prompt"] + carried_text})["choices"][0][
            "text"
        ]
    )


def _round_trips(server: Proc, prompt: str, carried: int) -> bool:
    """Whether the prompt plus the first ``carried`` generated tokens' text re-tokenizes to exactly
    the prompt's tokens and those generated tokens."""
    rest = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    uncut = _post(server, "/v1/completions", {**rest, "prompt": prompt, "return_token_ids": True})
    choice = uncut["choices"][0]
    ids = choice["token_ids"][:carried]
    prompt_ids = uncut.get("prompt_token_ids") or choice.get("prompt_token_ids")
    detok = _post(server, "/detokenize", {"model": MODEL, "tokens": ids})["prompt"]
    tokens = _post(server, "/tokenize", {"model": MODEL, "prompt": prompt + detok})["tokens"]
    return bool(tokens == [*prompt_ids, *ids])


async def test_vllm_streams_survive_a_killed_pod(pair: Pair) -> None:
    uncut, _ = await _run(pair, "uncut", kill=False)
    assert len({s.text for s in uncut.values()}) > 1, "the prompts should give different answers"
    cut, killed = await _run(pair, "cut", kill=True)
    assert killed is not None
    survivor = pair.servers[1 - killed]
    carried = {
        rid.removeprefix("cut-"): n for rid, n in _carried(pair.router_log).items() if rid.startswith("cut-")
    }
    log = [line for line in pair.router_log.read_text().splitlines() if "/metrics" not in line]
    assert carried, "no stream moved:\n" + "\n".join(log[-30:])

    bodies = dict(_bodies())
    exact, seams = 0, 0
    for name, got in cut.items():
        want = uncut[name]
        assert len(got.ids) == 1, f"{name}: one response id, got {got.ids}"
        assert len(got.created) == 1, f"{name}: one created, got {got.created}"
        assert got.finish == ["length"], name
        assert got.roles == (1 if name.startswith("chat") else 0), f"{name}: one opening chunk"
        assert len(got.usages) == 1, f"{name}: one final usage"
        assert got.usages[0]["completion_tokens"] == MAX_TOKENS
        assert got.usages[0]["prompt_tokens"] == want.usages[0]["prompt_tokens"]
        assert [n for _, n in got.pieces if n >= 0] == sorted(n for _, n in got.pieces if n >= 0)
        if name not in carried:
            assert got.text == want.text, f"{name} was not cut, yet differs"
            continue
        k = carried[name]
        carried_text = "".join(t for t, n in got.pieces if 0 <= n <= k)
        assert want.text.startswith(carried_text), f"{name}: the text before the cut is the uncut run's"
        assert got.text == carried_text + _continued(survivor, bodies[name], carried_text, k), name
        exact += got.text == want.text
        if name.startswith("cmpl") and _round_trips(survivor, bodies[name]["prompt"], k):
            seams += 1
            assert got.text == want.text, f"{name}: the seam round-trips, so the text is the uncut run's"
    print(
        f"moved {len(carried)} streams ({carried}); {exact} equal the uncut text; "
        f"{seams} completion seams round-trip"
    )
