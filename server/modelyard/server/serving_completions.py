"""POST /v1/completions: prompts as text, texts, token ids or lists of them; echo, logprobs, n, streaming."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from modelyard.server import sse
from modelyard.server.choice import ChoiceDelta, ChoiceState
from modelyard.server.continuation import check_continuation
from modelyard.server.engine.types import SamplingParams, TokenLogprob
from modelyard.server.errors import InvalidRequestError
from modelyard.server.generation_run import GenerationRun
from modelyard.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    Usage,
)
from modelyard.server.serving import BaseServing, new_id, unsupported
from modelyard.server.streaming import stream_tail


@dataclass
class _Prompt:
    ids: list[int]
    text: str


class CompletionServing(BaseServing):
    endpoint = "/v1/completions"

    def _encode(self, raw_list: Sequence[str | list[int]]) -> list[tuple[list[int], str]]:
        """Blocking: token ids and text of every prompt (run in the worker pool)."""
        out = []
        for i, item in enumerate(raw_list):
            param = "prompt" if len(raw_list) == 1 else f"prompt[{i}]"
            if isinstance(item, str):
                out.append((self.tokenize(item), item))
            else:
                ids = self.check_token_ids(item, param)
                out.append((ids, str(self.tokenizer.decode(ids, skip_special_tokens=False))))
        return out

    async def _prompts(self, req: CompletionRequest) -> list[_Prompt]:
        raw = req.prompt
        prompts: list[_Prompt] = []
        if isinstance(raw, str):
            raw_list: Sequence[str | list[int]] = [raw]
        elif raw and isinstance(raw[0], int):
            raw_list = [list(raw)]
        else:
            raw_list = raw  # type: ignore[assignment]
        n = req.n or 1
        if len(raw_list) * n > self.runtime.limits.max_sequences:
            self.check_work([0] * (len(raw_list) * n), 0)  # the 400, before any tokenizing
        for i, item in enumerate(raw_list):
            if isinstance(item, str):
                self.check_chars(len(item), "prompt" if len(raw_list) == 1 else f"prompt[{i}]")
        for i, (ids, text) in enumerate(await self.offload(self._encode, raw_list)):
            param = "prompt" if len(raw_list) == 1 else f"prompt[{i}]"
            if not ids:
                raise InvalidRequestError("The prompt must not be empty.", param=param, code="empty_prompt")
            prompts.append(_Prompt(ids, text))
        return prompts

    def _check_unsupported(self, req: CompletionRequest) -> None:
        n = req.n or 1
        if req.best_of is not None and req.best_of not in (0, n):
            raise unsupported("best_of", "best_of other than n is not supported; use n.")
        if req.suffix:
            raise unsupported("suffix", "suffix (insertion) is not supported by this server.")

    async def create(self, req: CompletionRequest, request: Request) -> Response | CompletionResponse:
        lora = self.check_model(req.model, "generate")
        self._check_unsupported(req)
        prompts = await self._prompts(req)
        n = req.n or 1
        stops = self.stop_strings(req)
        jobs: list[tuple[list[int], SamplingParams]] = []
        want_prompt_logprobs = req.echo and req.logprobs is not None
        for prompt in prompts:
            max_tokens = self.resolve_max_tokens(
                req.max_tokens if "max_tokens" in req.model_fields_set else None,
                16,
                len(prompt.ids),
                "prompt",
            )
            for i in range(n):
                params = self.sampling_params(
                    req,
                    max_tokens,
                    logprobs=req.logprobs,
                    prompt_logprobs=req.logprobs if want_prompt_logprobs else None,
                    seed_offset=i,
                )
                jobs.append((prompt.ids, params))
        self.check_work([len(p.ids) for p in prompts for _ in range(n)], [j[1].max_tokens for j in jobs])
        cont = req.modelyard_continuation
        if cont is not None:
            check_continuation(
                cont, stream=bool(req.stream), sequences=len(jobs), max_tokens=jobs[0][1].max_tokens
            )
        response_id = (cont.id if cont is not None else None) or new_id("cmpl")
        run, states = self.launch(
            response_id, jobs, stops, bool(req.skip_special_tokens), continuation=cont, lora=lora
        )
        builder = _CompletionBuilder(self, req, response_id, prompts, n)
        if cont is not None:
            builder.resume(cont.token_ids, cont.created)
        return await self.respond(request, run, states, builder, bool(req.stream))


class _CompletionBuilder:
    def __init__(
        self, serving: CompletionServing, req: CompletionRequest, rid: str, prompts: list[_Prompt], n: int
    ) -> None:
        self.serving = serving
        self.req = req
        self.id = rid
        self.created = int(time.time())
        self.model = req.model
        self.prompts = prompts
        self.n = n
        self.offsets: dict[int, int] = {}

    def resume(self, carried: Sequence[int], created: int | None) -> None:
        """Go on with a cut stream: its ``created``, and logprob offsets past the text sent already."""
        if created is not None:
            self.created = created
        token_text = self.serving.token_text
        offset = sum(len(token_text.get(t)[0]) for t in carried)
        if self.req.echo:
            offset += sum(len(token_text.get(t)[0]) for t in self.prompts[0].ids)
        self.offsets[0] = offset

    def _prompt_of(self, state: ChoiceState) -> _Prompt:
        return self.prompts[state.index // self.n]

    def _usage(self, states: Sequence[ChoiceState]) -> Usage:
        prompt_tokens = sum(len(p.ids) for p in self.prompts)
        completion = sum(s.num_generated for s in states)
        # Each prompt is counted once, however many choices (n) reused its cached prefix.
        cached_by_prompt: dict[int, int] = {}
        for s in states:
            prompt = s.index // self.n
            cached_by_prompt[prompt] = max(cached_by_prompt.get(prompt, 0), s.num_cached)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached_by_prompt.values())),
        )

    def _logprobs(
        self, state: ChoiceState, entries: Sequence[TokenLogprob], prompt: bool
    ) -> CompletionLogprobs:
        out = CompletionLogprobs()
        offset = self.offsets.get(state.index, 0)
        token_text = self.serving.token_text
        if prompt:
            ids = self._prompt_of(state).ids
            plps = state.prompt_logprobs or ()
            for pos, token_id in enumerate(ids):
                text = token_text.get(token_id)[0]
                entry = plps[pos] if pos < len(plps) else None
                out.tokens.append(text)
                out.text_offset.append(offset)
                offset += len(text)
                out.token_logprobs.append(entry.logprob if entry else None)
                out.top_logprobs.append(self._top(entry) if entry else None)
        for entry in entries:
            text = token_text.get(entry.token_id)[0]
            out.tokens.append(text)
            out.text_offset.append(offset)
            offset += len(text)
            out.token_logprobs.append(entry.logprob)
            out.top_logprobs.append(self._top(entry))
        self.offsets[state.index] = offset
        return out

    def _top(self, entry: TokenLogprob) -> dict[str, float]:
        token_text = self.serving.token_text
        top: dict[str, float] = {}
        for token_id, logprob in entry.top[: self.req.logprobs or 0]:
            top.setdefault(token_text.get(token_id)[0], logprob)
        top.setdefault(token_text.get(entry.token_id)[0], entry.logprob)
        return top

    def full(self, states: Sequence[ChoiceState]) -> CompletionResponse:
        choices = []
        for state in states:
            prompt = self._prompt_of(state)
            text = (prompt.text if self.req.echo else "") + state.text
            logprobs = None
            if self.req.logprobs is not None:
                logprobs = self._logprobs(state, state.logprobs, prompt=bool(self.req.echo))
            choices.append(
                CompletionChoice(
                    index=state.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=state.finish_reason or "length",
                )
            )
        return CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices,
                                  usage=self._usage(states))  # fmt: skip

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        resp = CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        # CreateCompletionResponse.usage is not nullable: leave it out of chunks that carry none.
        return sse.event(resp.model_dump(mode="json", exclude={"usage"} if usage is None else None))

    async def stream(self, run: GenerationRun, states: Sequence[ChoiceState]) -> AsyncIterator[bytes]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats) and include_usage
        want_lp = self.req.logprobs is not None
        if self.req.echo and self.req.modelyard_continuation is None:
            for state in states:
                prompt = self._prompt_of(state)
                lp = self._logprobs(state, [], prompt=True) if want_lp else None
                yield self._chunk([CompletionChoice(index=state.index, text=prompt.text, logprobs=lp)])

        def chunk_of(state: ChoiceState, delta: ChoiceDelta) -> bytes:
            lp = self._logprobs(state, delta.logprobs, prompt=False) if want_lp else None
            choice = CompletionChoice(
                index=state.index, text=delta.text, logprobs=lp, finish_reason=delta.finish_reason
            )
            return self._chunk([choice], self._usage(states) if continuous else None)

        usage_chunk = (lambda: self._chunk([], self._usage(states))) if include_usage else None
        async for chunk in stream_tail(run, states, chunk_of, usage_chunk):
            yield chunk
