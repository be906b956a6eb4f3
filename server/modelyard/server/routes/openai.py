"""The OpenAI endpoints: models, completions, chat completions, embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from modelyard.server.body_guard import GuardedBodyRoute
from modelyard.server.errors import ModelNotFoundError
from modelyard.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
)
from modelyard.server.protocol_responses import ResponsesRequest
from modelyard.server.routes.deps import ChatDep, CompletionsDep, EmbeddingsDep, ResponsesDep, RuntimeDep
from modelyard.server.runtime import ModelRuntime
from modelyard.server.serving_responses import STORE_NOTE

router = APIRouter(prefix="/v1", tags=["openai"], route_class=GuardedBodyRoute)


def _json(result: Response | BaseModel) -> Response:
    if isinstance(result, Response):
        return result
    return JSONResponse(result.model_dump(mode="json"))


def _cards(runtime: ModelRuntime) -> list[ModelCard]:
    cards = [
        # root names the served model, never the weights' filesystem path (which clients must not see).
        ModelCard(
            id=name, created=runtime.created, root=runtime.primary_name, max_model_len=runtime.max_model_len
        )
        for name in runtime.served_names
    ]
    if runtime.adapters is not None:
        # As vLLM lists them: each adapter with its base model as parent (never the adapter's path).
        cards += [
            ModelCard(
                id=card.name,
                created=card.created,
                root=card.name,
                parent=runtime.primary_name,
                max_model_len=runtime.max_model_len,
            )
            for card in runtime.adapters.cards()
        ]
    return cards


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> Response:
    return _json(ModelList(data=_cards(runtime)))


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, runtime: RuntimeDep) -> Response:
    for card in _cards(runtime):
        if card.id == model_id:
            return _json(card)
    raise ModelNotFoundError(model_id, [card.id for card in _cards(runtime)])


@router.post("/completions")
async def create_completion(body: CompletionRequest, request: Request, serving: CompletionsDep) -> Response:
    return _json(await serving.create(body, request))


@router.post("/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, serving: ChatDep) -> Response:
    return _json(await serving.create(body, request))


@router.post("/responses")
async def create_response(body: ResponsesRequest, request: Request, serving: ResponsesDep) -> Response:
    response = _json(await serving.create_response(body, request))
    if body.store:
        response.headers["x-modelyard-note"] = STORE_NOTE
    return response


@router.post("/embeddings")
async def create_embedding(body: EmbeddingRequest, request: Request, serving: EmbeddingsDep) -> Response:
    return _json(await serving.create(body, request))
