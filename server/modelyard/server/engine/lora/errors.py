"""Errors about LoRA adapters; the serving layer answers each with a 4xx and keeps serving."""

from __future__ import annotations

from modelyard.server.engine.types import EngineError


class LoraError(EngineError):
    """An adapter that cannot be loaded (missing files, rank over the maximum, a shape or target the base
    model does not have, a name already taken); answered 400 with the message."""


class LoraNotFoundError(EngineError):
    """No adapter of that name is loaded (answered 404 ``model_not_found``)."""
