"""The steady load the chaos scenarios run under: N official-SDK clients, each streaming one chat
completion after another through the router Service until stopped.

The SDK retries as it does by default (``max_retries=2``: connection errors, 408/409/429/5xx before a
stream starts); a stream cut after it started cannot be retried and counts as failed, as does one that
ends without a ``finish_reason``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import openai


@dataclass(frozen=True)
class Failure:
    request_id: str
    at: float  # time.monotonic()
    started_stream: bool  # the first chunk had arrived: cut mid-stream, not refused
    error: str


@dataclass
class StreamLoad:
    base_url: str
    model: str
    workers: int = 20
    max_tokens: int = 64
    max_retries: int = 2
    ok: int = 0
    failures: list[Failure] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StreamLoad:
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 180) -> None:
        """Lets every stream in flight finish, then returns."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def wait_ok(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` more streams completed: the load is really flowing."""
        target = self.ok + count
        deadline = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"load: {self.ok}/{target} streams ok after {timeout}s; {self.failures[-3:]}"
                )
            time.sleep(0.1)

    def _worker(self, index: int) -> None:
        client = openai.OpenAI(
            base_url=self.base_url, api_key="unused", max_retries=self.max_retries, timeout=240
        )
        n = 0
        while not self._stop.is_set():
            n += 1
            request_id = f"chaos-{index}-{n}-{time.monotonic_ns()}"
            started = finished = False
            try:
                with client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": f"worker {index} request {n}"}],
                    max_tokens=self.max_tokens,
                    temperature=0,
                    stream=True,
                    extra_headers={"x-request-id": request_id},
                ) as chunks:
                    for chunk in chunks:
                        started = True
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finished = True
            except Exception as exc:
                failure = Failure(request_id, time.monotonic(), started, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.failures.append(failure)
                continue
            with self._lock:
                if finished:
                    self.ok += 1
                else:
                    self.failures.append(Failure(request_id, time.monotonic(), started, "no finish_reason"))
