"""Failover on real processes. Two model servers behind the router, one SIGKILLed while 30 SDK streams
run: every stream completes, and its text, logprobs and usage equal an uncut run's. A non-streamed
answer lost with its pod is run again only when the request is deterministic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fixtures.models import ServerProcess, start_server
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import http_get
from tests.support.waits import eventually

pytestmark = [pytest.mark.model, pytest.mark.timeout(420)]

MODEL = "tiny-llama"
STREAMS = 30
MAX_TOKENS = 200


def _max_tokens(i: int) -> int:
    """Stream ``i``'s length. Unequal lengths keep a server's batch from finishing all at once and being
    refilled with requests that have sent nothing yet: a kill at that moment would cut no stream mid-way
    (what moves then are retries, not migrations)."""
    return MAX_TOKENS + 6 * i


CHUNKS_BEFORE_KILL = 8


@dataclass
class Pair:
    servers: list[ServerProcess]
    router: Proc


@pytest.fixture
def pair(tiny_llama_path: Path, server_logs_dir: Path, tmp_path: Path) -> Iterator[Pair]:
    # Few rows at once: the tiny model outruns 30 streams' client, and a kill after a server has sent
    # everything would test nothing. The rest wait in its queue (and move as retries, not migrations).
    args = [
        "--model", str(tiny_llama_path), "--served-model-name", MODEL, "--dtype", "float32",
        "--max-num-seqs", "4",
    ]  # fmt: skip
    servers: list[ServerProcess] = []
    router: Proc | None = None
    try:
        for _ in range(2):
            servers.append(start_server(args, log_dir=server_logs_dir))
        config = write_config(tmp_path / "models.json", {MODEL: [s.base_url for s in servers]})
        router = start_router(tmp_path, config)
        yield Pair(servers, router)
    finally:
        if router is not None:
            router.kill()
        for server in servers:
            server.stop()


@dataclass
class Seen:
    """One stream as the client saw it."""

    ids: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    text: str = ""
    chunks: int = 0
    logprobs: list[tuple[str, float]] = field(default_factory=list)
    usages: list[dict[str, Any]] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)


async def _stream(client: openai.AsyncOpenAI, body: dict[str, Any], seen: Seen) -> Seen:
    stream = await client.chat.completions.create(**body)
    async for chunk in stream:
        seen.ids.add(chunk.id)
        seen.created.add(chunk.created)
        if chunk.usage is not None:
            seen.usages.append(chunk.usage.model_dump())
        for choice in chunk.choices:
            seen.text += choice.delta.content or ""
            seen.chunks += 1
            if choice.logprobs is not None and choice.logprobs.content:
                seen.logprobs += [(c.token, c.logprob) for c in choice.logprobs.content]
            if choice.finish_reason is not None:
                seen.finish.append(choice.finish_reason)
    return seen


def _bodies(sampling: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Story number {i}, please."}],
            "max_tokens": _max_tokens(i),
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "top_logprobs": 1,
            "extra_body": {"ignore_eos": True},
            **({"seed": 1000 + i} if "seed" in sampling else {}),
            **{k: v for k, v in sampling.items() if k != "seed"},
        }
        for i in range(STREAMS)
    ]


async def _run(
    router: Proc,
    bodies: list[dict[str, Any]],
    kill: Callable[[], int] | None = None,
    kill_after: int = CHUNKS_BEFORE_KILL,
) -> list[Seen]:
    """Run the streams; with ``kill``, call it (off the event loop, which must keep reading the streams:
    a blocked reader lets the servers finish into socket buffers) once four streams are under way; it
    sends the signal and returns the pid it hit."""
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    seen = [Seen() for _ in bodies]
    tasks = [asyncio.ensure_future(_stream(client, b, s)) for b, s in zip(bodies, seen, strict=True)]
    if kill is not None:
        while sum(s.chunks >= kill_after for s in seen) < 4:
            assert not any(t.done() and t.exception() for t in tasks), [
                t.exception() for t in tasks if t.done()
            ]
            await asyncio.sleep(0.01)
        assert not all(t.done() for t in tasks), "every stream ended before the kill"
        try:
            await asyncio.to_thread(kill)
        except EnginesIdle:
            await asyncio.gather(*tasks)  # the run is void: let it end, the caller runs it again
            raise
    return list(await asyncio.gather(*tasks))


class EnginesIdle(Exception):
    """Every engine had generated all its tokens before the kill (the client reads behind the engines,
    as on a loaded machine): killing now would cut nothing that has to move."""


async def _run_cut(
    router: Proc, bodies: list[dict[str, Any]], kill: Callable[[], int], kill_after: int = CHUNKS_BEFORE_KILL
) -> list[Seen]:
    """``_run`` with a kill that must land while an engine is still generating; tried up to three times."""
    for _ in range(3):
        try:
            return await _run(router, bodies, kill=kill, kill_after=kill_after)
        except EnginesIdle:
            continue
    pytest.fail("three runs in a row: every engine finished before the kill")


def _signal(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return pid


def _busiest(servers: list[ServerProcess], *, generating: bool = False) -> ServerProcess:
    """The server running the most requests now (the router balances, but not always evenly);
    ``generating``: its engine must still be generating (a SIGKILLed HTTP process loses what it had
    not sent either way, a killed engine only what it had not generated)."""

    def running(server: ServerProcess) -> float:
        for line in server.get("/metrics")[1].decode().splitlines():
            if line.startswith("vllm:num_requests_running{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    busiest = max(servers, key=running)
    if generating and running(busiest) == 0:
        raise EnginesIdle()
    return busiest


def _migrated(router: Proc) -> float:
    body = http_get(router.metrics_url)[1].decode()
    prefix = f'modelyard_router_migrations_total{{model="{MODEL}",outcome="migrated"}} '
    return sum(float(line[len(prefix) :]) for line in body.splitlines() if line.startswith(prefix))


def _assert_same(cut: list[Seen], uncut: list[Seen]) -> None:
    for i, (got, want) in enumerate(zip(cut, uncut, strict=True)):
        assert len(got.ids) == 1, f"stream {i}: one response id, got {got.ids}"
        assert len(got.created) == 1, f"stream {i}: one created, got {got.created}"
        assert got.text == want.text, f"stream {i} differs from the uncut run"
        assert got.finish == want.finish == ["length"]
        assert len(got.usages) == 1, f"stream {i}: one final usage"
        assert got.usages[0]["completion_tokens"] == want.usages[0]["completion_tokens"] == _max_tokens(i)
        assert got.usages[0]["prompt_tokens"] == want.usages[0]["prompt_tokens"]
        assert [t for t, _ in got.logprobs] == [t for t, _ in want.logprobs]
        assert len(got.logprobs) == _max_tokens(i)
        assert [lp for _, lp in got.logprobs] == pytest.approx([lp for _, lp in want.logprobs], abs=1e-3)


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": True}], ids=["greedy", "seeded"]
)
async def test_streams_survive_a_killed_server(pair: Pair, sampling: dict[str, Any]) -> None:
    bodies = _bodies(sampling)
    uncut = await _run(pair.router, bodies)
    assert len({s.text for s in uncut}) > 1, "the prompts should give different answers"
    # SIGKILL: no goodbye, the connections just break.
    cut = await _run_cut(
        pair.router, bodies, kill=lambda: _signal(_busiest(pair.servers, generating=True).process.pid)
    )
    _assert_same(cut, uncut)
    assert _migrated(pair.router) >= 1


async def test_streams_survive_a_killed_engine_process(pair: Pair) -> None:
    """The HTTP process lives on and ends its streams with an error event: they move too."""
    bodies = _bodies({"temperature": 0})
    uncut = await _run(pair.router, bodies)
    cut = await _run_cut(
        pair.router,
        bodies,
        kill=lambda: _signal(_busiest(pair.servers, generating=True).engine_pid()),
        kill_after=1,
    )
    _assert_same(cut, uncut)
    assert _migrated(pair.router) >= 1


@pytest.mark.parametrize(
    ("sampling", "status"), [({"temperature": 0}, 200), ({"seed": 5}, 200), ({"temperature": 0.7}, 502)]
)
async def test_an_answer_lost_with_its_pod_is_run_again_only_when_deterministic(
    stack: Stack, sampling: dict[str, Any], status: int
) -> None:
    backends = [stack.backend(name, "--delay-s", "3") for name in ("a", "b")]
    router = stack.router({"m": [b.url for b in backends]})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **sampling}
    async with aiohttp.ClientSession() as session:
        answer = asyncio.ensure_future(session.post(router.url + "/v1/chat/completions", json=body))
        holder = await eventually(
            lambda: next((b for b in backends if _stats(b)["in_flight"] == 1), None),
            10,
            "the request on a pod",
        )
        holder.kill()
        async with await answer as resp:
            got = await resp.json()
    assert resp.status == status, got
    if status == 502:
        assert got["error"]["code"] == "upstream_disconnected"
        assert "not deterministic" in got["error"]["message"]
    else:
        assert got["choices"][0]["message"]["content"]


def _stats(proc: Proc) -> dict[str, Any]:
    stats: dict[str, Any] = json.loads(http_get(proc.url + "/stats")[1])
    return stats


@pytest.mark.parametrize(
    ("extra", "reason"),
    [({"n": 2}, "n > 1 does not resume"), ({}, "does not report tokens")],
    ids=["n>1", "not-a-modelyard-server"],
)
async def test_a_stream_that_cannot_move_ends_with_the_reason(
    stack: Stack, extra: dict[str, Any], reason: str
) -> None:
    backends = [stack.backend(name, "--cut-after", "3") for name in ("a", "b")]
    router = stack.router({"m": [b.url for b in backends]})
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(router.url + "/v1/chat/completions", json=body) as resp,
    ):
        raw = await resp.read()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_disconnected"
    assert reason in error["message"]
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_migrations_total{model="m",outcome="refused"} 1.0' in metrics
