"""The operator's own check of adapter names (the CEL rule's twin, for objects that skipped it)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelyard.api.llmmodel import LLMModel, LLMModelSpec


def body(name: str = "chat", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"url": "hf://org/m", **spec}}


def adapters(*names: str) -> list[dict[str, str]]:
    return [{"name": n, "source": f"hf://org/{n}"} for n in names]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"adapters": adapters("sql", "sql")}, "the name 'sql' is listed twice"),
        ({"adapters": adapters("chat")}, "the adapter name 'chat' is the model's served name"),
        ({"servedName": "llama", "adapters": adapters("llama")}, "'llama' is the model's served name"),
        ({"aliases": ["default"], "adapters": adapters("default")}, "'default' is an alias of the model"),
    ],
)
def test_clashing_adapter_names_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        LLMModel.from_body(body(**spec))
    assert message in str(info.value)


def test_the_model_name_is_free_once_a_served_name_is_set() -> None:
    model = LLMModel.from_body(body(servedName="llama", adapters=adapters("chat", "sql")))
    assert [a.name for a in model.spec.adapters] == ["chat", "sql"]
    assert model.spec.lora_enabled


def test_lora_is_on_with_adapters_or_limits_only() -> None:
    assert not LLMModelSpec.model_validate({"url": "hf://org/m"}).lora_enabled
    assert LLMModelSpec.model_validate({"url": "hf://org/m", "server": {"lora": {}}}).lora_enabled


def test_a_revision_needs_the_builtin_engine() -> None:
    spec = {"url": "hf://org/m", "adapters": [{"name": "a", "source": "hf://org/a", "revision": "v1"}]}
    assert LLMModelSpec.model_validate(spec).adapters[0].revision == "v1"
    with pytest.raises(ValidationError, match="honoured by engine modelyard only"):
        LLMModelSpec.model_validate({**spec, "engine": "vllm"})
