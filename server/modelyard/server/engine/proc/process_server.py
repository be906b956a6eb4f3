"""The engine process: ``python -m modelyard.server.engine.proc.process_server``.

It reads its ``LaunchSpec`` from stdin (written by ``EngineClient`` in ``process``), loads the weights,
runs ``TorchEngine`` and serves requests, aborts and embeddings over the two ZeroMQ sockets. Apart from
the client so the HTTP process, which imports only the client, never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from modelyard.server.engine.host import heap, library_bss, resident_pages
from modelyard.server.engine.host.threads import apply_torch_threads
from modelyard.server.engine.proc import ipc
from modelyard.server.engine.proc.process import LAUNCH_HEADER
from modelyard.server.engine.types import (
    EngineConfig,
    EngineError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
)

log = logging.getLogger("modelyard.server.engine.proc.process")

_T = TypeVar("_T")

_STATS_INTERVAL_S = 0.25  # how often the engine process pushes changed stats between steps


class _EngineServer:
    """Runs ``TorchEngine`` and answers the client's messages; one Outputs message per engine step."""

    def __init__(self, engine: Any, outputs: zmq.asyncio.Socket) -> None:
        self._engine = engine
        self._outputs = outputs
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[tuple[int, GenerationOutput | ipc.WireError]] = []
        self._flush_scheduled = False
        self._last_stats: EngineStats | None = None

    def send(self, message: ipc.FromEngine) -> None:
        self._outputs.send(ipc.encode(message), flags=zmq.NOBLOCK)

    def handle(self, message: ipc.ToEngine) -> bool:
        """Act on one message; False on Shutdown."""
        if isinstance(message, ipc.Generate):
            self._tasks[message.key] = asyncio.create_task(self._generate(message.key, message.request))
        elif isinstance(message, ipc.Abort):
            task = self._tasks.get(message.key)
            if task is not None:
                task.cancel()  # closes the engine's iterator: the request is aborted next step
        elif isinstance(message, ipc.Embed):
            self._tasks[message.key] = asyncio.create_task(self._embed(message.key, message.batch))
        elif isinstance(message, ipc.LoraCall):
            self._tasks[message.key] = asyncio.create_task(self._lora(message))
        elif isinstance(message, ipc.Shutdown):
            return False
        return True

    async def _lora(self, call: ipc.LoraCall) -> None:
        if call.op == "load":
            work = self._engine.add_lora(call.name, call.path)
        else:
            work = self._engine.remove_lora(call.name)
        result = await self._answer(call.key, work, "LoRA adapter call failed in the engine process")
        self.send(ipc.LoraReply(call.key, result if isinstance(result, ipc.WireError) else None))

    async def _generate(self, key: int, request: GenerationRequest) -> None:
        from modelyard.server.logs import request_id_var, trace_id_var

        # This task's log lines (and the engine's, which name them) carry both ids.
        request_id_var.set(request.request_id)
        trace_id_var.set(request.trace_id)
        try:
            async for output in self._engine.generate(request):
                self._queue(key, output)
        except asyncio.CancelledError:
            pass  # aborted by the client: it no longer listens
        except Exception as exc:
            self._queue(key, _wire_error(exc, "generation failed in the engine process"))
        finally:
            self._tasks.pop(key, None)

    async def _embed(self, key: int, batch: list[list[int]]) -> None:
        result = await self._answer(key, self._engine.embed(batch), "embedding failed in the engine process")
        self.send(ipc.EmbedResult(key, result))

    async def _answer(self, key: int, work: Awaitable[_T], failed: str) -> _T | ipc.WireError:
        """What ``work`` returns, or the error it raised as the client will get it. The client's abort
        (``CancelledError``) goes on up: nothing is answered then."""
        try:
            return await work
        except Exception as exc:
            return _wire_error(exc, failed)
        finally:
            self._tasks.pop(key, None)

    def _queue(self, key: int, item: GenerationOutput | ipc.WireError) -> None:
        self._outbox.append((key, item))
        if not self._flush_scheduled:
            # The engine wakes every stream of a step in one callback; their tasks all run before this
            # callback does, so one step's outputs leave in one message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, self._outbox = self._outbox, []
        self._last_stats = self._engine.stats()
        self.send(ipc.Outputs.of(items, self._last_stats))

    async def push_stats(self) -> None:
        """Stats change between outputs too (an abort frees a slot): push them when they do."""
        while True:
            await asyncio.sleep(_STATS_INTERVAL_S)
            stats = self._engine.stats()
            if stats != self._last_stats:
                self._last_stats = stats
                self.send(ipc.Outputs([], stats))

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await self._engine.stop()


def _wire_error(exc: Exception, failed: str) -> ipc.WireError:
    """``exc`` as it crosses to the client. One that is no ``EngineError`` is a bug, so it is logged
    here as ``failed``, with its traceback (call this inside the ``except``)."""
    if not isinstance(exc, EngineError):
        log.exception(failed)
    return ipc.WireError.of(exc)


# Optional packages that transformers' and torch's imports pull in when installed, and that an engine on
# CPU never runs: triton compiles GPU kernels (torch._dynamo, which transformers imports, loads it: ~70
# MiB of RSS), scipy serves object-detection losses (~33 MiB) and cuda-python's bindings (``cuda``, which
# ``import torch`` loads through torch.cuda: ~10 MiB) drive a GPU. All three already are optional: torch
# and transformers check for them, and take a package whose sys.modules entry is None as not installed.
UNUSED_ON_CPU = ("triton", "scipy", "cuda")
# Device nodes of a GPU torch could use (NVIDIA, ROCm, WSL): without any, device "auto" is CPU, known
# before torch is imported (torch's import already loads ``cuda``).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def skip_unused_packages(config: EngineConfig) -> list[str]:
    """Mark ``UNUSED_ON_CPU`` as absent in this process when its engine runs on CPU; the names marked.
    Not with --trust-remote-code: a model's own code may import them."""
    if config.trust_remote_code or config.device == "cuda":
        return []
    if config.device == "auto" and any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        import torch  # not triton or scipy: those come with transformers' modelling code

        if torch.cuda.is_available():
            return []
    hidden = [name for name in UNUSED_ON_CPU if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    return hidden


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


def log_memory(stage: str, **fields: Any) -> None:
    log.info("engine process memory", extra={"stage": stage, "rss_bytes": heap.rss_bytes(), **fields})


def _exit_when_parent_dies(fd: int) -> None:
    """Block on the pipe from the HTTP process; its EOF means the parent is gone: exit now."""

    def wait() -> None:
        # os.read, not sys.stdin: a thread blocked inside a buffered reader aborts interpreter shutdown.
        with contextlib.suppress(OSError):
            while os.read(fd, 65536):
                pass
        os._exit(0)  # no clean-up worth waiting for: the weights and KV cache die with us

    threading.Thread(target=wait, name="parent-watch", daemon=True).start()


async def _serve(spec: ipc.LaunchSpec) -> int:
    context = zmq.asyncio.Context()
    requests = ipc.unbounded_socket(context, zmq.PULL, linger_ms=2000)
    outputs = ipc.unbounded_socket(context, zmq.PUSH, linger_ms=2000)
    requests.connect(spec.requests_addr)
    outputs.connect(spec.outputs_addr)
    loop = asyncio.get_running_loop()

    def progress(stage: str, fraction: float) -> None:
        # Called from the loading thread; ZeroMQ sockets belong to the loop's thread.
        loop.call_soon_threadsafe(
            lambda: outputs.send(ipc.encode(ipc.Progress(stage, fraction)), flags=zmq.NOBLOCK)
        )

    try:
        from modelyard.server.engine.engine import TorchEngine
        from modelyard.server.engine.model.loader import load_model

        log_memory("imports done")
        loaded = await asyncio.to_thread(load_model, spec.config, progress)
        log_memory("weights loaded")
        progress("starting engine", 0.95)
        engine = TorchEngine(loaded, spec.config)
        # This process's engine is the model's only user: what only transformers' modules would read
        # goes (docs/server.md, "Memory of the engine processes").
        freed = engine.release_unused_weights()
        gc.collect()  # loading leaves reference cycles that hold tensors
        heap.trim()
        log_memory("engine built", released_bytes=freed)
        await engine.start()
        heap.trim()
        # Last, once nothing more is loaded: a CPU engine never runs the CUDA libraries torch loaded.
        dropped, statics = 0, 0
        if loaded.device == "cpu":
            dropped = resident_pages.release_cuda_library_pages()
            # Sound only where no CUDA work ever runs in this process, and as main() ends with os._exit.
            if not _cuda_initialized():
                statics = library_bss.release_uncalled_library_bss()
        log_memory("engine started", cuda_library_bytes_released=dropped, cuda_library_bss_released=statics)
    except Exception as exc:
        log.exception("engine process: model load failed")
        await outputs.send(ipc.encode(ipc.LoadFailed(f"{type(exc).__name__}: {exc}")))
        outputs.close(linger=2000)
        requests.close(linger=0)
        context.term()
        return 1
    server = _EngineServer(engine, outputs)
    server.send(ipc.Ready(engine.max_model_len, os.getpid(), spec.threads, engine.stats()))
    stats_task = asyncio.create_task(server.push_stats())
    try:
        while server.handle(ipc.decode_to_engine(await requests.recv())):
            pass
    finally:
        stats_task.cancel()
        await server.stop()
        outputs.close(linger=1000)
        requests.close(linger=0)
        context.term()
    return 0


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the HTTP process decides when we stop
    heap.limit_arenas()  # before any thread starts (the loader, the engine, OpenMP, ZeroMQ)
    fd = sys.stdin.fileno()
    header = _read_exactly(fd, LAUNCH_HEADER.size)
    if header is None:
        sys.exit(2)  # the HTTP process died before sending the launch spec
    data = _read_exactly(fd, LAUNCH_HEADER.unpack(header)[0])
    if data is None:
        sys.exit(2)
    spec = ipc.decode_launch(data)
    from modelyard.server.logs import configure_logging

    configure_logging(spec.log_level, spec.log_format)
    hidden = skip_unused_packages(spec.config)
    if hidden:
        log.info("packages a CPU engine does not use are not imported", extra={"packages": hidden})
    _exit_when_parent_dies(fd)
    apply_torch_threads(spec.threads)
    try:
        code = asyncio.run(_serve(spec))
    except BaseException:
        log.exception("engine process: serving failed")
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit, whatever happened: the engine's and the parent watch's daemon threads must not delay or
    # abort exit, and no library's static destructors run (library_bss dropped some libraries' data).
    os._exit(code)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    main()
