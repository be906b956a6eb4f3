"""The model server's engine: loads a transformers model and serves it with continuous batching.

Only this package imports torch; the serving layer speaks the types in ``types``.
"""

from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.loader import LoadedModel, load_model
from modelyard.server.engine.types import (
    Device,
    DType,
    Engine,
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineStats,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    GuidedDecoding,
    GuidedKind,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    Task,
    TokenLogprob,
    UnsupportedGrammarError,
)

__all__ = [
    "DType",
    "Device",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineStats",
    "FinishReason",
    "GenerationOutput",
    "GenerationRequest",
    "GuidedDecoding",
    "GuidedKind",
    "LoadedModel",
    "PromptTooLongError",
    "QueueFullError",
    "SamplingParams",
    "Task",
    "TokenLogprob",
    "TorchEngine",
    "UnsupportedGrammarError",
    "load_model",
]
