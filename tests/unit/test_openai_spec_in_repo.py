"""The repository carries the OpenAI spec its tests read: a bare clone has nothing beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fixtures.openai_spec import IN_REPO_SPEC, SPEC_PATH, schema_errors

REPO = Path(__file__).resolve().parents[2]


def test_spec_and_its_license_live_inside_the_repository() -> None:
    assert IN_REPO_SPEC.is_relative_to(REPO)
    assert IN_REPO_SPEC.is_file()
    assert "MIT License" in (IN_REPO_SPEC.parent / "LICENSE").read_text()


def test_spec_is_read_from_the_repository_unless_overridden() -> None:
    assert SPEC_PATH == IN_REPO_SPEC or SPEC_PATH.is_file()


def test_every_reference_in_the_slice_resolves_inside_it() -> None:
    spec = yaml.load(IN_REPO_SPEC.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    refs: set[str] = set()
    stack: list[object] = [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    missing = []
    for ref in refs:
        kind, _, name = ref.removeprefix("#/components/").partition("/")
        if name not in spec["components"].get(kind, {}):
            missing.append(ref)
    assert not missing
    assert {"/chat/completions", "/completions", "/embeddings", "/models", "/responses"} <= set(spec["paths"])


@pytest.mark.parametrize(
    "component",
    [
        "CreateChatCompletionRequest",
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "ChatCompletionMessageToolCall",
        "ChatCompletionMessageToolCallChunk",
        "ChatCompletionTool",
        "CreateCompletionRequest",
        "CreateCompletionResponse",
        "ModelyardCompletionChunk",
        "CreateEmbeddingRequest",
        "CreateEmbeddingResponse",
        "ListModelsResponse",
        "Model",
        "CreateResponse",
        "Response",
        "ResponseStreamEvent",
        "ErrorResponse",
    ],
)
def test_every_schema_the_suites_validate_against_resolves(component: str) -> None:
    # Validating an empty object walks the schema's $refs: a reference the slice dropped raises here.
    assert isinstance(schema_errors(component, {}), list)


def test_error_envelope_validates() -> None:
    envelope = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert schema_errors("ErrorResponse", envelope) == []
    assert schema_errors("ErrorResponse", {"detail": "x"}) != []
