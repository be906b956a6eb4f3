"""Requests generated from the official spec's request schemas never get a 5xx, from the model server or
through the router, and every 4xx is a well-formed OpenAI error envelope.

Schemathesis turns each operation's request-body schema (``tests/fixtures/openai/openapi.yaml``) into a
Hypothesis strategy: valid bodies, edge values, unknown extra fields. ``model`` is mostly replaced with a
served name, or nearly every case would stop at 404 ``model_not_found``. Cases per operation and target:
``MODELYARD_FUZZ_CASES`` (default 30: 180 cases, 240 once /responses is served); e.g. 10000 for a long run.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fixtures.models import ServerProcess, running_server
from tests.fixtures.openai_spec import SPEC_PATH, schema_errors
from tests.integration.router.procs import Proc, start_router, write_config

pytestmark = [pytest.mark.model, pytest.mark.timeout(3600)]

CASES = int(os.environ.get("MODELYARD_FUZZ_CASES", "30"))
CHAT_MODEL = "fuzz-llama"
EMBED_MODEL = "fuzz-bert"
# operation path -> the served name its cases target
OPERATIONS = {
    "/chat/completions": CHAT_MODEL,
    "/completions": CHAT_MODEL,
    "/embeddings": EMBED_MODEL,
    "/responses": CHAT_MODEL,
}
STATUSES: collections.Counter[tuple[str, str, int]] = collections.Counter()


@pytest.fixture(scope="module")
def chat_server(tiny_llama_path: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    # A short context bounds the work of every valid case (default max_tokens fills the context).
    args = ["--model", str(tiny_llama_path), "--served-model-name", CHAT_MODEL, "--dtype", "float32",
            "--max-model-len", "64", "--max-num-seqs", "16", "--max-queue", "512"]  # fmt: skip
    with running_server(args, log_dir=server_logs_dir) as server:
        yield server


@pytest.fixture(scope="module")
def embed_server(tiny_bert_path: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_bert_path), "--served-model-name", EMBED_MODEL, "--task", "embed"]
    with running_server(args, log_dir=server_logs_dir) as server:
        yield server


@pytest.fixture(scope="module")
def router(
    chat_server: ServerProcess, embed_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("fuzz-router")
    config = write_config(
        tmp / "models.json", {CHAT_MODEL: [chat_server.base_url], EMBED_MODEL: [embed_server.base_url]}
    )
    proc = start_router(tmp, config)
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture(scope="module")
def spec() -> Any:
    return schemathesis.openapi.from_path(str(SPEC_PATH))


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    total = sum(STATUSES.values())
    lines = [f"fuzz: {total} cases, {CASES} per operation and target"]
    lines += [
        f"  {target:6} {path:18} {status}: {n}" for (target, path, status), n in sorted(STATUSES.items())
    ]
    print("\n" + "\n".join(lines))


def _targets(
    chat_server: ServerProcess, embed_server: ServerProcess, router: Proc
) -> dict[str, dict[str, str]]:
    return {
        "server": {CHAT_MODEL: chat_server.v1, EMBED_MODEL: embed_server.v1},
        "router": {CHAT_MODEL: router.url + "/v1", EMBED_MODEL: router.url + "/v1"},
    }


def check(response: httpx.Response, body: Any) -> None:
    """The property every generated request must hold."""
    shown = json.dumps(body, ensure_ascii=True)[:1500]
    assert response.status_code < 500, f"{response.status_code} {response.text[:1500]}\nrequest: {shown}"
    assert response.status_code != 422, f"422 instead of 400: {response.text[:500]}\nrequest: {shown}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json"), response.text[:500]
        errors = schema_errors("ErrorResponse", response.json())
        assert not errors, f"not an error envelope: {errors}\n{response.text[:500]}\nrequest: {shown}"


FUZZ_SETTINGS = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def _skip_unserved(path: str, served: str) -> None:
    """The server, not the router, knows its routes: skip a path the model's server does not serve."""
    probe = httpx.post(served + path, json={}, timeout=120)
    if probe.status_code == 404 and probe.json()["error"]["code"] == "not_found":
        pytest.skip(f"{path} is not served")


@pytest.mark.parametrize("target", ["server", "router"])
@pytest.mark.parametrize("path", list(OPERATIONS))
def test_spec_generated_requests_get_no_5xx_and_only_envelopes(
    spec: Any,
    path: str,
    target: str,
    chat_server: ServerProcess,
    embed_server: ServerProcess,
    router: Proc,
) -> None:
    model = OPERATIONS[path]
    base = _targets(chat_server, embed_server, router)[target][model]
    _skip_unserved(path, {CHAT_MODEL: chat_server.v1, EMBED_MODEL: embed_server.v1}[model])
    with httpx.Client(timeout=120) as http:
        strategy = st.tuples(spec[path]["POST"].as_strategy(), st.sampled_from([True, True, True, False]))

        @FUZZ_SETTINGS
        @given(strategy)
        def one_case(drawn: tuple[Any, bool]) -> None:
            case, served_model = drawn
            body = case.body
            if served_model and isinstance(body, dict):
                body = {**body, "model": model}
            response = http.post(base + path, json=body)
            STATUSES[(target, path, response.status_code)] += 1
            check(response, body)

        one_case()


# ---- hostile shapes the spec's schemas never generate ------------------------------------------------


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _with_key(raw: bytes, key: str, value: bytes) -> bytes:
    """``raw`` (a JSON object) with one more member, written as bytes: the value need not be JSON."""
    head = raw.rstrip()[:-1].rstrip()
    sep = b"" if head.endswith(b"{") else b","
    return head + sep + json.dumps(key).encode() + b":" + value + b"}"


HOSTILE = st.one_of(
    # deep nesting, around and far beyond any parser's recursion
    st.builds(
        lambda d, kind, key: ("deep", key, _deep(d, kind)),
        st.sampled_from([64, 129, 500, 999, 1001, 3000, 5000]),
        st.sampled_from(["list", "object"]),
        st.sampled_from(["messages", "input", "prompt", "x", "tools", "response_format"]),
    ),
    # numbers no int64 or double holds, on fields that take numbers and on others
    st.builds(
        lambda n, key: ("huge number", key, n),
        st.sampled_from(
            [
                b"9" * 5000,
                b"-" + b"9" * 400,
                b"1e999999",
                b"-1e400",
                b"1" + b"0" * 30,
                b"0.0000000e-99999",
                b"NaN",
                b"Infinity",
                b"-Infinity",
            ]
        ),
        st.sampled_from(["max_tokens", "temperature", "seed", "n", "top_p", "logit_bias", "dimensions"]),
    ),
    # a key given twice: both values must be checked the same way (the last one wins everywhere)
    st.builds(
        lambda key, value: ("duplicate key", key, value),
        st.sampled_from(["model", "stream", "max_tokens", "messages", "n"]),
        st.sampled_from([b'"other-model"', b"true", b"-1", b"[]", b"null", b'{"a": 1}']),
    ),
    # bytes that are not UTF-8, inside a string
    st.builds(
        lambda bad, key: ("invalid utf-8", key, b'"a' + bad + b'b"'),
        st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"]
        ),
        st.sampled_from(["model", "prompt", "input", "user", "x"]),
    ),
)


@pytest.mark.parametrize("target", ["server", "router"])
@pytest.mark.parametrize("path", list(OPERATIONS))
def test_hostile_bodies_get_no_5xx_and_only_envelopes(
    spec: Any,
    path: str,
    target: str,
    chat_server: ServerProcess,
    embed_server: ServerProcess,
    router: Proc,
) -> None:
    """A spec-generated body plus one hostile member, sent as raw bytes."""
    model = OPERATIONS[path]
    base = _targets(chat_server, embed_server, router)[target][model]
    _skip_unserved(path, {CHAT_MODEL: chat_server.v1, EMBED_MODEL: embed_server.v1}[model])
    with httpx.Client(timeout=120) as http:
        strategy = st.tuples(spec[path]["POST"].as_strategy(), HOSTILE)

        @FUZZ_SETTINGS
        @given(strategy)
        def one_case(drawn: tuple[Any, tuple[str, str, bytes]]) -> None:
            case, (shape, key, value) = drawn
            body = case.body if isinstance(case.body, dict) else {}
            raw = _with_key(json.dumps({**body, "model": model}).encode(), key, value)
            response = http.post(base + path, content=raw, headers={"content-type": "application/json"})
            STATUSES[(target, f"{path} {shape}", response.status_code)] += 1
            check(response, {"hostile": shape, "key": key, "value": value[:80].decode("latin-1")})

        one_case()
