"""Messages between the HTTP process and the engine process, and how they travel.

Each message is one pickled dataclass in one ZeroMQ frame. Pickle carries the engine's own dataclasses
(``GenerationRequest``, ``SamplingParams``, ``GenerationOutput``, ``EngineStats``) whole, so a field
added to them crosses the boundary without touching this module. The sockets are ``ipc://`` paths in
a directory only this user can open (mode 0700), so nothing else can inject a pickle.

Requests are addressed by a ``key`` the client assigns (unique per client), not by the request id,
which the serving layer may reuse across the ``n`` choices of one request.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import zmq
import zmq.asyncio

from modelyard.server.engine.types import (
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    PromptTooLongError,
    QueueFullError,
)

ErrorKind = Literal["queue_full", "prompt_too_long", "dead", "engine", "internal"]


@dataclass(frozen=True, slots=True)
class WireError:
    """An engine exception, by kind: exceptions themselves do not pickle faithfully (their ``args``)."""

    kind: ErrorKind
    message: str
    retry_after_s: float = 1.0
    # For kind "engine": the EngineError subclass ("module:QualName"), so subclasses added later (e.g.
    # UnsupportedGrammarError, answered 400) come back as themselves.
    error_class: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        if isinstance(exc, QueueFullError):
            return cls("queue_full", str(exc), exc.retry_after_s)
        if isinstance(exc, PromptTooLongError):
            return cls("prompt_too_long", str(exc))
        if isinstance(exc, EngineDeadError):
            return cls("dead", str(exc))
        if isinstance(exc, EngineError):
            return cls("engine", str(exc), error_class=f"{type(exc).__module__}:{type(exc).__qualname__}")
        return cls("internal", f"{type(exc).__name__}: {exc}")

    def to_exception(self) -> Exception:
        if self.kind == "queue_full":
            return QueueFullError(self.retry_after_s)
        if self.kind == "prompt_too_long":
            return PromptTooLongError(self.message)
        if self.kind == "dead":
            return EngineDeadError(self.message)
        if self.kind == "engine":
            return _engine_error(self.error_class, self.message)
        return RuntimeError(self.message)


def _engine_error(error_class: str, message: str) -> EngineError:
    """An instance of the named EngineError subclass (plain EngineError if it cannot be found or built)."""
    module_name, _, qualname = error_class.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
        if isinstance(found, type) and issubclass(found, EngineError):
            error: EngineError = found(message)
            return error
    except Exception:  # an unknown or unusual class: fall back to the base class
        pass
    return EngineError(message)


# ----- launch: written by the HTTP process to the engine process's stdin -----


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    config: EngineConfig
    requests_addr: str  # the engine process PULLs requests here
    outputs_addr: str  # and PUSHes outputs here
    threads: int
    log_level: str = "info"
    log_format: str = "json"


# ----- HTTP process -> engine process -----


@dataclass(frozen=True, slots=True)
class Generate:
    key: int
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class Abort:
    key: int


@dataclass(frozen=True, slots=True)
class Embed:
    key: int
    batch: list[list[int]]


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class LoraCall:
    """Load (read, check, register) or unload a LoRA adapter; answered by ``LoraReply``."""

    key: int
    op: Literal["load", "unload"]
    name: str
    path: str = ""


# ----- engine process -> HTTP process -----


@dataclass(frozen=True, slots=True)
class Progress:
    stage: str
    fraction: float


@dataclass(frozen=True, slots=True)
class Ready:
    max_model_len: int
    pid: int
    threads: int
    stats: EngineStats


@dataclass(frozen=True, slots=True)
class LoadFailed:
    error: str


# GenerationOutput travels as the tuple of its fields: half the pickling time of the dataclass itself
# (whose slots state goes through Python-level __getstate__/__setstate__), and still generic: the field
# list is read from the dataclass, so a new field crosses without a change here.
_OUTPUT_FIELDS = tuple(f.name for f in fields(GenerationOutput))


@dataclass(frozen=True, slots=True)
class Outputs:
    """Everything one engine step produced, for every request, in one message (plus the stats after it).

    Build it with ``Outputs.of``; read it with ``outputs()``."""

    items: list[tuple[int, tuple[Any, ...] | WireError]] = field(default_factory=list)
    stats: EngineStats | None = None

    @classmethod
    def of(
        cls, items: list[tuple[int, GenerationOutput | WireError]], stats: EngineStats | None = None
    ) -> Outputs:
        packed: list[tuple[int, tuple[Any, ...] | WireError]] = [
            (key, item if isinstance(item, WireError) else tuple(getattr(item, n) for n in _OUTPUT_FIELDS))
            for key, item in items
        ]
        return cls(packed, stats)

    def outputs(self) -> list[tuple[int, GenerationOutput | WireError]]:
        return [
            (key, item if isinstance(item, WireError) else GenerationOutput(*item))
            for key, item in self.items
        ]


@dataclass(frozen=True, slots=True)
class EmbedResult:
    key: int
    result: list[list[float]] | WireError


@dataclass(frozen=True, slots=True)
class LoraReply:
    key: int
    error: WireError | None = None


ToEngine = Generate | Abort | Embed | Shutdown | LoraCall
FromEngine = Progress | Ready | LoadFailed | Outputs | EmbedResult | LoraReply


def encode(message: ToEngine | FromEngine | LaunchSpec) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode_to_engine(data: bytes) -> ToEngine:
    message = pickle.loads(data)
    if not isinstance(message, Generate | Abort | Embed | Shutdown | LoraCall):
        raise TypeError(f"unexpected message for the engine: {type(message).__name__}")
    return message


def decode_from_engine(data: bytes) -> FromEngine:
    message = pickle.loads(data)
    if not isinstance(message, Progress | Ready | LoadFailed | Outputs | EmbedResult | LoraReply):
        raise TypeError(f"unexpected message from the engine: {type(message).__name__}")
    return message


def decode_launch(data: bytes) -> LaunchSpec:
    message = pickle.loads(data)
    if not isinstance(message, LaunchSpec):
        raise TypeError(f"unexpected launch message: {type(message).__name__}")
    return message


def unbounded_socket(context: zmq.asyncio.Context, kind: int, linger_ms: int) -> zmq.asyncio.Socket:
    """A ``kind`` (PUSH or PULL) socket with no high-water mark either way, as both ends open theirs:
    a send never blocks or drops (the one peer reads everything; a message lost would hang a stream).
    ``linger_ms`` bounds how long closing it waits to deliver what is still queued."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock
