"""``ChoiceState``: one engine stream seen as one OpenAI choice (detokenizer, stop strings, logprobs,
metrics), turning engine outputs into ``ChoiceDelta`` text increments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.server.detokenizer import IncrementalDetokenizer, StopMatcher
from modelyard.server.engine.types import GenerationOutput, TokenLogprob
from modelyard.server.errors import InvalidRequestError
from modelyard.server.metrics import RequestTracker

# What a choice reports; an engine "abort" only happens when we closed the stream ourselves.
ChoiceFinish = Literal["stop", "length"]


@dataclass
class ChoiceDelta:
    text: str
    logprobs: list[TokenLogprob]
    finish_reason: ChoiceFinish | None
    # Tokens consumed since the previous delta (the router's failover carries them over).
    token_ids: list[int] = field(default_factory=list)


class ChoiceState:
    """One engine stream seen as one OpenAI choice."""

    def __init__(
        self,
        index: int,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        stops: Sequence[str],
        tracker: RequestTracker,
        *,
        skip_special_tokens: bool = True,
    ) -> None:
        self.index = index
        self.prompt_ids = prompt_ids
        self.detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
        self.stops = StopMatcher(stops)
        self.tracker = tracker
        self.text = ""
        self.num_generated = 0
        self.num_cached = 0
        self.finish_reason: ChoiceFinish | None = None
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
        self._pending: list[TokenLogprob] = []
        self._unreported: list[int] = []
        # Characters of ``text`` the client has; ahead of ``text`` while a continuation replays.
        self.delivered = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def on_output(self, out: GenerationOutput) -> ChoiceDelta | None:
        if self.finished:
            return None
        self.num_generated = max(out.num_generated_tokens, self.num_generated + len(out.token_ids))
        self.tracker.on_output(out)
        self.num_cached = max(self.num_cached, out.num_cached_tokens)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.logprobs:
            self._pending.extend(out.logprobs)
        text = self.detok.push(out.token_ids)
        if out.finish_reason is not None:
            text += self.detok.flush()
        emitted = self.stops.feed(text)
        finish: ChoiceFinish | None = None
        if self.stops.stopped:
            finish = "stop"
        elif out.finish_reason is not None:
            emitted += self.stops.flush()
            finish = "length" if out.finish_reason == "length" else "stop"
        self.text += emitted
        self._unreported.extend(out.token_ids)
        fresh = self.text[self.delivered :]
        self.delivered = max(self.delivered, len(self.text))
        logprobs: list[TokenLogprob] = []
        if emitted or finish:
            logprobs, self._pending = self._pending, []
            self.logprobs.extend(logprobs)
        if finish is not None:
            self.finish_reason = finish
            self.tracker.finish(finish, self.num_generated)
        if not fresh and not logprobs and finish is None:
            return None
        token_ids, self._unreported = self._unreported, []
        return ChoiceDelta(fresh, logprobs, finish, token_ids)

    def resume(self, token_ids: Sequence[int], delivered: int) -> None:
        """Replay a cut stream's tokens, of whose text the client has ``delivered`` characters: the
        detokenizer and the stop strings continue from them, and only text past those is sent."""
        self.num_generated = len(token_ids)
        self.text = self.stops.feed(self.detok.push(token_ids))
        if self.stops.stopped:
            raise InvalidRequestError(
                "The continuation's tokens already hold a stop string.",
                param="modelyard_continuation",
                code="invalid_continuation",
            )
        self.delivered = delivered

    def abandon(self) -> None:
        """The stream ended without a finish (client gone, error): count it as aborted."""
        if not self.finished:
            self.tracker.finish("abort", self.num_generated)
