"""POST /v1/responses, stateless: input items become chat messages rendered by the model's template;
the turn (content and tool calls, see ``assistant_output``) becomes output items, whole or as the
documented event sequence (``response.created`` ... ``response.completed`` / ``response.incomplete``).

Nothing is stored: ``store`` is reported as false (with an ``x-modelyard-note`` header when the client
asked for storage), and ``previous_response_id`` / ``conversation`` / ``item_reference`` items, which
need stored state, are a 400 naming the field.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from modelyard.server import sse
from modelyard.server.assistant_output import AssistantTurn, OutputShaper
from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.errors import APIError, InvalidRequestError, UnsupportedParameterError
from modelyard.server.generation_run import GenerationRun
from modelyard.server.protocol import SamplingFields
from modelyard.server.protocol_responses import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    ItemStatus,
    OutputItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from modelyard.server.serving_chat import ChatServing
from modelyard.server.streaming import stream_tail
from modelyard.server.tool_plan import ToolPlan, build_tool_plan, guided_for_format
from modelyard.server.toolcalls import ContentDelta, StreamEvent

log = logging.getLogger(__name__)

STORE_NOTE = "store ignored: this server is stateless and keeps no responses"
_TEXT_PART_TYPES = ("input_text", "output_text", "text")


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("Message content must be a string or a list of parts.", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PART_TYPES or not isinstance(part.get("text"), str):
            raise UnsupportedParameterError(
                f"Content parts of type {kind!r} are not supported; only text parts are.",
                param=f"{where}[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """``instructions`` + ``input`` as chat messages (function calls and their outputs included)."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequestError(f"Unknown message role {role!r}.", param=f"{where}.role")
            messages.append({"role": role, "content": _text_of(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments", "")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(args, str):
                raise InvalidRequestError(
                    "A function_call item needs string call_id, name and arguments.", param=where
                )
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise InvalidRequestError("A function_call_output item needs a call_id.", param=where)
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # reasoning a client echoes back carries nothing a template renders
        elif kind == "item_reference":
            raise UnsupportedParameterError(
                "item_reference inputs need stored responses; this server is stateless. Send the items.",
                param=where,
            )
        else:
            raise UnsupportedParameterError(f"Input items of type {kind!r} are not supported.", param=where)
    if not messages:
        raise InvalidRequestError("input must hold at least one message.", param="input")
    return messages


def _echo_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for tool in tools or []:
        out.append(
            {
                "type": "function",
                "name": tool.get("name"),
                "description": tool.get("description"),
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
                "strict": tool.get("strict", True),
            }
        )
    return out


class ResponsesServing(ChatServing):
    endpoint = "/v1/responses"

    @staticmethod
    def _refuse_state(req: ResponsesRequest) -> None:
        if req.previous_response_id is not None:
            raise UnsupportedParameterError(
                "previous_response_id needs stored responses; this server is stateless. Send the "
                "conversation as input items instead.",
                param="previous_response_id",
            )
        if req.conversation is not None:
            raise UnsupportedParameterError(
                "conversation needs stored state; this server is stateless. Send the items as input.",
                param="conversation",
            )
        if req.background:
            raise UnsupportedParameterError("background responses are not supported.", param="background")

    async def create_response(self, req: ResponsesRequest, request: Request) -> Response | ResponseObject:
        lora = self.check_model(req.model, "generate")
        self._refuse_state(req)
        plan = build_tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls, responses=True)
        fmt = req.text.format if req.text is not None else None
        guided_spec = plan.guided() or guided_for_format(fmt, "text.format", responses=True)
        prompt_ids = await self.render(req.model, input_messages(req), plan.template_tools(), param="input")
        max_tokens = self.resolve_max_tokens(req.max_output_tokens, None, len(prompt_ids), "input")
        self.check_work([len(prompt_ids)], max_tokens)
        guided = self.guided_decoding(guided_spec)
        sampling = SamplingFields(
            model=req.model, temperature=req.temperature, top_p=req.top_p, seed=req.seed
        )
        params = self.sampling_params(sampling, max_tokens, logprobs=None, guided=guided)
        response_id = _item_id("resp")
        run, states = self.launch(
            response_id,
            [(prompt_ids, params)],
            [],
            grammar_param=guided_spec.param if guided_spec else None,
            lora=lora,
        )
        builder = _ResponsesBuilder(self, req, response_id, len(prompt_ids), plan)
        if req.store:
            log.info("store ignored", extra={"response_id": response_id})
        return await self.respond(request, run, states, builder, bool(req.stream))


class _ResponsesBuilder:
    def __init__(
        self, serving: ResponsesServing, req: ResponsesRequest, rid: str, prompt_tokens: int, plan: ToolPlan
    ) -> None:
        self.req = req
        self.id = rid
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.shaper: OutputShaper = plan.shaper(serving.template.tool_parser)
        self.turn = AssistantTurn()
        self.seq = 0
        # streaming state: the open item and every item so far, in output order
        self.items: list[OutputItem] = []
        self.open: OutputItem | None = None

    # ---- the response object

    def _usage(self, states: Sequence[ChoiceState]) -> ResponseUsage:
        out = sum(s.num_generated for s in states)
        cached = max((s.num_cached for s in states), default=0)
        return ResponseUsage(
            input_tokens=self.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=out,
            total_tokens=self.prompt_tokens + out,
        )

    def _response(
        self, status: str, output: list[OutputItem], states: Sequence[ChoiceState] | None = None
    ) -> ResponseObject:
        req = self.req
        fmt = req.text.format if req.text is not None and req.text.format else {"type": "text"}
        incomplete = IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
        return ResponseObject(
            id=self.id,
            created_at=self.created,
            status=status,  # type: ignore[arg-type]
            completed_at=int(time.time()) if status == "completed" else None,
            incomplete_details=incomplete,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=req.model,
            output=output,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
            tools=_echo_tools(req.tools),
            usage=self._usage(states) if states is not None else None,
            metadata=req.metadata or {},
            text={"format": fmt},
        )

    @staticmethod
    def _status(state: ChoiceState) -> str:
        return "incomplete" if state.finish_reason in (None, "length") else "completed"

    def full(self, states: Sequence[ChoiceState]) -> ResponseObject:
        (state,) = states
        events = self.shaper.feed(state.text) + self.shaper.finish()
        self.turn.apply(events)
        self.turn.settle(self.shaper)
        status = self._status(state)
        item_status: ItemStatus = "completed" if status == "completed" else "incomplete"
        output: list[OutputItem] = []
        content = self.turn.message_content
        if content or not self.turn.tool_calls:
            output.append(
                OutputMessage(
                    id=_item_id("msg"), status=item_status, content=[OutputText(text=content or "")]
                )
            )
        for call in self.turn.tool_calls:
            output.append(
                FunctionCallItem(
                    id=_item_id("fc"),
                    call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    status="completed",
                )
            )
        return self._response(status, output, states)

    # ---- the event stream

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        data = {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in payload.items()}
        return f"event: {kind}\n".encode() + sse.event(data)

    def _close_open(self, status: str) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.items.index(item)
        out = []
        if isinstance(item, OutputMessage):
            part = item.content[0]
            out.append(
                self._event(
                    "response.output_text.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    text=part.text,
                    logprobs=[],
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
            item.status = "completed" if status == "completed" else "incomplete"
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
            item.status = "completed"
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def _on_events(self, events: list[StreamEvent]) -> list[bytes]:
        out: list[bytes] = []
        for event, call in self.turn.apply(events):
            if isinstance(event, ContentDelta):
                if not event.text:
                    continue
                if not isinstance(self.open, OutputMessage):
                    out += self._close_open("completed")
                    msg = OutputMessage(id=_item_id("msg"), status="in_progress")
                    self.items.append(msg)
                    self.open = msg
                    index = len(self.items) - 1
                    out.append(self._event("response.output_item.added", output_index=index, item=msg))
                    msg.content.append(OutputText(text=""))
                    out.append(
                        self._event(
                            "response.content_part.added",
                            item_id=msg.id,
                            output_index=index,
                            content_index=0,
                            part=OutputText(text=""),
                        )
                    )
                msg = self.open
                msg.content[0].text += event.text
                out.append(
                    self._event(
                        "response.output_text.delta",
                        item_id=msg.id,
                        output_index=self.items.index(msg),
                        content_index=0,
                        delta=event.text,
                        logprobs=[],
                    )
                )
                continue
            assert call is not None
            if event.name is not None:
                out += self._close_open("completed")
                item = FunctionCallItem(
                    id=_item_id("fc"), call_id=call.id, name=event.name, arguments="", status="in_progress"
                )
                self.items.append(item)
                self.open = item
                out.append(
                    self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)
                )
            fc = self.open
            assert isinstance(fc, FunctionCallItem)
            fc.arguments += event.arguments
            if event.arguments:
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=fc.id,
                        output_index=self.items.index(fc),
                        delta=event.arguments,
                    )
                )
        return out

    async def stream(self, run: GenerationRun, states: Sequence[ChoiceState]) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self._response("in_progress", []))
        yield self._event("response.in_progress", response=self._response("in_progress", []))
        status = {"value": "completed"}

        def chunk_of(state: ChoiceState, delta: ChoiceDelta) -> bytes:
            events = self.shaper.feed(delta.text)
            if delta.finish_reason is not None:
                events += self.shaper.finish()
                status["value"] = self._status(state)
            out = self._on_events(events)
            if delta.finish_reason is not None:
                out += self._close_open(status["value"])
            return b"".join(out)

        def final_event() -> bytes:
            final = status["value"]
            kind = "response.completed" if final == "completed" else "response.incomplete"
            return self._event(kind, response=self._response(final, list(self.items), states))

        async for chunk in stream_tail(run, states, chunk_of, final_event, done=b"", error=self._error_event):
            yield chunk

    def _error_event(self, exc: APIError) -> bytes:
        return self._event("error", code=exc.code, message=exc.message, param=exc.param)
