"""What an engine builder returns, and the pieces every engine shares (model path, hub env).

An engine builder is pure: LLMModel + settings in, the engine-specific part of the server container
out. `deployment.py` wraps it into the engine-agnostic pod (resources, volumes, security, scheduling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.api import metadata as md
from modelyard.api.llmmodel import Engine, LLMModel, ModelSource
from modelyard.operator.builders.engines.lora import LoraApi
from modelyard.operator.settings import OperatorSettings

CACHE_MOUNT = "/cache"
MODELS_MOUNT = "/models"


@dataclass(frozen=True)
class Probes:
    """HTTP paths on the server port. Startup covers download + load; liveness restarts a hung
    server; readiness gates traffic."""

    startup: str
    liveness: str
    readiness: str


@dataclass(frozen=True)
class EngineContainer:
    image: str
    command: list[str]
    args: list[str]
    probes: Probes
    # Engine-specific variables; the hub/cache variables and spec.server.env are added around them.
    env: list[dict[str, Any]] = field(default_factory=list)
    metrics_path: str = "/metrics"


class EngineBuilder(Protocol):
    @property
    def engine(self) -> Engine: ...

    @property
    def progress_path(self) -> str | None:
        """GET path answering {"status": "loading", "stage", "progress"} while loading; None: the
        operator falls back to `health_path`."""

    @property
    def health_path(self) -> str: ...

    @property
    def lora_api(self) -> LoraApi: ...

    def container(self, model: LLMModel, settings: OperatorSettings) -> EngineContainer: ...


def model_argument(model: LLMModel) -> str:
    """What the engine loads: a hub id for hf://, a local path for pvc:// and s3://."""
    source, path = model.spec.source, model.spec.source_path
    if source is ModelSource.HF:
        return path
    if source is ModelSource.PVC:
        claim, _, sub = path.partition("/")
        return f"{MODELS_MOUNT}/{claim}/{sub}".rstrip("/")
    return f"{MODELS_MOUNT}/s3"


def image(model: LLMModel, settings: OperatorSettings) -> str:
    return model.spec.server.image or settings.engine_image(model.spec.engine)


def listen_args() -> list[str]:
    # Every engine listens on the same port, so the Service, the router and the scrape config are
    # engine-agnostic.
    return ["--host", "0.0.0.0", "--port", str(md.SERVER_PORT)]


def tensor_parallel_size(model: LLMModel) -> int | None:
    """GPUs per replica = tensor-parallel size; None on CPU (gpus: 0)."""
    gpus = model.spec.resources.gpus
    return gpus if gpus > 0 else None
