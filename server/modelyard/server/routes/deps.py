"""Accessors for app state, so handlers use no globals and read like declarations."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelyard.server.errors import ServiceUnavailableError
from modelyard.server.runtime import ModelRuntime
from modelyard.server.serving_chat import ChatServing
from modelyard.server.serving_completions import CompletionServing
from modelyard.server.serving_embeddings import EmbeddingServing
from modelyard.server.serving_responses import ResponsesServing
from modelyard.server.state import AppState


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.modelyard
    return state


def _loaded(request: Request) -> AppState:
    state = app_state(request)
    if state.runtime is None:
        raise ServiceUnavailableError(f"The model is not loaded yet ({state.load.stage}); retry shortly.")
    return state


def runtime(request: Request) -> ModelRuntime:
    state = _loaded(request)
    assert state.runtime is not None
    return state.runtime


def completions(request: Request) -> CompletionServing:
    serving = _loaded(request).completions
    assert serving is not None
    return serving


def chat(request: Request) -> ChatServing:
    serving = _loaded(request).chat
    assert serving is not None
    return serving


def responses(request: Request) -> ResponsesServing:
    serving = _loaded(request).responses
    assert serving is not None
    return serving


def embeddings(request: Request) -> EmbeddingServing:
    serving = _loaded(request).embeddings
    assert serving is not None
    return serving


StateDep = Annotated[AppState, Depends(app_state)]
RuntimeDep = Annotated[ModelRuntime, Depends(runtime)]
CompletionsDep = Annotated[CompletionServing, Depends(completions)]
ChatDep = Annotated[ChatServing, Depends(chat)]
ResponsesDep = Annotated[ResponsesServing, Depends(responses)]
EmbeddingsDep = Annotated[EmbeddingServing, Depends(embeddings)]
