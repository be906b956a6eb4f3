"""Prometheus metrics under vLLM's names, labelled ``model_name``.

Dashboards, KEDA triggers and inference gateways written for vLLM read these unchanged, so names,
label keys and bucket layouts follow vLLM (``vllm/v1/metrics/loggers.py``); only our additions use
the ``modelyard_`` prefix. Everything lives in a registry owned by the app (no global default
registry, so tests can build many apps). Engine gauges are read from ``engine.stats()`` at scrape
time rather than updated on every step. ``finished_reason`` values are created up front so the
series exist at 0 before the first request finishes that way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.server.engine.types import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort", "error")

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


def _token_buckets(max_model_len: int) -> list[float]:
    # vLLM's 1-2-5 series up to the context length.
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return buckets
            buckets.append(float(value))
        exponent += 1


class _EngineGauges(Collector):
    def __init__(self, model_name: str, stats: Callable[[], EngineStats | None]) -> None:
        self._model_name = model_name
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:  # still loading: no engine yet, report nothing rather than fake zeros
            return
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                stats.num_running,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", stats.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", stats.kv_cache_usage),
            ("vllm:gpu_cache_usage_perc", "KV-cache usage (pre-v1 name).", stats.kv_cache_usage),
            ("modelyard_max_num_seqs", "Configured bound of the running batch.", stats.max_num_seqs),
            ("modelyard_max_queue", "Configured bound of the waiting queue.", stats.max_queue),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric([self._model_name], float(value))
            yield gauge
        if stats.max_lora:
            # vLLM's LoRA info gauge (read by the inference gateway's LoRA-affinity scorer): its value is
            # the time of the reading, its labels the adapters of the running and waiting requests.
            info = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            )
            info.add_metric(
                [
                    str(stats.max_lora),
                    ",".join(stats.waiting_lora_adapters),
                    ",".join(stats.running_lora_adapters),
                ],
                time.time(),
            )
            yield info
        if stats.engine_threads:
            # Changes when the engine re-picks its CPU thread count (a neighbour arrived or left).
            gauge = GaugeMetricFamily(
                "modelyard_engine_threads", "CPU compute threads the engine uses now.", labels=["model_name"]
            )
            gauge.add_metric([self._model_name], float(stats.engine_threads))
            yield gauge
        # vLLM v1's prefix-cache counters, in prompt tokens (exposed with the _total suffix).
        for name, doc, count in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                stats.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                stats.prefix_cache_hits,
            ),
            (
                "vllm:num_preemptions",
                "Cumulative number of preemptions from the engine.",
                stats.num_preemptions,
            ),
        ):
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric([self._model_name], float(count))
            yield counter


class ServerMetrics:
    def __init__(self, model_name: str, max_model_len: int, stats: Callable[[], EngineStats | None]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        reg = self.registry
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=reg
        )
        self._generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=reg
        )
        self._success = Counter(
            "vllm:request_success",
            "Count of finished requests by finish reason.",
            [*labels, "finished_reason"],
            registry=reg,
        )
        for reason in FINISHED_REASONS:
            self._success.labels(model_name, reason)
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=reg,
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            buckets=ITL_BUCKETS,
            registry=reg,
        )
        self._tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (same as inter-token latency).",
            labels,
            buckets=ITL_BUCKETS,
            registry=reg,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency.",
            labels,
            buckets=E2E_BUCKETS,
            registry=reg,
        )
        token_buckets = _token_buckets(max_model_len)
        self._request_prompt_tokens = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens per request.",
            labels,
            buckets=token_buckets,
            registry=reg,
        )
        self._request_generation_tokens = Histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens per request.",
            labels,
            buckets=token_buckets,
            registry=reg,
        )
        self._series: dict[str, RequestSeries] = {}
        base = self.series(model_name)
        # The base model's series, by their old names.
        self.prompt_tokens, self.generation_tokens = base.prompt_tokens, base.generation_tokens
        self.ttft, self.itl, self.tpot, self.e2e = base.ttft, base.itl, base.tpot, base.e2e
        self.request_prompt_tokens = base.request_prompt_tokens
        self.request_generation_tokens = base.request_generation_tokens
        reg.register(_EngineGauges(model_name, stats))

    def series(self, model_name: str) -> RequestSeries:
        """The per-request series labelled ``model_name`` (the base model's, or a LoRA adapter's)."""
        found = self._series.get(model_name)
        if found is None:
            found = RequestSeries(
                model_name=model_name,
                success_counter=self._success,
                prompt_tokens=self._prompt_tokens.labels(model_name),
                generation_tokens=self._generation_tokens.labels(model_name),
                ttft=self._ttft.labels(model_name),
                itl=self._itl.labels(model_name),
                tpot=self._tpot.labels(model_name),
                e2e=self._e2e.labels(model_name),
                request_prompt_tokens=self._request_prompt_tokens.labels(model_name),
                request_generation_tokens=self._request_generation_tokens.labels(model_name),
            )
            self._series[model_name] = found
        return found

    def success(self, finished_reason: str) -> None:
        self._success.labels(self.model_name, finished_reason).inc()

    def track(self, num_prompt_tokens: int, model_name: str | None = None) -> RequestTracker:
        """``model_name``: a LoRA adapter's name labels the request's series (default: the base's)."""
        return RequestTracker(self.series(model_name or self.model_name), num_prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class RequestSeries:
    """The per-request series of one model name (children of the app's metric families)."""

    model_name: str
    success_counter: Counter
    prompt_tokens: Any
    generation_tokens: Any
    ttft: Any
    itl: Any
    tpot: Any
    e2e: Any
    request_prompt_tokens: Any
    request_generation_tokens: Any

    def success(self, finished_reason: str) -> None:
        self.success_counter.labels(self.model_name, finished_reason).inc()


@dataclass
class RequestTracker:
    """Timings of one engine request, recorded when it finishes (or is aborted)."""

    metrics: RequestSeries
    num_prompt_tokens: int
    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    num_generated: int = 0
    done: bool = False

    def on_tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            self.metrics.ttft.observe(now - self.start)
            count -= 1
        elif self.last_token is not None and count > 0:
            # An output carrying several tokens spreads its gap evenly over them.
            gap = (now - self.last_token) / count
            for _ in range(count):
                self.metrics.itl.observe(gap)
                self.metrics.tpot.observe(gap)
        self.last_token = now

    def finish(self, finished_reason: str, num_generated: int) -> None:
        if self.done:
            return
        self.done = True
        self.num_generated = num_generated
        self.metrics.e2e.observe(time.monotonic() - self.start)
        self.metrics.prompt_tokens.inc(self.num_prompt_tokens)
        self.metrics.generation_tokens.inc(num_generated)
        self.metrics.request_prompt_tokens.observe(self.num_prompt_tokens)
        self.metrics.request_generation_tokens.observe(num_generated)
        self.metrics.success(finished_reason)
