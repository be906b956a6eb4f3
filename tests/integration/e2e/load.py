"""A bounded load of streaming SDK requests: N workers, each sending one stream after another until stopped.

A request counts as failed when the SDK raises (HTTP error, or an error event inside the stream) or the
stream ends without a finish_reason (cut short).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import openai


@dataclass
class Load:
    base_url: str
    model: str
    workers: int
    max_tokens: int = 48
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 120) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _worker(self, index: int) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=240)
        n = 0
        while not self._stop.is_set():
            n += 1
            request_id = f"load-{index}-{n}-{time.monotonic_ns()}"
            finished = False
            try:
                with client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": f"worker {index} request {n}"}],
                    max_tokens=self.max_tokens,
                    stream=True,
                    extra_headers={"x-request-id": request_id},
                ) as chunks:
                    for chunk in chunks:
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finished = True
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{request_id}: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if finished:
                    self.ok += 1
                    self.request_ids.append(request_id)
                else:
                    self.failures.append(f"{request_id}: stream ended without a finish_reason")


def served_by(logs: dict[str, str], request_ids: list[str]) -> Counter[str]:
    """How many of ``request_ids`` each pod's log shows (pod name -> count)."""
    counts: Counter[str] = Counter()
    wanted = set(request_ids)
    for pod, text in logs.items():
        for line in text.splitlines():
            marker = "request_id="
            if marker in line and line.rsplit(marker, 1)[1].split()[0] in wanted:
                counts[pod] += 1
    return counts
