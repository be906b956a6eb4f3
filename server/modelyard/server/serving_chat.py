"""POST /v1/chat/completions: the tokenizer's chat template, logprobs + top_logprobs, n, streaming."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelyard.server import sse
from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.engine.types import TokenLogprob
from modelyard.server.errors import InvalidRequestError
from modelyard.server.generation_run import GenerationRun
from modelyard.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    TopLogprob,
    Usage,
)
from modelyard.server.serving import BaseServing, new_id, unsupported
from modelyard.server.streaming import stream_tail

# Roles the OpenAI API has that chat templates rarely know: map them to what templates expect.
_ROLE_FOR_TEMPLATE = {"developer": "system", "function": "tool"}


class ChatServing(BaseServing):
    endpoint = "/v1/chat/completions"

    def _template_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        out = []
        for i, msg in enumerate(messages):
            content: str | None
            if isinstance(msg.content, list):
                texts = []
                for j, part in enumerate(msg.content):
                    if part.type != "text" or part.text is None:
                        raise unsupported(
                            f"messages[{i}].content[{j}]",
                            f"Content parts of type {part.type!r} are not supported; only text parts are.",
                        )
                    texts.append(part.text)
                content = "\n".join(texts)
            else:
                content = msg.content
            entry: dict[str, Any] = {"role": _ROLE_FOR_TEMPLATE.get(msg.role, msg.role), "content": content}
            if msg.name is not None:
                entry["name"] = msg.name
            if msg.tool_calls is not None:
                entry["tool_calls"] = msg.tool_calls
            if msg.tool_call_id is not None:
                entry["tool_call_id"] = msg.tool_call_id
            out.append(entry)
        return out

    def render(self, req: ChatCompletionRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequestError(
                f"The model `{req.model}` has no chat template, so chat messages cannot be formatted. "
                "Use /v1/completions with a plain prompt, or serve a model whose tokenizer defines "
                "a chat_template.",
                param="messages",
                code="chat_template_missing",
            )
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                self._template_messages(req.messages),
                tools=req.tools,
                tokenize=False,
                add_generation_prompt=req.add_generation_prompt,
                **(req.chat_template_kwargs or {}),
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequestError(
                f"The model's chat template could not format these messages: {exc}", param="messages"
            ) from exc
        # The template already spelled out BOS and friends; adding special tokens would double them.
        ids = self.tokenize(str(text), add_special_tokens=False)
        if not ids:
            raise InvalidRequestError("The messages produced an empty prompt.", param="messages")
        return ids

    def _check_unsupported(self, req: ChatCompletionRequest) -> None:
        if req.response_format is not None and req.response_format.type != "text":
            raise unsupported(
                "response_format",
                f"response_format {req.response_format.type!r} (guided decoding) is not supported.",
            )
        choice = req.tool_choice
        if choice is not None and choice not in ("none", "auto"):
            raise unsupported(
                "tool_choice", "Forced tool calls (tool_choice required/named) are not supported."
            )

    async def create(self, req: ChatCompletionRequest, request: Request) -> Response | ChatCompletionResponse:
        self.check_model(req.model, "generate")
        self._check_unsupported(req)
        prompt_ids = self.render(req)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = self.resolve_max_tokens(requested, None, len(prompt_ids), "messages")
        n = req.n or 1
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        jobs = [
            (prompt_ids, self.sampling_params(req, max_tokens, logprobs=logprobs, seed_offset=i))
            for i in range(n)
        ]
        response_id = new_id("chatcmpl")
        run, states = self.launch(response_id, jobs, self.stop_strings(req), bool(req.skip_special_tokens))
        builder = _ChatBuilder(self, req, response_id, len(prompt_ids))
        return await self.respond(request, run, states, builder, bool(req.stream))


class _ChatBuilder:
    def __init__(
        self, serving: ChatServing, req: ChatCompletionRequest, rid: str, prompt_tokens: int
    ) -> None:
        self.serving = serving
        self.req = req
        self.id = rid
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens

    def _usage(self, states: Sequence[ChoiceState]) -> Usage:
        completion = sum(s.num_generated for s in states)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )

    def _logprobs(self, entries: Sequence[TokenLogprob]) -> ChatChoiceLogprobs | None:
        if not self.req.logprobs:
            return None
        text_of = self.serving.token_text.get
        k = self.req.top_logprobs or 0
        content = []
        for entry in entries:
            token, raw = text_of(entry.token_id)
            tops = [
                TopLogprob(token=text_of(t)[0], logprob=lp, bytes=text_of(t)[1]) for t, lp in entry.top[:k]
            ]
            content.append(ChatTokenLogprob(token=token, logprob=entry.logprob, bytes=raw, top_logprobs=tops))
        return ChatChoiceLogprobs(content=content, refusal=None)

    def full(self, states: Sequence[ChoiceState]) -> ChatCompletionResponse:
        choices = [
            ChatChoice(
                index=s.index,
                message=ChatResponseMessage(content=s.text),
                logprobs=self._logprobs(s.logprobs),
                finish_reason=s.finish_reason or "length",
            )
            for s in states
        ]
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.req.model, choices=choices, usage=self._usage(states)
        )

    def _chunk(self, choices: list[ChatStreamChoice], usage: Usage | None = None) -> bytes:
        return sse.event(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.req.model, choices=choices, usage=usage
            )
        )

    async def stream(self, run: GenerationRun, states: Sequence[ChoiceState]) -> AsyncIterator[bytes]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats) and include_usage
        for state in states:
            first = ChatStreamChoice(index=state.index, delta=ChatDelta(role="assistant", content=""))
            yield self._chunk([first], self._usage(states) if continuous else None)

        def chunk_of(state: ChoiceState, delta: ChoiceDelta) -> bytes:
            choice = ChatStreamChoice(
                index=state.index,
                delta=ChatDelta(content=delta.text) if delta.text else ChatDelta(),
                logprobs=self._logprobs(delta.logprobs) if delta.logprobs else None,
                finish_reason=delta.finish_reason,
            )
            return self._chunk([choice], self._usage(states) if continuous else None)

        usage_chunk = (lambda: self._chunk([], self._usage(states))) if include_usage else None
        async for chunk in stream_tail(run, states, chunk_of, usage_chunk):
            yield chunk
