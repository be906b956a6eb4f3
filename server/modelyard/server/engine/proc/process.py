"""The engine in its own process, so the step loop never shares a GIL with HTTP parsing and streaming.

The HTTP process holds an ``EngineClient`` (it implements ``Engine``); ``python -m
modelyard.server.engine.proc.process_server`` is the other side: it loads the weights, runs ``TorchEngine``
and serves requests, aborts and embeddings over two ZeroMQ PUSH/PULL sockets (messages in ``ipc``).
This module imports no torch: it is what the HTTP process runs.

Failure handling, both ways, never a hang:
- engine process dies: the client notices within ``_WATCH_INTERVAL_S`` (it polls the child), fails
  every open request with ``EngineDeadError`` (streams end with an error event then ``[DONE]``) and
  resolves ``died`` so the app turns unready;
- HTTP process dies: the engine process's stdin is a pipe from it; EOF on that pipe (the parent is
  gone, however it died) ends the engine process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import zmq
import zmq.asyncio

from modelyard.server.engine.core.output_stream import OutputStream
from modelyard.server.engine.host.threads import thread_choices, thread_env
from modelyard.server.engine.proc import ipc
from modelyard.server.engine.types import (
    EngineConfig,
    EngineDeadError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
)

log = logging.getLogger("modelyard.server.engine.proc.process")

ProgressFn = Callable[[str, float], None]

_WATCH_INTERVAL_S = 0.2  # how often the client checks the engine process is alive
_STOP_TIMEOUT_S = 10.0
LAUNCH_HEADER = struct.Struct("!Q")  # the launch spec's length, before it on the child's stdin
RESERVED_CORES = 1  # usable cores left to the HTTP process when the engine threads are sized automatically


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard.server.engine.proc.process_server"],
        stdin=subprocess.PIPE,
        env=env,
        # Its own session: a terminal's Ctrl-C goes to the HTTP process, which stops it in order.
        start_new_session=True,
    )


class EngineClient:
    """``Engine`` for the HTTP process: forwards to the engine process and demultiplexes its outputs."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        context: zmq.asyncio.Context,
        requests: zmq.asyncio.Socket,
        outputs: zmq.asyncio.Socket,
        socket_dir: str,
    ) -> None:
        self._process = process
        self._context = context
        self._requests = requests
        self._outputs = outputs
        self._socket_dir = socket_dir
        self._keys = itertools.count()
        self._streams: dict[int, asyncio.Queue[GenerationOutput | BaseException]] = {}
        self._embeds: dict[int, asyncio.Future[list[list[float]]]] = {}
        self._lora_calls: dict[int, asyncio.Future[None]] = {}
        self._stats = EngineStats(0, 0, 0.0, 0, 0)
        self._max_model_len = 0
        self._dead: EngineDeadError | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.died: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.threads = 0

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    async def launch(
        cls,
        config: EngineConfig,
        progress: ProgressFn,
        *,
        threads: int | None = None,
        log_level: str = "info",
        log_format: str = "json",
        load_timeout_s: float | None = None,
    ) -> EngineClient:
        """Start the engine process and wait until its engine runs (forwarding load progress)."""
        socket_dir = tempfile.mkdtemp(prefix="modelyard-engine-")  # mode 0700: only this user
        requests_addr = f"ipc://{socket_dir}/requests"
        outputs_addr = f"ipc://{socket_dir}/outputs"
        context = zmq.asyncio.Context()
        requests = ipc.unbounded_socket(context, zmq.PUSH, linger_ms=0)
        outputs = ipc.unbounded_socket(context, zmq.PULL, linger_ms=0)
        requests.bind(requests_addr)
        outputs.bind(outputs_addr)
        # One core stays with the HTTP process (parsing, detokenizing, streaming), as vLLM's CPU build
        # does: OpenMP threads that must share their cores with it stall at every barrier (measured on
        # 2 cores: 1 engine thread gave 4-8x the tok/s of 2; bench/README.md).
        # Unless a count was asked for, the engine measures which of (all cores, all less the reserved
        # one) decodes faster and keeps checking (thread_tuner.py): free cores make more threads 1.6x
        # faster, a busy neighbour makes them 10x slower. The pool is sized for the most.
        choices = thread_choices(threads, reserve=RESERVED_CORES)
        config = dataclasses.replace(config, thread_choices=choices)
        n_threads = choices[-1]
        env = {**os.environ, **thread_env(max(choices))}
        process = _spawn(env)
        client = cls(process, context, requests, outputs, socket_dir)
        log.info(
            "engine process started",
            extra={"engine_pid": process.pid, "threads": n_threads, "thread_choices": list(choices)},
        )
        spec = ipc.LaunchSpec(config, requests_addr, outputs_addr, n_threads, log_level, log_format)
        try:
            assert process.stdin is not None
            data = ipc.encode(spec)
            process.stdin.write(LAUNCH_HEADER.pack(len(data)) + data)
            process.stdin.flush()  # and keep it open: its EOF tells the engine process we are gone
            await client._await_ready(progress, load_timeout_s)
        except BaseException:
            await client.stop()
            raise
        client._tasks = [
            asyncio.create_task(client._receive(), name="engine-client-receive"),
            asyncio.create_task(client._watch(), name="engine-client-watch"),
        ]
        return client

    async def _await_ready(self, progress: ProgressFn, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if await self._outputs.poll(int(_WATCH_INTERVAL_S * 1000)):
                message = ipc.decode_from_engine(await self._outputs.recv())
                if isinstance(message, ipc.Progress):
                    progress(message.stage, message.fraction)
                elif isinstance(message, ipc.Ready):
                    self._max_model_len = message.max_model_len
                    self._stats = message.stats
                    self.threads = message.threads
                    return
                elif isinstance(message, ipc.LoadFailed):
                    raise RuntimeError(message.error)
                continue
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"the engine process exited with code {code} while loading")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the engine process did not become ready in time")

    # ----- the Engine protocol -----

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def stats(self) -> EngineStats:
        return self._stats

    async def start(self) -> None:
        """Nothing to do: ``launch`` returns a running engine."""

    async def stop(self) -> None:
        self._stopping = True
        if self._process.poll() is None:
            with contextlib.suppress(zmq.ZMQError):
                self._send(ipc.Shutdown())
            try:
                await asyncio.wait_for(asyncio.to_thread(self._process.wait), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("engine process did not stop in time; killing it", extra={"pid": self.pid})
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all(EngineDeadError("the engine stopped"))
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        self._requests.close(linger=0)
        self._outputs.close(linger=0)
        self._context.term()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        self._check_alive()
        key = next(self._keys)
        queue: asyncio.Queue[GenerationOutput | BaseException] = asyncio.Queue()
        self._streams[key] = queue
        self._send(ipc.Generate(key, request))
        outputs = OutputStream(queue)
        try:
            async for item in outputs:
                yield item
        finally:
            self._streams.pop(key, None)
            if not outputs.finished and self._dead is None and not self._stopping:
                # Closed early (client gone, stop string found): the engine frees the slot next step.
                with contextlib.suppress(zmq.ZMQError):
                    self._send(ipc.Abort(key))

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        self._check_alive()
        key = next(self._keys)
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._embeds[key] = future
        self._send(ipc.Embed(key, batch))
        try:
            return await future
        finally:
            self._embeds.pop(key, None)

    async def add_lora(self, name: str, path: str) -> None:
        await self._lora_call(ipc.LoraCall(next(self._keys), "load", name, path))

    async def remove_lora(self, name: str) -> None:
        await self._lora_call(ipc.LoraCall(next(self._keys), "unload", name))

    async def _lora_call(self, call: ipc.LoraCall) -> None:
        self._check_alive()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lora_calls[call.key] = future
        self._send(call)
        try:
            await future
        finally:
            self._lora_calls.pop(call.key, None)

    # ----- internals -----

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(str(self._dead))
        if self._stopping:
            raise EngineDeadError("the engine is stopping")

    def _send(self, message: ipc.ToEngine) -> None:
        # PUSH with no high-water mark never blocks; NOBLOCK makes sure of it.
        self._requests.send(ipc.encode(message), flags=zmq.NOBLOCK)

    async def _receive(self) -> None:
        while True:
            message = ipc.decode_from_engine(await self._outputs.recv())
            if isinstance(message, ipc.Outputs):
                for key, item in message.outputs():
                    queue = self._streams.get(key)
                    if queue is not None:
                        queue.put_nowait(item.to_exception() if isinstance(item, ipc.WireError) else item)
                if message.stats is not None:
                    self._stats = message.stats
            elif isinstance(message, ipc.EmbedResult):
                future = self._embeds.get(message.key)
                if future is not None and not future.done():
                    if isinstance(message.result, ipc.WireError):
                        future.set_exception(message.result.to_exception())
                    else:
                        future.set_result(message.result)
            elif isinstance(message, ipc.LoraReply):
                done = self._lora_calls.get(message.key)
                if done is not None and not done.done():
                    if message.error is not None:
                        done.set_exception(message.error.to_exception())
                    else:
                        done.set_result(None)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            code = self._process.poll()
            if code is None:
                continue
            if self._stopping:
                return
            reason = f"the engine process (pid {self.pid}) exited with code {code}"
            log.error("engine process died", extra={"engine_pid": self.pid, "exit_code": code})
            self._dead = EngineDeadError(reason)
            self._fail_all(self._dead)
            self._stats = EngineStats(0, 0, 0.0, self._stats.max_num_seqs, self._stats.max_queue)
            if not self.died.done():
                self.died.set_result(reason)
            return

    def _fail_all(self, error: EngineDeadError) -> None:
        for queue in self._streams.values():
            queue.put_nowait(EngineDeadError(str(error)))
        for future in self._embeds.values():
            if not future.done():
                future.set_exception(EngineDeadError(str(error)))
        for done in self._lora_calls.values():
            if not done.done():
                done.set_exception(EngineDeadError(str(error)))
