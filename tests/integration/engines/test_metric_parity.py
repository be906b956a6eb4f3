"""vLLM v1 metric parity: a real vLLM (PyPI's CPU build) and our server on the same tiny model, in one
run, both driven with the same requests; their ``vllm:`` metric families are diffed by name, type and
label keys. Every vLLM family we do not export must be listed in docs/observability.md with a reason.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.models import ServerProcess, start_server
from tests.integration.engines.test_vllm_backend import (
    CACHE,
    MODEL,
    SPEC,
    start_vllm,
    stop_vllm,
    vllm_venv,  # noqa: F401  (the module fixture that builds or finds vLLM's venv)
)
from tests.integration.engines.vllm_model import ensure_vllm_tiny_llama
from tests.integration.router.procs import Proc
from tests.unit.chart.tools import REPO_ROOT

pytestmark = [pytest.mark.model, pytest.mark.vllm, pytest.mark.timeout(900)]

# What the issue names; both servers must export each.
REQUIRED = {
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_params_max_tokens": "histogram",
    "vllm:request_max_num_generation_tokens": "histogram",
    "vllm:cache_config_info": "gauge",
}
# Ours only: names older vLLM releases exported, kept for dashboards written against them.
OURS_ONLY = {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"}
DOCS = REPO_ROOT / "docs" / "observability.md"

Families = dict[str, tuple[str, frozenset[str]]]


def families(base_url: str) -> Families:
    """``vllm:`` families: name -> (type, label keys over every sample, ``le`` left out)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Families = {}
    for family in text_string_to_metric_families(text):
        # prometheus_client's creation timestamps parse as families of their own: not metrics.
        if not family.name.startswith("vllm:") or family.name.endswith("_created"):
            continue
        keys = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        out[family.name] = (family.type, frozenset(keys))
    return out


@pytest.fixture(scope="module")
def servers(
    vllm_venv: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Proc, ServerProcess]]:
    vllm = start_vllm(SPEC, vllm_venv, tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        model_dir = ensure_vllm_tiny_llama(CACHE / "test-models" / "vllm-tiny-llama")
        args = ["--model", str(model_dir), "--served-model-name", MODEL, "--dtype", "float32"]
        ours = start_server(
            [*args, "--max-model-len", "512", "--max-num-seqs", "16"],
            log_dir=tmp_path_factory.mktemp("ours"),
        )
        try:
            yield vllm, ours
        finally:
            ours.stop()
    finally:
        stop_vllm(vllm)


def _drive(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, n=2)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about routers."}],
        max_tokens=6,
        stream=True,
    )
    for _ in stream:
        pass


@pytest.fixture(scope="module")
def scraped(servers: tuple[Proc, ServerProcess]) -> tuple[Families, Families]:
    vllm, ours = servers
    _drive(vllm.url)
    _drive(ours.base_url)
    return families(vllm.url), families(ours.base_url)


def _documented_gaps() -> set[str]:
    """The backticked ``vllm:`` names of the docs' "vLLM metrics we do not export" table."""
    text = DOCS.read_text()
    section = text.split("### vLLM metrics we do not export", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `vllm:")]
    names = set()
    for row in rows:
        reason = row.split("|")[2].strip()
        assert reason, f"no reason given: {row}"
        names.update(re.findall(r"`(vllm:[a-z_:]+)`", row.split("|")[1]))
    return names


def test_required_metrics_exist_in_both_with_vllms_type(scraped: tuple[Families, Families]) -> None:
    theirs, ours = scraped
    for name, kind in REQUIRED.items():
        assert theirs.get(name, ("",))[0] == kind, f"vLLM: {name}"
        assert ours.get(name, ("",))[0] == kind, f"ours: {name}"


def test_shared_families_have_vllms_type_and_label_keys(scraped: tuple[Families, Families]) -> None:
    theirs, ours = scraped
    shared = sorted(set(theirs) & set(ours))
    assert len(shared) >= 30
    mismatched = {n: (theirs[n], ours[n]) for n in shared if theirs[n] != ours[n]}
    assert not mismatched, mismatched
    assert {"model_name", "engine"} <= theirs["vllm:request_queue_time_seconds"][1]


def test_every_vllm_family_we_do_not_export_is_documented(scraped: tuple[Families, Families]) -> None:
    theirs, ours = scraped
    missing = set(theirs) - set(ours)
    documented = _documented_gaps()
    assert missing <= documented, f"undocumented: {sorted(missing - documented)}"
    assert not documented & set(ours), f"documented as missing but exported: {sorted(documented & set(ours))}"


def test_our_extra_vllm_names_are_only_the_compat_ones(scraped: tuple[Families, Families]) -> None:
    theirs, ours = scraped
    # vLLM exports speculative-decoding families only with a speculative config; the vLLM here has none.
    extra = {n for n in set(ours) - set(theirs) if not n.startswith("vllm:spec_decode")}
    assert extra <= OURS_ONLY
