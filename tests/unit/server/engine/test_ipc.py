"""The wire between the HTTP and engine processes: every message survives, errors keep their kind."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from modelyard.server.engine.proc import ipc
from modelyard.server.engine.types import (
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    TokenLogprob,
)

STATS = EngineStats(num_running=3, num_waiting=1, kv_cache_usage=0.25, max_num_seqs=64, max_queue=1024)


def _request() -> GenerationRequest:
    params = SamplingParams(
        max_tokens=16,
        temperature=0.7,
        seed=5,
        logit_bias={7: -100.0},
        logprobs=2,
        stop_token_ids=frozenset({2, 9}),
    )
    return GenerationRequest("req-1", [1, 2, 3], params)


def _output(i: int = 0) -> GenerationOutput:
    return GenerationOutput(
        token_ids=(10 + i,),
        logprobs=(TokenLogprob(10 + i, -0.5, ((10 + i, -0.5), (11, -1.5))),),
        num_prompt_tokens=3,
        num_generated_tokens=i + 1,
        prompt_logprobs=(None, TokenLogprob(2, -3.0)),
    )


@pytest.mark.parametrize(
    "message",
    [
        ipc.Generate(1, _request()),
        # A traced request carries its span's context into the engine process.
        ipc.Generate(
            3, replace(_request(), trace_context="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ),
        ipc.Abort(1),
        ipc.Embed(2, [[1, 2], [3]]),
        ipc.Shutdown(),
    ],
)
def test_messages_to_the_engine_round_trip(message: ipc.ToEngine) -> None:
    assert ipc.decode_to_engine(ipc.encode(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        ipc.Progress("loading weights", 0.2),
        ipc.Ready(1024, 4242, 2, STATS),
        ipc.LoadFailed("OSError: no such model"),
        ipc.Outputs.of([(1, _output()), (2, ipc.WireError("queue_full", "busy", 2.0))], STATS),
        ipc.EmbedResult(3, [[0.5, 0.5]]),
        ipc.EmbedResult(4, ipc.WireError("prompt_too_long", "too long")),
    ],
)
def test_messages_from_the_engine_round_trip(message: ipc.FromEngine) -> None:
    assert ipc.decode_from_engine(ipc.encode(message)) == message


def test_launch_spec_round_trips() -> None:
    spec = ipc.LaunchSpec(
        EngineConfig(model="/m", max_num_seqs=8), "ipc:///a", "ipc:///b", 2, "debug", "text"
    )
    assert ipc.decode_launch(ipc.encode(spec)) == spec


def test_a_message_of_the_wrong_direction_is_refused() -> None:
    with pytest.raises(TypeError):
        ipc.decode_to_engine(ipc.encode(ipc.Progress("x", 0.0)))
    with pytest.raises(TypeError):
        ipc.decode_from_engine(ipc.encode(ipc.Abort(1)))


@pytest.mark.parametrize(
    "exc",
    [
        QueueFullError(3.5),
        PromptTooLongError("prompt too long"),
        EngineDeadError("gone"),
        EngineError("empty"),
    ],
)
def test_engine_errors_keep_their_class_message_and_retry_after(exc: EngineError) -> None:
    wire = ipc.decode_from_engine(ipc.encode(ipc.EmbedResult(0, ipc.WireError.of(exc))))
    assert isinstance(wire, ipc.EmbedResult)
    assert isinstance(wire.result, ipc.WireError)
    back = wire.result.to_exception()
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    if isinstance(exc, QueueFullError):
        assert isinstance(back, QueueFullError)
        assert back.retry_after_s == 3.5


def test_an_unexpected_exception_becomes_a_plain_error_with_its_type() -> None:
    back = ipc.WireError.of(ZeroDivisionError("division by zero")).to_exception()
    assert not isinstance(back, EngineError)
    assert "ZeroDivisionError: division by zero" in str(back)


@dataclass(frozen=True, slots=True)
class _ParamsWithANewField:
    max_tokens: int
    guided: dict[str, str]


def test_fields_the_wire_does_not_know_cross_it_untouched() -> None:
    # Other parts add fields to the engine's dataclasses; the wire pickles them whole.
    request = GenerationRequest("r", [1], _ParamsWithANewField(4, {"json": "{}"}))  # type: ignore[arg-type]
    decoded = ipc.decode_to_engine(ipc.encode(ipc.Generate(7, request)))
    assert isinstance(decoded, ipc.Generate)
    assert decoded.request.params == request.params


def test_a_step_s_outputs_come_back_as_the_engine_s_dataclasses() -> None:
    items: list[tuple[int, GenerationOutput | ipc.WireError]] = [
        (1, _output(0)),
        (2, GenerationOutput(token_ids=(), finish_reason="stop", stop_token_id=2, num_generated_tokens=4)),
        (3, ipc.WireError("dead", "gone")),
    ]
    decoded = ipc.decode_from_engine(ipc.encode(ipc.Outputs.of(items, STATS)))
    assert isinstance(decoded, ipc.Outputs)
    assert decoded.outputs() == items
    assert decoded.stats == STATS


class _NewEngineError(EngineError):
    """Stands for an error kind added after the wire was written (like UnsupportedGrammarError)."""


def test_an_engine_error_subclass_the_wire_does_not_know_comes_back_as_itself() -> None:
    back = ipc.WireError.of(_NewEngineError("JSON schema keyword 'uniqueItems' is not supported"))
    decoded = ipc.decode_from_engine(ipc.encode(ipc.EmbedResult(0, back)))
    assert isinstance(decoded, ipc.EmbedResult)
    assert isinstance(decoded.result, ipc.WireError)
    exc = decoded.result.to_exception()
    assert type(exc) is _NewEngineError
    assert str(exc) == "JSON schema keyword 'uniqueItems' is not supported"


def test_an_unknown_error_class_falls_back_to_engine_error() -> None:
    exc = ipc.WireError("engine", "odd", error_class="no.such.module:Nope").to_exception()
    assert type(exc) is EngineError
    assert str(exc) == "odd"
