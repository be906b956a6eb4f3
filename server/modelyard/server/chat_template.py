"""Rendering chat messages through the model's own chat template, and nothing else.

Templates are Jinja: whoever supplies one runs code in the server. Only the tokenizer's template is
ever rendered; ``chat_template_kwargs`` is an allow-list of small scalar switches (``enable_thinking``
and friends), and anything else in it, ``chat_template`` first of all, is a 400 naming the key.

OpenAI messages differ from what templates expect in two ways adapted here: roles templates rarely
know (``developer``, ``function``) are mapped, and an assistant's tool-call ``arguments`` (JSON text
on the wire) are passed as dicts, which is what Hermes, Qwen, Llama and Mistral templates iterate or
``tojson``.
"""

from __future__ import annotations

import json
from typing import Any

from modelyard.server.errors import InvalidRequestError
from modelyard.server.toolcalls import detect_parser

# Roles the OpenAI API has that chat templates rarely know: map them to what templates expect.
_ROLE_FOR_TEMPLATE = {"developer": "system", "function": "tool"}

# Switches templates commonly read; values must be short scalars so they cannot carry work.
ALLOWED_TEMPLATE_KWARGS = frozenset(
    {
        "enable_thinking",
        "thinking",
        "reasoning_effort",
        "add_generation_prompt",
        "continue_final_message",
        "tools_in_user_message",
        "date_string",
    }
)
_MAX_KWARG_CHARS = 256


class ChatTemplate:
    def __init__(self, tokenizer: Any, tool_call_parser: str | None = None) -> None:
        self._tok = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self.available = bool(template)
        text = template if isinstance(template, str) else None
        self.tool_parser = tool_call_parser or detect_parser(text)

    def require(self, model: str, param: str) -> None:
        if not self.available:
            raise InvalidRequestError(
                f"The model `{model}` has no chat template, so chat messages cannot be formatted. "
                "Use /v1/completions with a plain prompt, or serve a model whose tokenizer defines "
                "a chat_template.",
                param=param,
                code="chat_template_missing",
            )

    @staticmethod
    def safe_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """The allowed switches of ``chat_template_kwargs``; anything else is refused, never rendered."""
        out: dict[str, Any] = {}
        for key, value in (kwargs or {}).items():
            param = f"chat_template_kwargs.{key}"
            if key == "chat_template":
                raise InvalidRequestError(
                    "Client-supplied chat templates are not accepted: the server renders only the "
                    "model's own template.",
                    param=param,
                    code="unsupported_parameter",
                )
            if key not in ALLOWED_TEMPLATE_KWARGS:
                raise InvalidRequestError(
                    f"chat_template_kwargs key {key!r} is not allowed; allowed keys: "
                    f"{', '.join(sorted(ALLOWED_TEMPLATE_KWARGS))}.",
                    param=param,
                    code="unsupported_parameter",
                )
            if not (value is None or isinstance(value, bool | int | float | str)) or (
                isinstance(value, str) and len(value) > _MAX_KWARG_CHARS
            ):
                raise InvalidRequestError(
                    f"chat_template_kwargs.{key} must be a boolean, number or a string of at most "
                    f"{_MAX_KWARG_CHARS} characters.",
                    param=param,
                )
            out[key] = value
        return out

    @staticmethod
    def adapt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for msg in messages:
            entry = dict(msg)
            entry["role"] = _ROLE_FOR_TEMPLATE.get(entry["role"], entry["role"])
            calls = entry.get("tool_calls")
            if calls:
                entry["tool_calls"] = [_call_for_template(c) for c in calls]
                if entry.get("content") is None:
                    # Many templates concatenate content as a string; a tool-only turn has none.
                    entry["content"] = ""
            out.append(entry)
        return out

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
        kwargs: dict[str, Any],
        param: str,
    ) -> str:
        """Blocking (Jinja): callers run it in the worker pool."""
        from jinja2 import TemplateError

        kwargs = dict(kwargs)
        add = kwargs.pop("add_generation_prompt", add_generation_prompt)
        try:
            text = self._tok.apply_chat_template(
                self.adapt(messages), tools=tools, tokenize=False, add_generation_prompt=bool(add), **kwargs
            )
        except (TemplateError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise InvalidRequestError(
                f"The model's chat template could not format these messages: {exc}", param=param
            ) from exc
        return str(text)


def _call_for_template(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    fn = call.get("function")
    if not isinstance(fn, dict):
        return call
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            parsed = args  # not JSON: the template gets the text as sent
        fn = {**fn, "arguments": parsed}
    return {**call, "function": fn}
