"""Embeddings from a tiny BERT-style encoder and the real all-MiniLM-L6-v2, through the SDK."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.fixtures.models import ServerProcess
from tests.fixtures.openai_spec import assert_matches

pytestmark = pytest.mark.model


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def test_float_response_matches_spec_and_is_normalised(bert_server: ServerProcess) -> None:
    resp = httpx.post(
        bert_server.v1 + "/embeddings", json={"model": "tiny-bert", "input": ["one", "two words"]}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert_matches("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert math.isclose(math.hypot(*item["embedding"]), 1.0, rel_tol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_sdk_default_base64_equals_floats(bert_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=bert_server.v1, api_key="unused")
    inputs = ["hello world", "Grüße 😀", "a"]
    as_b64 = client.embeddings.create(model="tiny-bert", input=inputs)  # the SDK asks for base64
    as_float = client.embeddings.create(model="tiny-bert", input=inputs, encoding_format="float")
    assert len(as_b64.data) == len(as_float.data) == 3
    for x, y in zip(as_b64.data, as_float.data, strict=True):
        assert len(x.embedding) == len(y.embedding) == 64
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(x.embedding, y.embedding, strict=True))
    body = {"model": "tiny-bert", "input": "x", "encoding_format": "base64"}
    raw = httpx.post(bert_server.v1 + "/embeddings", json=body).json()
    assert isinstance(raw["data"][0]["embedding"], str)


def test_token_id_inputs_and_native_dimensions(bert_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=bert_server.v1, api_key="unused")
    out = client.embeddings.create(model="tiny-bert", input=[[5, 6, 7], [8]], encoding_format="float")
    assert len(out.data) == 2
    assert out.usage.prompt_tokens == 4
    same = client.embeddings.create(model="tiny-bert", input="x", dimensions=64)
    assert len(same.data[0].embedding) == 64


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "word " * 1000}, "input"),
    ],
)
def test_bad_embedding_requests_are_400(
    bert_server: ServerProcess, body: dict[str, object], param: str
) -> None:
    resp = httpx.post(bert_server.v1 + "/embeddings", json={"model": "tiny-bert", **body})
    assert resp.status_code == 400, resp.text
    assert_matches("ErrorResponse", resp.json())
    assert (resp.json()["error"]["param"] or "").startswith(param)
    assert (
        httpx.post(bert_server.v1 + "/embeddings", json={"model": "tiny-bert", "input": "ok"}).status_code
        == 200
    )


def test_generation_endpoints_on_an_embedding_model_are_400(bert_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=bert_server.v1, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-bert", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_supported"


def test_minilm_embeddings_carry_meaning(minilm_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=minilm_server.v1, api_key="unused")
    out = client.embeddings.create(
        model="all-minilm-l6-v2",
        input=[
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply.",
        ],
    )
    eat, bread, stocks = (d.embedding for d in out.data)
    assert len(eat) == 384
    assert _cos(eat, bread) > _cos(eat, stocks) + 0.3
    assert math.isclose(math.hypot(*eat), 1.0, rel_tol=1e-4)
