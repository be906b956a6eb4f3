"""POST /v1/embeddings: pooled, normalised vectors as floats or base64 (the SDK's default)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from starlette.requests import Request

from modelyard.server.disconnect import cancel_on_disconnect
from modelyard.server.engine.types import EngineError
from modelyard.server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
    from_engine_error,
)
from modelyard.server.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from modelyard.server.serving import BaseServing


def encode_base64(vector: Sequence[float]) -> str:
    """Little-endian float32, what the OpenAI SDK decodes (``np.frombuffer(..., dtype="float32")``)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class EmbeddingServing(BaseServing):
    endpoint = "/v1/embeddings"

    def _inputs(self, req: EmbeddingRequest) -> list[list[int]]:
        """Blocking: runs in the worker pool."""
        raw = req.input
        if isinstance(raw, str):
            items: Sequence[str | list[int]] = [raw]
        elif raw and isinstance(raw[0], int):
            items = [list(raw)]
        else:
            items = raw  # type: ignore[assignment]
        batch = []
        limit = self.runtime.max_model_len
        for i, item in enumerate(items):
            param = "input" if len(items) == 1 else f"input[{i}]"
            if isinstance(item, str):
                if not item:
                    raise InvalidRequestError(
                        "Input strings must not be empty.", param=param, code="empty_input"
                    )
                ids = self.tokenize(item)
            else:
                ids = self.check_token_ids(item, param)
            if len(ids) > limit:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {limit} tokens, however you requested "
                    f"{len(ids)} tokens in {param}. Please reduce your input.",
                    param=param,
                )
            batch.append(ids)
        return batch

    async def create(self, req: EmbeddingRequest, request: Request) -> EmbeddingResponse:
        self.check_model(req.model, "embed")
        items = [req.input] if isinstance(req.input, str) else req.input
        for i, item in enumerate(items):
            if isinstance(item, str):
                self.check_chars(len(item), "input" if isinstance(req.input, str) else f"input[{i}]")
        batch = await self.offload(self._inputs, req)
        tracker = self.runtime.metrics.track(sum(len(ids) for ids in batch))
        try:
            vectors = await cancel_on_disconnect(request, self.runtime.engine.embed(batch))
        except EngineError as exc:
            tracker.finish("error", 0)
            raise from_engine_error(exc) from exc
        except BaseException:
            tracker.finish("abort", 0)
            raise
        tracker.finish("stop", 0)
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            # Truncating a model not trained for it (Matryoshka) gives poor vectors silently; refuse.
            raise UnsupportedParameterError(
                f"This model produces {len(vectors[0])}-dimensional embeddings and does not support "
                f"`dimensions` = {req.dimensions}.",
                param="dimensions",
            )
        as_b64 = req.encoding_format == "base64"
        data = [
            EmbeddingData(index=i, embedding=encode_base64(v) if as_b64 else [float(x) for x in v])
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(ids) for ids in batch)
        return EmbeddingResponse(
            model=req.model, data=data, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )
