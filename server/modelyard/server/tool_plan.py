"""``tools`` / ``tool_choice`` / ``response_format`` as one plan: what the template sees, which grammar
constrains the output, and how the text becomes content and tool calls.

Chat (``{"type": "function", "function": {...}}``) and Responses (``{"type": "function", "name": ...}``)
spell tools differently; both normalise to ``FunctionSpec``. Forced choices are enforced by grammar,
as vLLM does: a named function constrains the output to that function's parameters schema; ``required``
to a JSON array (one item unless ``parallel_tool_calls``) of ``{"name": const, "parameters": schema}``
objects, one ``anyOf`` branch per tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.server.assistant_output import (
    NamedCallOutput,
    OutputShaper,
    ParsedOutputStream,
    PlainOutput,
    RequiredCallsOutput,
)
from modelyard.server.errors import InvalidRequestError, UnsupportedParameterError
from modelyard.server.toolcalls import get_parser

GuidedKind = Literal["json_schema", "json_object", "regex"]
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class GuidedSpec:
    """The grammar a row is constrained by (becomes the engine's ``GuidedDecoding``); ``param`` names
    the request field a compile error is reported against."""

    kind: GuidedKind
    spec: str
    param: str


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(_EMPTY_PARAMETERS))

    def template_tool(self) -> dict[str, Any]:
        """The chat-completions spelling, which chat templates (and transformers) expect."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


ToolMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    mode: ToolMode
    functions: tuple[FunctionSpec, ...] = ()
    named: str | None = None
    parallel: bool = True
    param: str = "tool_choice"

    def template_tools(self) -> list[dict[str, Any]] | None:
        # With "none" the model must not call anything: not showing it the tools is the surest way.
        if self.mode == "none" or not self.functions:
            return None
        return [f.template_tool() for f in self.functions]

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "named")

    def guided(self) -> GuidedSpec | None:
        if self.mode == "named":
            fn = next(f for f in self.functions if f.name == self.named)
            return GuidedSpec("json_schema", _dumps(fn.parameters), self.param)
        if self.mode == "required":
            branches = [
                {
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": [f.name]}, "parameters": f.parameters},
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for f in self.functions
            ]
            schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}}
            if not self.parallel:
                schema["maxItems"] = 1
            return GuidedSpec("json_schema", _dumps(schema), self.param)
        return None

    def shaper(self, parser_name: str | None) -> OutputShaper:
        if self.mode == "named":
            assert self.named is not None
            return NamedCallOutput(self.named)
        if self.mode == "required":
            return RequiredCallsOutput()
        if self.mode == "auto" and self.functions and parser_name is not None:
            return ParsedOutputStream(get_parser(parser_name).stream())
        return PlainOutput()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _function_spec(raw: dict[str, Any], where: str, *, nested: bool) -> FunctionSpec:
    if raw.get("type", "function") != "function":
        raise UnsupportedParameterError(
            f"Tools of type {raw.get('type')!r} are not supported; only function tools are.", param=where
        )
    body = raw.get("function") if nested else raw
    if not isinstance(body, dict):
        raise InvalidRequestError("A function tool needs a `function` object.", param=where)
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("A function tool needs a non-empty `name`.", param=f"{where}.name")
    params = body.get("parameters")
    if params is None:
        params = dict(_EMPTY_PARAMETERS)
    if not isinstance(params, dict):
        raise InvalidRequestError("`parameters` must be a JSON schema object.", param=f"{where}.parameters")
    description = body.get("description")
    return FunctionSpec(name, description if isinstance(description, str) else None, params)


def build_tool_plan(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel_tool_calls: bool | None,
    *,
    responses: bool = False,
) -> ToolPlan:
    """Validate ``tools`` and ``tool_choice`` (chat spelling, or the Responses one)."""
    functions = tuple(
        _function_spec(raw, f"tools[{i}]", nested=not responses) for i, raw in enumerate(tools or [])
    )
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Tool names must be unique.", param="tools")
    parallel = parallel_tool_calls is not False
    choice = tool_choice if tool_choice is not None else ("auto" if functions else "none")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequestError(
                f"tool_choice must be none, auto, required or a function, got {choice!r}.",
                param="tool_choice",
            )
        if choice == "required" and not functions:
            raise InvalidRequestError("tool_choice `required` needs at least one tool.", param="tool_choice")
        return ToolPlan(choice, functions, None, parallel)  # type: ignore[arg-type]
    if choice.get("type") != "function":
        raise UnsupportedParameterError(
            f"tool_choice of type {choice.get('type')!r} is not supported; use none, auto, required or "
            "a function.",
            param="tool_choice",
        )
    fn = choice if responses else choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or name not in names:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not among the tools "
            f"({', '.join(names) or 'none given'}).",
            param="tool_choice",
        )
    return ToolPlan("named", functions, name, parallel)


def guided_for_format(
    fmt: dict[str, Any] | None, param: str, *, responses: bool = False
) -> GuidedSpec | None:
    """``response_format`` (chat) or ``text.format`` (Responses) as a grammar; None for plain text."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GuidedSpec("json_object", "", param)
    if kind != "json_schema":
        raise InvalidRequestError(f"Unknown {param} type {kind!r}.", param=param)
    body = fmt if responses else fmt.get("json_schema")
    if not isinstance(body, dict):
        raise InvalidRequestError(f"{param} json_schema needs a `json_schema` object.", param=param)
    schema = body.get("schema")
    if schema is None:
        return GuidedSpec("json_object", "", param)
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param} schema must be a JSON schema object.", param=param)
    return GuidedSpec("json_schema", _dumps(schema), param)
