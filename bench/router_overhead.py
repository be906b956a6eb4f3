"""Router overhead benchmark (not a test): Modelyard router vs its peers vs direct, one run.

A fast fake OpenAI upstream (aiohttp, separate process) answers chat completions at once, either as a
JSON body or as an SSE stream of ``--chunks`` chunks without delay. The same asyncio + aiohttp client
drives (1) the upstream directly, (2) the Modelyard router and (3) LiteLLM's proxy, each in front of the
same upstream, one after the other, and reports:

* added latency: p50/p99 of (via proxy) minus direct at concurrency 1 (sequential requests),
* max requests/s at ``--concurrency`` in-flight requests for ``--seconds``,
* for streams: time to first byte and full-stream latency,
* router CPU per request (user + system time of the proxy's process over the throughput run, / requests).

``--store`` adds the Modelyard router once more with an API key whose limits and budgets live in a real
redis-server (Debian's, tests/integration/router/install-redis.sh): the cost of shared limits.
``--peers`` adds the Rust routers from PyPI, sglang-router and vllm-router (round-robin), each installed
into its own venv under ~/.cache/modelyard/bench on first use.

``--levers`` adds Modelyard once per throughput lever, each changing one thing from the default router
(uvloop, access log off, one worker): ``asyncio`` (uvloop not loaded), ``+access-log``, ``-metrics``
(the per-request metrics record skipped), ``model-only-parse`` (the body decoded with msgspec into just
``model`` and ``stream``, its other fields not parsed: the ceiling of a faster parse), ``aiohttp-client``
(aiohttp's client to the pods instead of the router's own, upstream_http.py), ``default-gc`` (Python's
collector thresholds, no freeze after start-up), ``aiohttp-routing`` (the hot proxy paths through aiohttp's
router and middlewares again), ``json-loads`` (``json.loads`` instead of msgspec for bodies and usage).
``--workers N``
adds Modelyard with N worker processes on one port, and with ``--store`` once more with the store. The
variants that patch the router (``--router-variant``) run it
in-process from this script; a worker set's CPU is the supervisor's plus its live workers'. It also
times the parse alone, ``json.loads`` of the whole body vs msgspec's ``model``/``stream``-only decode, at
three body sizes (``parse_us`` in the JSON).

LiteLLM (``litellm[proxy]==1.100.5``) pins dependencies that clash with ours, so it is installed into
its own venv under ~/.cache/modelyard/litellm-venv on first use (needs PyPI); ``--no-litellm`` skips it.

    python bench/router_overhead.py [--seconds 5] [--concurrency 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from net import free_port

REPO = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.100.5"
LITELLM_VENV = Path.home() / ".cache" / "modelyard" / "litellm-venv"
MODEL = "bench-model"
BENCH_CACHE = Path.home() / ".cache" / "modelyard" / "bench"
PEERS = {"sglang-router": "0.3.2", "vllm-router": "0.1.17"}

# ---- fake upstream (run in a child process: `router_overhead.py --upstream PORT CHUNKS`) -------------


def run_upstream(port: int, chunks: int) -> None:
    from aiohttp import web

    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        c = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(c).encode() + b"\n\n"

    stream_chunks = [chunk({"role": "assistant", "content": ""}, None)]
    stream_chunks += [chunk({"content": f"tok{i} "}, None) for i in range(chunks)]
    stream_chunks += [chunk({}, "stop"), b"data: [DONE]\n\n"]

    async def chat(request: web.Request) -> web.StreamResponse:
        data = await request.json()
        if not data.get("stream"):
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in stream_chunks:
            await resp.write(c)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ---- processes -------------------------------------------------------------------------------------------


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process started (the last first), then kill whichever lingers past 15 s."""
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (one time)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True
    )
    return exe


@dataclass
class Target:
    name: str
    base: str  # base URL up to and including /v1
    pid: int | None = None  # the proxy's process, whose CPU time is measured


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its reaped children and its live descendants (Linux /proc):
    a router started with workers counts its supervisor and every worker."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(c) for c in children)


# ---- router variants for --levers (run in-process: `router_overhead.py --router-variant NAME`) --------


def run_router_variant(name: str) -> None:
    """The router with one lever changed by patching it before it starts (bench only)."""
    if name == "asyncio":
        sys.modules["uvloop"] = None  # type: ignore[assignment]
    elif name == "no-metrics":
        import modelyard.router.proxy as proxy
        from modelyard.router.exchange import Exchange

        def no_metrics(ex: Exchange, elapsed: float, metrics: Any, access_log_on: bool) -> None:
            return None

        proxy.record = no_metrics  # type: ignore[assignment]
    elif name == "default-gc":
        import modelyard.router.__main__ as router_main_module

        router_main_module._tune_gc = lambda: None
    elif name in ("aiohttp-routing", "aiohttp-front"):
        from aiohttp import web

        import modelyard.router.__main__ as router_main_module

        def tcp_site(runner: Any, settings: Any, reuse_port: bool) -> web.BaseSite:
            return web.TCPSite(
                runner, settings.host, settings.port, backlog=1024, reuse_address=True, reuse_port=reuse_port
            )

        router_main_module._site = tcp_site  # type: ignore[assignment]  # aiohttp's server on the port
        if name == "aiohttp-routing":  # and every request through aiohttp's router too
            router_main_module._Runner = web.AppRunner  # type: ignore[assignment,misc]
    elif name == "json-loads":
        import modelyard.router.body as body

        body.loads = json.loads  # type: ignore[assignment]
    elif name == "aiohttp-client":
        from modelyard.router.upstream_http import UpstreamClient

        UpstreamClient.handles = staticmethod(lambda base: False)  # type: ignore[method-assign]
    elif name == "model-only-parse":
        import msgspec

        import modelyard.router.proxy as proxy
        from modelyard.router.body import RoutedBody

        class Routing(msgspec.Struct):
            model: str
            stream: bool = False

        decoder = msgspec.json.Decoder(Routing)

        def parse_model_only(raw: bytes) -> RoutedBody:
            routed = decoder.decode(raw)  # validates the whole document, builds only two fields
            return RoutedBody(model=routed.model, stream=routed.stream, fields={})

        proxy.parse_body = parse_model_only  # type: ignore[assignment]
        import modelyard.router.front as front

        front.parse_body = parse_model_only  # type: ignore[assignment]  # the front parses first
    else:
        raise SystemExit(f"unknown router variant {name}")
    from modelyard.router.__main__ import main as router_main

    router_main([])


def parse_costs() -> dict[str, dict[str, float]]:
    """µs per parse of a chat body: the whole body with json.loads (today) vs msgspec model/stream only."""
    import timeit

    import msgspec

    class Routing(msgspec.Struct):
        model: str
        stream: bool = False

    decoder = msgspec.json.Decoder(Routing)
    out: dict[str, dict[str, float]] = {}
    for label, chars in (("0.1KB", 10), ("10KB", 10_000), ("200KB", 200_000)):
        body = json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x" * chars}], "stream": False}
        ).encode()
        n = max(20, 200_000 // max(1, chars))
        full = min(timeit.repeat(lambda b=body: json.loads(b), number=n, repeat=3)) / n * 1e6
        fast = min(timeit.repeat(lambda b=body: decoder.decode(b), number=n, repeat=3)) / n * 1e6
        out[label] = {"json_loads_us": full, "msgspec_model_only_us": fast}
    return out


def ensure_peer(name: str) -> Path:
    venv = BENCH_CACHE / f"{name}-venv"
    if (
        not (venv / "bin" / "python").exists()
        or subprocess.run([str(venv / "bin" / "pip"), "show", "-q", name], capture_output=True).returncode
    ):
        print(f"installing {name}=={PEERS[name]} into {venv} (one time)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{name}=={PEERS[name]}"], check=True)
    return venv


# ---- load generation ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one(session: aiohttp.ClientSession, url: str, payload: bytes) -> tuple[float, float]:
    """(time to first body byte, total time) of one request, in seconds."""
    t0 = time.perf_counter()
    async with session.post(
        url, data=payload, headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.read())[:300]!r}")
        first = None
        async for _ in r.content.iter_any():
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
    return (first if first is not None else total), total


async def sequential(target: Target, stream: bool, n: int, warmup: int = 50) -> dict[str, float]:
    payload = request_body(stream)
    url = target.base + "/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
        for _ in range(warmup):
            await one(s, url, payload)
        firsts, totals = [], []
        for _ in range(n):
            f, t = await one(s, url, payload)
            firsts.append(f)
            totals.append(t)
    return {
        "p50_ms": pct(totals, 0.5) * 1e3,
        "p99_ms": pct(totals, 0.99) * 1e3,
        "ttfb_p50_ms": pct(firsts, 0.5) * 1e3,
        "ttfb_p99_ms": pct(firsts, 0.99) * 1e3,
    }


async def throughput(target: Target, stream: bool, concurrency: int, seconds: float) -> dict[str, float]:
    payload = request_body(stream)
    url = target.base + "/chat/completions"
    done = 0
    errors = 0
    totals: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.gather(*(one(s, url, payload) for _ in range(concurrency)))  # warm pool
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    totals.append((await one(s, url, payload))[1])
                    done += 1
                except Exception:
                    errors += 1

        cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(target.pid) - cpu0 if target.pid else float("nan")
    return {
        "rps": done / elapsed,
        "cpu_us_per_req": cpu / max(1, done) * 1e6,
        "errors": float(errors),
        "p50_ms": pct(totals, 0.5) * 1e3,
        "p99_ms": pct(totals, 0.99) * 1e3,
    }


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {k: pct([r[k] for r in rounds], 0.5) for k in rounds[0]}


def request_body(stream: bool) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 16,
            "stream": stream,
        }
    ).encode()


# ---- main ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--sequential", type=int, default=1000, help="requests in each c=1 latency run")
    p.add_argument("--chunks", type=int, default=32, help="content chunks per streamed answer")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--store", action="store_true", help="also Modelyard with limits in a redis-server")
    p.add_argument("--peers", action="store_true", help="also sglang-router and vllm-router (PyPI)")
    p.add_argument("--levers", action="store_true", help="also Modelyard once per throughput lever")
    p.add_argument(
        "--front-ab",
        action="store_true",
        help="also Modelyard with aiohttp's server in front instead of the lean front (front.py)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="also Modelyard with this many workers (and +store)"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="also the router from another checkout's tree (e.g. `git archive` of an older commit)",
    )
    p.add_argument("--rounds", type=int, default=1, help="throughput rounds over all targets (median)")
    p.add_argument("--only-mode", choices=("json", "stream"), help="run one of the two modes only")
    p.add_argument(
        "--json",
        type=Path,
        default=REPO / "bench" / "results" / "router_overhead.json",
        help="where the results are written as JSON",
    )
    p.add_argument("--upstream", nargs=2, type=int, metavar=("PORT", "CHUNKS"), help=argparse.SUPPRESS)
    p.add_argument("--router-variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.upstream:
        run_upstream(*args.upstream)
        return
    if args.router_variant:
        run_router_variant(args.router_variant)
        return

    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("operator", "router", ".")))

    def spawn(
        name: str, argv: list[str], ready: str, extra_env: dict[str, str], timeout_s: float = 60
    ) -> int:
        log = tmp / f"{name}.log"
        proc = subprocess.Popen(
            argv, env=env | extra_env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp
        )
        procs.append(proc)
        wait_ready(ready, proc, timeout_s, log)
        return proc.pid

    def modelyard(name: str, extra_env: dict[str, str], variant: str | None = None) -> Target:
        rp = free_port()
        argv = [sys.executable, "-m", "modelyard.router"]
        if variant is not None:
            argv = [sys.executable, __file__, "--router-variant", variant]
        pid = spawn(
            name,
            argv,
            f"http://127.0.0.1:{rp}/readyz",
            {
                "MODELYARD_ROUTER_PORT": str(rp),
                "MODELYARD_ROUTER_METRICS_PORT": str(free_port()),
                "MODELYARD_ROUTER_HOST": "127.0.0.1",
                "MODELYARD_ROUTER_STATIC_CONFIG": str(cfg),
                "MODELYARD_ROUTER_ACCESS_LOG": "false",
            }
            | extra_env,
        )
        return Target(name, f"http://127.0.0.1:{rp}/v1", pid)

    try:
        up = free_port()
        spawn(
            "upstream",
            [sys.executable, __file__, "--upstream", str(up), str(args.chunks)],
            f"http://127.0.0.1:{up}/health",
            {},
        )
        targets = [Target("direct", f"http://127.0.0.1:{up}/v1")]

        cfg = tmp / "router.json"
        cfg.write_text(json.dumps({"models": {MODEL: [f"http://127.0.0.1:{up}"]}}))
        targets.append(modelyard("modelyard-router", {}))
        if args.baseline is not None:
            base = args.baseline.resolve()
            base_path = os.pathsep.join([str(base / "operator"), str(base / "router"), str(REPO)])
            targets.append(modelyard("my baseline", {"PYTHONPATH": base_path}))
        if args.levers:
            targets.append(modelyard("my asyncio", {}, "asyncio"))
            targets.append(modelyard("my +access-log", {"MODELYARD_ROUTER_ACCESS_LOG": "true"}))
            targets.append(modelyard("my -metrics", {}, "no-metrics"))
            targets.append(modelyard("my model-only-parse", {}, "model-only-parse"))
            targets.append(modelyard("my aiohttp-client", {}, "aiohttp-client"))
            targets.append(modelyard("my default-gc", {}, "default-gc"))
            targets.append(modelyard("my aiohttp-routing", {}, "aiohttp-routing"))
            targets.append(modelyard("my aiohttp-front", {}, "aiohttp-front"))
            targets.append(modelyard("my json-loads", {}, "json-loads"))
        if args.front_ab and not args.levers:
            targets.append(modelyard("my aiohttp-front", {}, "aiohttp-front"))
        if args.workers > 1:
            targets.append(
                modelyard(f"my workers={args.workers}", {"MODELYARD_ROUTER_WORKERS": str(args.workers)})
            )

        if args.store:
            sp = free_port()
            redis_argv = ["redis-server", "--port", str(sp), "--bind", "127.0.0.1", "--save", ""]
            procs.append(subprocess.Popen(redis_argv, stdout=(tmp / "redis.log").open("wb"), cwd=tmp))
            time.sleep(0.5)
            keys = tmp / "keys.yaml"
            # Limits too high to refuse anything: every request pays the full admission and settle.
            keys.write_text(
                "keys: [{name: bench, key: sk-bench, requestsPerMinute: 1000000000, "
                "tokensPerMinute: 1000000000000, maxConcurrent: 100000, tokensPerDay: 1000000000000}]\n"
            )
            store_env = {
                "MODELYARD_ROUTER_STORE_URL": f"redis://127.0.0.1:{sp}/0",
                "MODELYARD_ROUTER_API_KEYS_FILE": str(keys),
            }
            targets.append(modelyard("modelyard+store", store_env))
            if args.levers:
                targets.append(modelyard("my workers=2+store", store_env | {"MODELYARD_ROUTER_WORKERS": "2"}))

        if args.peers:
            upstream = f"http://127.0.0.1:{up}"
            for name in PEERS:
                venv = ensure_peer(name)
                pp = free_port()
                if name == "sglang-router":
                    argv = [str(venv / "bin" / "python"), "-m", "sglang_router.launch_router"]
                else:
                    argv = [str(venv / "bin" / "vllm-router")]
                argv += ["--worker-urls", upstream, "--host", "127.0.0.1", "--port", str(pp)]
                # Each exports metrics on a port of its own (default 29000 for both: they would clash).
                argv += ["--policy", "round_robin", "--prometheus-port", str(free_port())]
                pid = spawn(name, argv, f"http://127.0.0.1:{pp}/health", {"PYTHONPATH": ""}, timeout_s=120)
                targets.append(Target(name, f"http://127.0.0.1:{pp}/v1", pid))

        if not args.no_litellm:
            exe = ensure_litellm()
            lcfg = tmp / "litellm.yaml"
            lcfg.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                f"    litellm_params: {{model: openai/{MODEL}, api_key: x,\n"
                f"                     api_base: 'http://127.0.0.1:{up}/v1'}}\n"
                "litellm_settings:\n  telemetry: false\n  set_verbose: false\n"
            )
            lp = free_port()
            lpid = spawn(
                "litellm",
                [
                    str(exe),
                    "--config",
                    str(lcfg),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(lp),
                    "--num_workers",
                    "1",
                ],
                f"http://127.0.0.1:{lp}/health/liveliness",
                {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONPATH": ""},
                timeout_s=180,
            )
            targets.append(Target("litellm-proxy", f"http://127.0.0.1:{lp}/v1", lpid))

        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        results: dict[str, Any] = {"config": config | {"cpus": os.cpu_count()}}
        if args.levers:
            results["parse_us"] = parse_costs()
        modes = (False, True) if args.only_mode is None else (args.only_mode == "stream",)
        for stream in modes:
            mode = "stream" if stream else "json"
            per_round: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
            for t in targets:
                print(f"[{mode}] {t.name}: latency c=1 ...", flush=True)
                results.setdefault(mode, {})[t.name] = {
                    "c1": asyncio.run(sequential(t, stream, args.sequential))
                }
            # Throughput in rounds over all targets, the order reversed every other round, so that the
            # load others put on a shared machine falls on every target alike; the median round counts.
            for n in range(args.rounds):
                for t in targets if n % 2 == 0 else list(reversed(targets)):
                    print(f"[{mode}] {t.name}: throughput c={args.concurrency} round {n + 1} ...", flush=True)
                    per_round[t.name].append(
                        asyncio.run(throughput(t, stream, args.concurrency, args.seconds))
                    )
            for t in targets:
                results[mode][t.name]["max"] = median_round(per_round[t.name])
                results[mode][t.name]["rounds"] = per_round[t.name]
        report(results, [t.name for t in targets])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    finally:
        stop_all(procs)


def report(results: dict[str, Any], names: list[str]) -> None:
    print()
    for label, costs in results.get("parse_us", {}).items():
        print(
            f"parse {label:>6}: json.loads {costs['json_loads_us']:8.1f} us, "
            f"msgspec model-only {costs['msgspec_model_only_us']:8.1f} us"
        )
    best_peer = None
    for mode in ("json", "stream"):
        if mode not in results:
            continue
        r = results[mode]
        direct = r["direct"]["c1"]
        concurrency = results["config"]["concurrency"]
        print(f"== {mode}: c=1 latency (ms) and added over direct; max req/s at c={concurrency}")
        cols = ("p50", "p99", "+p50", "+p99")
        print(
            f"{'target':18} "
            + " ".join(f"{c:>7}" for c in cols)
            + f" {'ttfb p50':>9} {'req/s':>8} {'cpu us/req':>10} {'errors':>6}"
        )
        for n in names:
            c1, mx = r[n]["c1"], r[n]["max"]
            print(
                f"{n:18} {c1['p50_ms']:7.3f} {c1['p99_ms']:7.3f} {c1['p50_ms'] - direct['p50_ms']:7.3f} "
                f"{c1['p99_ms'] - direct['p99_ms']:7.3f} {c1['ttfb_p50_ms']:9.3f} {mx['rps']:8.0f} "
                f"{mx['cpu_us_per_req']:10.0f} {mx['errors']:6.0f}"
            )
        if "litellm-proxy" in r:
            ratio = r["modelyard-router"]["max"]["rps"] / max(1e-9, r["litellm-proxy"]["max"]["rps"])
            print(f"modelyard-router / litellm-proxy req/s: {ratio:.1f}x")
        peers = [n for n in ("sglang-router", "vllm-router") if n in r]
        if peers:
            best_peer = max(peers, key=lambda n: r[n]["max"]["rps"])
            best = r[best_peer]["max"]
            cpu = min(r[n]["max"]["cpu_us_per_req"] for n in peers)
            print(f"vs the best peer ({best_peer}): req/s ratio, CPU/request ratio (vs the leaner peer)")
            for n in names:
                if n in peers or n == "direct" or n == "litellm-proxy":
                    continue
                mx = r[n]["max"]
                print(
                    f"  {n:22} {mx['rps'] / best['rps']:5.2f}x req/s  {mx['cpu_us_per_req'] / cpu:5.2f}x CPU"
                )
        print()


if __name__ == "__main__":
    main()
