"""POST /v1/chat/completions: the tokenizer's chat template, tools, structured outputs, logprobs, n,
streaming. Rendering lives in ``chat_template``, tool/format planning in ``tool_plan``, the turn's
content and tool calls in ``assistant_output``; this module maps them to the chat protocol."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelyard.server import sse
from modelyard.server.assistant_output import AssistantTurn, OutputShaper, PlainOutput, ToolCallOut
from modelyard.server.chat_template import ChatTemplate
from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.continuation import PARAM as CONT_PARAM
from modelyard.server.continuation import check_continuation
from modelyard.server.engine.types import TokenLogprob
from modelyard.server.generation_run import GenerationRun
from modelyard.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatFinishReason,
    ChatMessage,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    FunctionCall,
    FunctionCallChunk,
    PromptTokensDetails,
    ToolCall,
    ToolCallChunk,
    TopLogprob,
    Usage,
)
from modelyard.server.runtime import ModelRuntime
from modelyard.server.serving import BaseServing, new_id, unsupported
from modelyard.server.streaming import stream_tail
from modelyard.server.tool_plan import ToolPlan, build_tool_plan, guided_for_format
from modelyard.server.toolcalls import ContentDelta, ToolCallDelta


def chat_message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Request messages as plain dicts (text parts joined); ``ChatTemplate`` adapts them further."""
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
        entry: dict[str, Any] = {"role": msg.role, "content": content}
        if msg.name is not None:
            entry["name"] = msg.name
        if msg.tool_calls is not None:
            entry["tool_calls"] = msg.tool_calls
        if msg.tool_call_id is not None:
            entry["tool_call_id"] = msg.tool_call_id
        out.append(entry)
    return out


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))


def final_finish(turn: AssistantTurn, finish: str | None) -> ChatFinishReason:
    """A turn that ended normally with tool calls ends for them (``length`` stays ``length``)."""
    if finish == "length":
        return "length"
    return "tool_calls" if turn.tool_calls else "stop"


class ChatServing(BaseServing):
    endpoint = "/v1/chat/completions"

    def __init__(self, runtime: ModelRuntime) -> None:
        super().__init__(runtime)
        self.template = ChatTemplate(runtime.tokenizer, runtime.tool_call_parser)

    async def render(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        add_generation_prompt: bool = True,
        template_kwargs: dict[str, Any] | None = None,
        param: str = "messages",
    ) -> list[int]:
        self.template.require(model, param)
        self.check_chars(_chars(messages) + len(json.dumps(tools)) if tools else _chars(messages), param)
        kwargs = self.template.safe_kwargs(template_kwargs)
        text = await self.offload(self.template.render, messages, tools, add_generation_prompt, kwargs, param)
        # The template already spelled out BOS and friends; adding special tokens would double them.
        ids = await self.offload(self.tokenize, text, add_special_tokens=False)
        if not ids:
            raise unsupported(param, "The messages produced an empty prompt.")
        return ids

    async def create(self, req: ChatCompletionRequest, request: Request) -> Response | ChatCompletionResponse:
        lora = self.check_model(req.model, "generate")
        plan = build_tool_plan(
            [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
            req.tool_choice,
            req.parallel_tool_calls,
        )
        fmt = req.response_format.as_dict() if req.response_format is not None else None
        guided_spec = plan.guided() or guided_for_format(fmt, "response_format")
        prompt_ids = await self.render(
            req.model,
            chat_message_dicts(req.messages),
            plan.template_tools(),
            add_generation_prompt=req.add_generation_prompt,
            template_kwargs=req.chat_template_kwargs,
        )
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = self.resolve_max_tokens(requested, None, len(prompt_ids), "messages")
        n = req.n or 1
        self.check_work([len(prompt_ids)] * n, max_tokens)
        guided = self.guided_decoding(guided_spec)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        jobs = [
            (
                prompt_ids,
                self.sampling_params(req, max_tokens, logprobs=logprobs, seed_offset=i, guided=guided),
            )
            for i in range(n)
        ]
        cont = req.modelyard_continuation
        if cont is not None:
            check_continuation(cont, stream=bool(req.stream), sequences=n, max_tokens=max_tokens)
            if not isinstance(plan.shaper(self.template.tool_parser), PlainOutput):
                raise unsupported(
                    CONT_PARAM, "A continuation cannot resume tool calls; only plain content streams resume."
                )
        response_id = (cont.id if cont is not None else None) or new_id("chatcmpl")
        run, states = self.launch(
            response_id,
            jobs,
            self.stop_strings(req),
            bool(req.skip_special_tokens),
            grammar_param=guided_spec.param if guided_spec else None,
            continuation=cont,
            lora=lora,
        )
        builder = _ChatBuilder(self, req, response_id, len(prompt_ids), plan, n)
        if cont is not None and cont.created is not None:
            builder.created = cont.created
        return await self.respond(request, run, states, builder, bool(req.stream))


def _call_chunk(event: ToolCallDelta, call: ToolCallOut) -> ToolCallChunk:
    if event.name is not None:
        return ToolCallChunk(
            index=event.index,
            id=call.id,
            type="function",
            function=FunctionCallChunk(name=event.name, arguments=event.arguments),
        )
    return ToolCallChunk(index=event.index, function=FunctionCallChunk(arguments=event.arguments))


class _ChatBuilder:
    def __init__(
        self,
        serving: ChatServing,
        req: ChatCompletionRequest,
        rid: str,
        prompt_tokens: int,
        plan: ToolPlan,
        n: int,
    ) -> None:
        self.serving = serving
        self.req = req
        self.id = rid
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        parser = serving.template.tool_parser
        self.shapers: list[OutputShaper] = [plan.shaper(parser) for _ in range(n)]
        self.turns = [AssistantTurn() for _ in range(n)]

    def _usage(self, states: Sequence[ChoiceState]) -> Usage:
        completion = sum(s.num_generated for s in states)
        cached = max((s.num_cached for s in states), default=0)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
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

    def _events(self, state: ChoiceState, delta: ChoiceDelta) -> ChatDelta:
        shaper = self.shapers[state.index]
        events = shaper.feed(delta.text)
        if delta.finish_reason is not None:
            events += shaper.finish()
        content: str | None = None
        calls: list[ToolCallChunk] = []
        for event, call in self.turns[state.index].apply(events):
            if isinstance(event, ContentDelta):
                content = (content or "") + event.text
            elif call is not None:
                chunk = _call_chunk(event, call)
                last = calls[-1] if calls else None
                if last is not None and last.index == chunk.index and chunk.id is None and last.function:
                    last.function.arguments = (last.function.arguments or "") + event.arguments
                else:
                    calls.append(chunk)
        return ChatDelta(content=content, tool_calls=calls or None)

    def full(self, states: Sequence[ChoiceState]) -> ChatCompletionResponse:
        choices = []
        for s in states:
            # Collected answers fold the same events a stream would have sent.
            self._events(s, ChoiceDelta(s.text, [], s.finish_reason or "length"))
            turn = self.turns[s.index]
            turn.settle(self.shapers[s.index])
            tool_calls = [
                ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                for c in turn.tool_calls
            ]
            choices.append(
                ChatChoice(
                    index=s.index,
                    message=ChatResponseMessage(content=turn.message_content, tool_calls=tool_calls or None),
                    logprobs=self._logprobs(s.logprobs),
                    finish_reason=final_finish(turn, s.finish_reason or "length"),
                )
            )
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
        # A continuation goes on with a stream whose opening chunk the client already has.
        for state in states if self.req.modelyard_continuation is None else ():
            first = ChatStreamChoice(index=state.index, delta=ChatDelta(role="assistant", content=""))
            yield self._chunk([first], self._usage(states) if continuous else None)

        def chunk_of(state: ChoiceState, delta: ChoiceDelta) -> bytes:
            chat_delta = self._events(state, delta)
            finish = None
            if delta.finish_reason is not None:
                finish = final_finish(self.turns[state.index], delta.finish_reason)
            has_delta = chat_delta.content is not None or chat_delta.tool_calls is not None
            if not has_delta and not delta.logprobs and finish is None:
                return b""  # held back (a tool-call marker in the making)
            choice = ChatStreamChoice(
                index=state.index,
                delta=chat_delta,
                logprobs=self._logprobs(delta.logprobs) if delta.logprobs else None,
                finish_reason=finish,
            )
            return self._chunk([choice], self._usage(states) if continuous else None)

        usage_chunk = (lambda: self._chunk([], self._usage(states))) if include_usage else None
        async for chunk in stream_tail(run, states, chunk_of, usage_chunk):
            yield chunk
