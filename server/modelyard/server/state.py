"""What the app holds at run time: load progress, and once loaded, the runtime and serving objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from modelyard.server.engine_watch import EngineWatch
from modelyard.server.metrics import ServerMetrics
from modelyard.server.runtime import ModelRuntime
from modelyard.server.serving_chat import ChatServing
from modelyard.server.serving_completions import CompletionServing
from modelyard.server.serving_embeddings import EmbeddingServing
from modelyard.server.serving_responses import ResponsesServing
from modelyard.server.settings import ServerSettings


@dataclass
class LoadProgress:
    stage: str = "starting"
    fraction: float = 0.0
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def update(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, max(0.0, min(1.0, fraction))


@dataclass
class AppState:
    settings: ServerSettings
    metrics: ServerMetrics
    load: LoadProgress = field(default_factory=LoadProgress)
    runtime: ModelRuntime | None = None
    completions: CompletionServing | None = None
    chat: ChatServing | None = None
    embeddings: EmbeddingServing | None = None
    responses: ResponsesServing | None = None
    watch: EngineWatch | None = None  # set once the engine runs (engine_watch)

    def attach(self, runtime: ModelRuntime) -> None:
        self.completions = CompletionServing(runtime)
        self.chat = ChatServing(runtime)
        self.embeddings = EmbeddingServing(runtime)
        self.responses = ResponsesServing(runtime)
        self.runtime = runtime  # last: it is what /ready and the routes check

    def engine_failed(self, reason: str) -> None:
        """The engine stopped for good (its process died): not ready, not alive (so the pod restarts),
        and new requests get 503. Requests in flight hold their serving objects and end with an error."""
        self.load.error = reason
        self.load.stage = "engine stopped"
        self.runtime = None  # first: it is what /ready and the routes check
        self.completions = self.chat = self.embeddings = self.responses = None
