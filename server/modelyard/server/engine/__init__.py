"""The model server's engine: loads a transformers model and serves it with continuous batching.

Only this package imports torch, and only in the modules that need it: the package itself exports
the torch-free contract (``types``) that the HTTP process speaks, so importing it (as any submodule
import does) never loads torch. ``TorchEngine`` lives in ``engine.engine``, ``load_model`` in
``engine.model.loader``.

Layout: ``engine.py`` runs the step loop; ``core/`` decides what runs (scheduler, blocks,
sequences), ``model/`` runs the model (loader, runner, caches, sampler, guided decoding), ``proc/``
is the engine process and its wire, ``host/`` tunes threads and memory to the host; ``fast_llama.py``
and ``lora/`` still sit at this level.
"""

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
    "PromptTooLongError",
    "QueueFullError",
    "SamplingParams",
    "Task",
    "TokenLogprob",
    "UnsupportedGrammarError",
]
