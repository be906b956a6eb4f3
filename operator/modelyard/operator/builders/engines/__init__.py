"""The engine registry: `spec.engine` -> the builder of that engine's server container."""

from __future__ import annotations

from modelyard.api import metadata as md
from modelyard.api.llmmodel import Engine
from modelyard.operator.builders.engines import modelyard, sglang, vllm
from modelyard.operator.builders.engines.base import EngineBuilder, EngineContainer, Probes

__all__ = ["ENGINE_ANNOTATION", "EngineBuilder", "EngineContainer", "Probes", "engine_builder"]

# On the pod template, so that the load-progress prober knows which endpoint a pod has.
ENGINE_ANNOTATION = f"{md.GROUP}/engine"

_BUILDERS: dict[Engine, EngineBuilder] = {
    Engine.MODELYARD: modelyard.BUILDER,
    Engine.VLLM: vllm.BUILDER,
    Engine.SGLANG: sglang.BUILDER,
}


def engine_builder(engine: Engine | str) -> EngineBuilder:
    return _BUILDERS[Engine(engine)]
