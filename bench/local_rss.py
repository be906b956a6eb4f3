"""Memory of ``modelyard-local`` (SmolLM2-135M chat server + MiniLM embedding server + router): starts
it, waits until a chat completion and an embedding pass through the router, then sums the resident
memory (RSS, and PSS, which splits shared pages fairly) of every process it started. Not a test.

With ``--baseline REV`` the same is measured first for another commit, checked out with ``git
worktree`` into a temporary directory, so before and after come from one run on one machine:

    python bench/local_rss.py --baseline 5609340 [--json bench/results/local_rss.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from net import free_port

REPO = Path(__file__).resolve().parent.parent
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _kib(path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    module = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m"), words[0] if words else "?")
    task = "embed" if "embed" in words else ""
    return f"{module} {task}".strip()


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def _wait_serving(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16}
    embed = {"model": EMBED, "input": ["a sentence to embed", "another one"]}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"modelyard-local exited with {proc.returncode}")
        if _post(f"{base}/chat/completions", chat) == 200 and _post(f"{base}/embeddings", embed) == 200:
            return
        time.sleep(1.0)
    raise SystemExit(f"modelyard-local did not serve within {timeout_s:.0f} s")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """modelyard-local and everything it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def _checkout(rev: str | None) -> Iterator[Path]:
    if rev is None:
        yield REPO
        return
    dest = Path(tempfile.mkdtemp(prefix="modelyard-rss-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(dest), rev], check=True)
    try:
        yield dest
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(dest)], check=False)


def measure(tree: Path, label: str, timeout_s: float, settle_s: float) -> dict[str, Any]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(tree / p) for p in ("server", "operator", "router", ".")),
        # The router's metrics port defaults to a fixed 9090, which another run on the host may hold.
        "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.local", "--port", str(port)],
        env=env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_serving(f"http://127.0.0.1:{port}/v1", proc, timeout_s)
        time.sleep(settle_s)
        rows: list[dict[str, Any]] = []
        for pid in _tree(proc.pid):
            status = f"/proc/{pid}/status"
            rss, pss = _kib(status, "VmRSS"), _kib(f"/proc/{pid}/smaps_rollup", "Pss")
            rows.append(
                {
                    "pid": pid,
                    "process": _describe(pid),
                    "rss_mib": rss / 1024,
                    "pss_mib": pss / 1024,
                    # Anonymous pages are the process's own; file pages (mapped libraries, mostly torch's)
                    # are shared by every process that maps the same file, yet counted in each one's RSS.
                    "anon_mib": _kib(status, "RssAnon") / 1024,
                    "file_mib": _kib(status, "RssFile") / 1024,
                }
            )
    finally:
        _stop_group(proc)
    total_rss = sum(r["rss_mib"] for r in rows)
    total_pss = sum(r["pss_mib"] for r in rows)
    print(f"\n{label} ({tree}):")
    for r in sorted(rows, key=lambda r: -r["rss_mib"]):
        print(
            f"  {r['process']:<48} RSS {r['rss_mib']:8.1f} MiB   PSS {r['pss_mib']:8.1f} MiB"
            f"   (anon {r['anon_mib']:7.1f}, file {r['file_mib']:7.1f})"
        )
    print(f"  {'total':<48} RSS {total_rss:8.1f} MiB   PSS {total_pss:8.1f} MiB")
    return {"label": label, "processes": rows, "total_rss_mib": total_rss, "total_pss_mib": total_pss}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default=None, help="a git revision to measure first (before)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for serving")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the first requests")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    if args.baseline:
        with _checkout(args.baseline) as tree:
            results.append(measure(tree, f"before ({args.baseline})", args.timeout, args.settle))
    results.append(measure(REPO, "after (this checkout)", args.timeout, args.settle))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
