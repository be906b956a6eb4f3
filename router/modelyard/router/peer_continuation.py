"""Continuing a cut stream on a vLLM or SGLang pod, through their own OpenAI APIs.

Peer engines take no token notes and no ``modelyard_continuation``. The router then asks them for
what it needs to carry a stream over: the request goes upstream with ``stream_options.include_usage``
and ``continuous_usage_stats`` (both engines fill ``usage`` in every chunk then), so the router knows
the prompt's tokens and the completion tokens behind the text the client has. Its continuation is a
plain request:

- completions: the prompt plus the text generated so far, ``max_tokens`` (and ``min_tokens``) lowered
  by the tokens carried;
- chat: the messages plus an assistant message holding that text, ``continue_final_message: true`` and
  ``add_generation_prompt: false``, so the template leaves the turn open and the model goes on.

:class:`PeerStream` rewrites every chunk on the way to the client: the usage the client did not ask
for is removed, a continuation's chunks take the cut response's ``id`` and ``created``, its opening
role chunk is dropped, ``text_offset`` goes on from the carried text, and ``usage`` counts the
original prompt plus every completion token, so the client sees one stream and one final usage.
What this cannot replay exactly is in docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PEER_ENGINES = frozenset({"vllm", "sglang"})
CHAT_PATH = "/v1/chat/completions"
_USAGE_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def peer_not_resumable(path: str, fields: dict[str, Any]) -> str | None:
    """Why a stream that could resume on a built-in server cannot on a peer pod, or None."""
    if path == CHAT_PATH:
        messages = fields.get("messages")
        if not isinstance(messages, list) or not messages:
            return "a chat without messages does not resume"
        last = messages[-1]
        if fields.get("continue_final_message") and not (
            isinstance(last, dict) and isinstance(last.get("content"), str)
        ):
            return "continue_final_message on a non-text message does not resume on a vLLM or SGLang pod"
        return None
    prompt = fields.get("prompt")
    one_text = isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str)
    if not (isinstance(prompt, str) or one_text):
        return "only text prompts resume on a vLLM or SGLang pod"
    if fields.get("echo"):
        return "echo does not resume on a vLLM or SGLang pod"
    if fields.get("suffix"):
        return "suffix does not resume on a vLLM or SGLang pod"
    return None


def with_usage_stats(fields: dict[str, Any]) -> dict[str, Any]:
    """The request as it goes to a peer pod: usage in every chunk (the router strips what the client
    did not ask for)."""
    options = fields.get("stream_options")
    merged = {**(options if isinstance(options, dict) else {}), **_USAGE_OPTIONS}
    return {**fields, "stream_options": merged}


@dataclass(slots=True)
class PeerStream:
    """One peer-pod stream as the client sees it, over every pod it went through."""

    chat: bool
    include_usage: bool  # what the client asked for in stream_options
    continuous: bool
    text: str = ""  # choice 0's generated text the client has
    prompt_tokens: int | None = None  # the original prompt's (the first pod's count)
    segment: int = 0  # 0: the original request; n: the n-th continuation
    base_tokens: int = 0  # completion tokens carried into this segment
    base_chars: int = 0  # characters of text carried into this segment
    segment_tokens: int = 0  # completion tokens of this segment the client has

    @classmethod
    def of(cls, path: str, fields: dict[str, Any]) -> PeerStream:
        options = fields.get("stream_options")
        options = options if isinstance(options, dict) else {}
        include = options.get("include_usage") is True
        return cls(
            chat=path == CHAT_PATH,
            include_usage=include,
            continuous=include and options.get("continuous_usage_stats") is True,
        )

    @property
    def completion_tokens(self) -> int:
        """Completion tokens behind the text the client has."""
        return self.base_tokens + self.segment_tokens

    def rewrite(self, chunk: dict[str, Any], rid: str | None, created: int | None) -> dict[str, Any] | None:
        """The chunk for the client (None: nothing for it). ``rid``/``created``: the stream's, once
        known (a continuation's chunks take them)."""
        if self.segment:
            if rid is not None:
                chunk["id"] = rid
            if created is not None:
                chunk["created"] = created
        choices = chunk.get("choices") or []
        kept = [c for c in (self._choice(c) for c in choices if isinstance(c, dict)) if c is not None]
        usage = chunk.pop("usage", None)
        if isinstance(usage, dict):
            self._count(usage)
        elif any(self._text_of(c) for c in kept):
            self.segment_tokens += len(kept)  # no usage from this pod: a chunk per token, as both stream
        if choices and not kept:
            return None  # a continuation's opening role chunk
        if self.include_usage and (self.continuous or not choices):
            chunk["usage"] = self._usage()
        elif not choices:
            return None  # the usage-only chunk the client did not ask for
        chunk["choices"] = kept
        return chunk

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        if self.chat:
            delta = choice.get("delta")
            if self.segment and isinstance(delta, dict):
                delta.pop("role", None)
                if (
                    not delta.get("content")
                    and not delta.get("tool_calls")
                    and not choice.get("logprobs")
                    and not choice.get("finish_reason")
                ):
                    return None
        elif self.segment and self.base_chars:
            logprobs = choice.get("logprobs")
            offsets = logprobs.get("text_offset") if isinstance(logprobs, dict) else None
            if isinstance(logprobs, dict) and isinstance(offsets, list):
                logprobs["text_offset"] = [o + self.base_chars if isinstance(o, int) else o for o in offsets]
        if choice.get("index", 0) == 0:
            self.text += self._text_of(choice)
        return choice

    def _text_of(self, choice: dict[str, Any]) -> str:
        if self.chat:
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
        else:
            content = choice.get("text")
        return content if isinstance(content, str) else ""

    def _count(self, usage: dict[str, Any]) -> None:
        completion = usage.get("completion_tokens")
        if isinstance(completion, int):
            self.segment_tokens = completion
        prompt = usage.get("prompt_tokens")
        if self.segment == 0 and isinstance(prompt, int):
            self.prompt_tokens = prompt

    def _usage(self) -> dict[str, int]:
        prompt = self.prompt_tokens or 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }

    def continuation(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The request that goes on from the text the client has; starts the next segment."""
        carried = self.completion_tokens
        out = with_usage_stats(fields)
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(out.get(key), int):
                out[key] = max(1, out[key] - carried)
        if isinstance(out.get("min_tokens"), int):
            out["min_tokens"] = max(0, out["min_tokens"] - carried)
        if self.chat:
            messages = list(out["messages"])
            last = messages[-1] if messages else None
            if out.get("continue_final_message") and isinstance(last, dict):
                messages[-1] = {**last, "content": last["content"] + self.text}
            else:
                messages.append({"role": "assistant", "content": self.text})
            out["messages"] = messages
            out["continue_final_message"] = True
            out["add_generation_prompt"] = False
        else:
            prompt = out["prompt"]
            out["prompt"] = prompt + self.text if isinstance(prompt, str) else [prompt[0] + self.text]
        self.segment += 1
        self.base_tokens, self.base_chars, self.segment_tokens = carried, len(self.text), 0
        return out
