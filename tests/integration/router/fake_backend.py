"""A fake OpenAI *upstream* for router tests: deterministic bodies, controllable latency and faults.

It stands in for a model-server pod where the test is about the router (faults, latency, balancing);
tests about OpenAI behaviour use the real model server. Run as its own process so tests can kill it::

    python -m tests.integration.router.fake_backend --port 8001 --name a [--delay-s 0.05]
        [--chunks 8] [--chunk-delay-s 0.01] [--cut-after 3] [--fail-status 503] [--max-concurrent 32]

``--max-concurrent N`` serves N requests at a time and queues the rest in arrival order, like a model
server whose batch is full; ``--chunks-from-max-tokens`` streams ``max_tokens`` chunks, not ``--chunks``.

Every answer names the backend (``x-backend`` header and the completion id), so a test can count
where requests went. GET /stats returns the counts; POST /admin sets delay/fault knobs at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

STATE = web.AppKey("state", dict)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(name: str, rid: str, obj: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": f"{name}-{rid}",
        "object": obj,
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    if st["max_concurrent"]:
        sem = st.setdefault("semaphore", asyncio.Semaphore(st["max_concurrent"]))
        async with sem:
            return await _chat(request)
    return await _chat(request)


async def _chat(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    raw = await request.read()
    st["requests"] += 1
    st["last_headers"] = dict(request.headers)
    st["bodies"].append(raw.decode(errors="replace"))
    body = json.loads(raw)
    rid = request.headers.get("x-request-id", "none")
    st["request_ids"].append(rid)
    st["in_flight"] += 1
    st["max_in_flight"] = max(st["max_in_flight"], st["in_flight"])
    try:
        if st["fail_status"]:
            return web.json_response(
                {"error": {"message": "fake failure", "type": "server_error", "param": None, "code": None}},
                status=st["fail_status"],
            )
        if st["delay_s"]:
            await asyncio.sleep(st["delay_s"])
        name = st["name"]
        model = body.get("model", "?")
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-backend": name})
            await resp.prepare(request)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await resp.write(
                _chunk(name, rid, "chat.completion.chunk", model, {"role": "assistant", "content": ""}, None)
            )
            chunks = st["chunks"]
            if st["chunks_from_max_tokens"] and isinstance(body.get("max_tokens"), int):
                chunks = body["max_tokens"]  # answers of different lengths, as a real server's are
            for i in range(chunks):
                if st["cut_after"] is not None and i >= st["cut_after"]:
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                if st["chunk_delay_s"]:
                    await asyncio.sleep(st["chunk_delay_s"])
                await resp.write(
                    _chunk(name, rid, "chat.completion.chunk", model, {"content": f"t{i} "}, None)
                )
            await resp.write(_chunk(name, rid, "chat.completion.chunk", model, {}, "stop"))
            if include_usage:
                usage = {
                    "id": f"{name}-{rid}",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [],
                    "usage": _usage(7, chunks),
                }
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            if st["linger_after_done_s"]:
                # Like a server that finishes its bookkeeping before closing: the client has all it
                # needs and may hang up first.
                await asyncio.sleep(st["linger_after_done_s"])
            await resp.write_eof()
            return resp
        return web.json_response(
            {
                "id": f"{name}-{rid}",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"hello from {name}", "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(5, 3),
            },
            headers={"x-backend": name},
        )
    finally:
        st["in_flight"] -= 1
        st["served"] += 1


async def stats(request: web.Request) -> web.Response:
    st = request.app[STATE]
    shown = {k: v for k, v in st.items() if k not in ("bodies", "semaphore")}
    return web.json_response(shown | {"bodies": st["bodies"][-5:]})


async def admin(request: web.Request) -> web.Response:
    request.app[STATE].update(await request.json())
    return web.json_response({"ok": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(name: str, **knobs: Any) -> web.Application:
    app = web.Application()
    app[STATE] = {
        "name": name,
        "requests": 0,
        "served": 0,
        "in_flight": 0,
        "max_in_flight": 0,
        "request_ids": [],
        "bodies": [],
        "last_headers": {},
        "delay_s": 0.0,
        "chunks": 8,
        "chunk_delay_s": 0.0,
        "cut_after": None,
        "linger_after_done_s": 0.0,
        "fail_status": 0,
        "max_concurrent": 0,
        "chunks_from_max_tokens": False,
        "started": time.time(),
    } | knobs
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_post("/admin", admin)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", required=True)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--chunk-delay-s", type=float, default=0.0)
    p.add_argument("--cut-after", type=int, default=None)
    p.add_argument("--fail-status", type=int, default=0)
    p.add_argument("--linger-after-done-s", type=float, default=0.0)
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--chunks-from-max-tokens", action="store_true")
    a = p.parse_args()
    app = make_app(
        a.name,
        delay_s=a.delay_s,
        chunks=a.chunks,
        chunk_delay_s=a.chunk_delay_s,
        cut_after=a.cut_after,
        linger_after_done_s=a.linger_after_done_s,
        fail_status=a.fail_status,
        max_concurrent=a.max_concurrent,
        chunks_from_max_tokens=a.chunks_from_max_tokens,
    )
    web.run_app(app, host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
