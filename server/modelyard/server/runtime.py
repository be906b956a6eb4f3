"""``ModelRuntime``: what a loaded model offers the serving layer (engine, tokenizer, names, limits)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modelyard.server.engine.types import Engine, Task
from modelyard.server.metrics import ServerMetrics


@dataclass
class ModelRuntime:
    engine: Engine
    tokenizer: Any
    task: Task
    max_model_len: int
    served_names: list[str]
    root: str
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def primary_name(self) -> str:
        return self.served_names[0]
