"""Prometheus metrics under vLLM's names, labelled ``model_name`` and ``engine`` as vLLM v1 labels them.

Dashboards, KEDA triggers and inference gateways written for vLLM read these unchanged, so names,
label keys and bucket layouts follow vLLM (``vllm/v1/metrics/loggers.py``; ``engine`` is the engine
index, always "0": one engine per server); only our additions use the ``modelyard_`` prefix (labelled
``model_name`` alone). Everything lives in a registry owned by the app (no global default
registry, so tests can build many apps). Engine gauges are read from ``engine.stats()`` at scrape
time rather than updated on every step. ``finished_reason`` values are created up front so the
series exist at 0 before the first request finishes that way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from modelyard.server.cache_config_info import cache_config_labels
from modelyard.server.engine.types import EngineEvent, EngineStats, GenerationOutput

if TYPE_CHECKING:
    from modelyard.server.tracing import RequestTrace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort", "error")
ENGINE_INDEX = "0"
VLLM_LABELS = ["model_name", "engine"]

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
# vLLM's "request_latency" family: end to end and the request phases (queue, prefill, decode, inference).
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


ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
REQUEST_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
REQUEST_NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


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


@dataclass(frozen=True)
class CacheInfo:
    """What ``vllm:cache_config_info`` reports besides the engine's block size and count."""

    max_model_len: int
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9


class _EngineGauges(Collector):
    def __init__(
        self, model_name: str, stats: Callable[[], EngineStats | None], cache: CacheInfo | None = None
    ) -> None:
        self._model_name = model_name
        self._stats = stats
        self._cache = cache
        self._vllm = [model_name, ENGINE_INDEX]

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
        ):
            gauge = GaugeMetricFamily(name, doc, labels=VLLM_LABELS)
            gauge.add_metric(self._vllm, float(value))
            yield gauge
        # We never defer a waiting request (no LoRA budget, no KV transfer): all wait for capacity.
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason.",
            labels=[*VLLM_LABELS, "reason"],
        )
        by_reason.add_metric([*self._vllm, "capacity"], float(stats.num_waiting))
        by_reason.add_metric([*self._vllm, "deferred"], 0.0)
        yield by_reason
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
        yield from self._cache_config(stats)
        yield self._iteration_tokens(stats)
        for name, doc, value in (
            ("modelyard_max_num_seqs", "Configured bound of the running batch.", stats.max_num_seqs),
            ("modelyard_max_queue", "Configured bound of the waiting queue.", stats.max_queue),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric([self._model_name], float(value))
            yield gauge
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
            ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", stats.spec_decode_num_drafts),
            (
                "vllm:spec_decode_num_draft_tokens",
                "Number of draft tokens.",
                stats.spec_decode_num_draft_tokens,
            ),
            (
                "vllm:spec_decode_num_accepted_tokens",
                "Number of accepted tokens.",
                stats.spec_decode_num_accepted_tokens,
            ),
        ):
            counter = CounterMetricFamily(name, doc, labels=VLLM_LABELS)
            counter.add_metric(self._vllm, float(count))
            yield counter

    def _cache_config(self, stats: EngineStats) -> Iterator[Metric]:
        if self._cache is None or not stats.block_size:
            return
        labels = cache_config_labels(
            block_size=stats.block_size,
            num_blocks=stats.kv_blocks_total,
            max_model_len=self._cache.max_model_len,
            enable_prefix_caching=self._cache.enable_prefix_caching,
            gpu_memory_utilization=self._cache.gpu_memory_utilization,
            engine=ENGINE_INDEX,
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(labels)
        )
        info.add_metric(list(labels.values()), 1.0)
        yield info

    def _iteration_tokens(self, stats: EngineStats) -> Metric:
        # The engine counts steps in power-of-two classes; every vLLM bucket bound is a power of two.
        cumulative: list[tuple[str, float]] = []
        counts = stats.step_tokens_log2
        for bound in ITERATION_TOKENS_BUCKETS:
            k = (bound - 1).bit_length()
            cumulative.append((str(float(bound)), float(sum(counts[: k + 1]))))
        cumulative.append(("+Inf", float(sum(counts))))
        family = HistogramMetricFamily(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            labels=VLLM_LABELS,
        )
        family.add_metric(self._vllm, cumulative, float(stats.step_tokens_sum))
        return family


class ServerMetrics:
    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        stats: Callable[[], EngineStats | None],
        cache: CacheInfo | None = None,
    ) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        labels = VLLM_LABELS
        reg = self.registry

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.prompt_tokens_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        # vLLM's sources and cache tiers; ours computes locally or hits the local (device) prefix cache.
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            [*labels, "source"],
            registry=reg,
        )
        self.prompt_by_source = by_source
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them.",
            [*labels, "source"],
            registry=reg,
        )
        self.prompt_cached_by_source = cached_by_source
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=reg,
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (same as inter-token latency).",
            ITL_BUCKETS,
        )
        self.request_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", E2E_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            E2E_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            E2E_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            E2E_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            E2E_BUCKETS,
        )
        self.request_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            REQUEST_NUM_PREEMPTIONS_BUCKETS,
        )
        token_buckets = _token_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.request_prefill_kv_computed = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )
        self.request_max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.request_params_n = histogram(
            "vllm:request_params_n", "Histogram of the n request parameter.", REQUEST_PARAMS_N_BUCKETS
        )
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )
        reg.register(_EngineGauges(model_name, stats, cache))
        self._series: dict[str, RequestSeries] = {}
        self.base = self.series(model_name)

    def series(self, model_name: str) -> RequestSeries:
        """The per-request series labelled ``model_name``: the base model's, or a LoRA adapter's."""
        found = self._series.get(model_name)
        if found is None:
            found = self._series[model_name] = RequestSeries(self, model_name)
        return found

    def success(self, finished_reason: str) -> None:
        self.base.success(finished_reason)

    def track(
        self,
        num_prompt_tokens: int,
        max_tokens: int = 0,
        group: RequestGroup | None = None,
        trace: RequestTrace | None = None,
        model_name: str | None = None,
    ) -> RequestTracker:
        """One engine request; ``group`` joins the choices of one API request (``n``); ``trace`` is that
        request's span when tracing is on; ``model_name`` (a LoRA adapter's) labels its series."""
        series = self.series(model_name or self.model_name)
        return RequestTracker(series, num_prompt_tokens, max_tokens=max_tokens, group=group, trace=trace)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestSeries:
    """One served name's children of the per-request metric families (labels ``model_name``, ``engine``)."""

    def __init__(self, m: ServerMetrics, model_name: str) -> None:
        values = (model_name, ENGINE_INDEX)
        self._values = values
        self._success = m._success
        for reason in FINISHED_REASONS:
            m._success.labels(*values, reason)
        self.prompt_tokens = m.prompt_tokens.labels(*values)
        self.generation_tokens = m.generation_tokens.labels(*values)
        self.prompt_tokens_cached = m.prompt_tokens_cached.labels(*values)
        self.prompt_computed = m.prompt_by_source.labels(*values, "local_compute")
        self.prompt_local_hit = m.prompt_by_source.labels(*values, "local_cache_hit")
        m.prompt_by_source.labels(*values, "external_kv_transfer")
        self.prompt_cached_device = m.prompt_cached_by_source.labels(*values, "device")
        for tier in ("host", "p2p", "disk", "external_unspecified"):
            m.prompt_cached_by_source.labels(*values, tier)
        self.ttft = m.ttft.labels(*values)
        self.itl = m.itl.labels(*values)
        self.tpot = m.tpot.labels(*values)
        self.request_tpot = m.request_tpot.labels(*values)
        self.e2e = m.e2e.labels(*values)
        self.queue_time = m.queue_time.labels(*values)
        self.inference_time = m.inference_time.labels(*values)
        self.prefill_time = m.prefill_time.labels(*values)
        self.decode_time = m.decode_time.labels(*values)
        self.request_preemptions = m.request_preemptions.labels(*values)
        self.request_prompt_tokens = m.request_prompt_tokens.labels(*values)
        self.request_generation_tokens = m.request_generation_tokens.labels(*values)
        self.request_prefill_kv_computed = m.request_prefill_kv_computed.labels(*values)
        self.request_max_generation_tokens = m.request_max_generation_tokens.labels(*values)
        self.request_params_n = m.request_params_n.labels(*values)
        self.request_params_max_tokens = m.request_params_max_tokens.labels(*values)

    def success(self, finished_reason: str) -> None:
        self._success.labels(*self._values, finished_reason).inc()

    def group(self, n: int) -> RequestGroup:
        """The ``n`` engine requests that answer one prompt (observed as vLLM's ``request_params_n``)."""
        self.request_params_n.observe(n)
        return RequestGroup(self, n)


@dataclass
class RequestGroup:
    """The choices of one prompt: the longest of them is vLLM's ``request_max_num_generation_tokens``."""

    metrics: RequestSeries
    pending: int
    longest: int = 0

    def finished(self, num_generated: int) -> None:
        self.longest = max(self.longest, num_generated)
        self.pending -= 1
        if self.pending == 0:
            self.metrics.request_max_generation_tokens.observe(self.longest)


def metric_groups(
    metrics: ServerMetrics, prompts: Sequence[Sequence[int]], model_name: str | None = None
) -> list[RequestGroup]:
    """One group per distinct prompt object: the ``n`` choices of a prompt share its token list."""
    series = metrics.series(model_name or metrics.model_name)
    by_prompt: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(id(prompt), []).append(index)
    groups: list[RequestGroup | None] = [None] * len(prompts)
    for indexes in by_prompt.values():
        group = series.group(len(indexes))
        for index in indexes:
            groups[index] = group
    return [g for g in groups if g is not None]


@dataclass
class RequestTracker:
    """Timings of one engine request, recorded when it finishes (or is aborted).

    The phases follow vLLM v1 (``IterationStats.update_from_finished_request``): queue from the first
    ``queued`` to the first ``scheduled`` engine event, prefill from there to the first token, decode
    from the first token to the last output, inference from scheduled to the last output; preemptions
    stay inside the phase they interrupted. Engine events use the host's monotonic clock, as we do.
    """

    metrics: RequestSeries
    num_prompt_tokens: int
    max_tokens: int = 0
    group: RequestGroup | None = None
    trace: RequestTrace | None = None
    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    last_output: float | None = None
    queued: float | None = None
    scheduled: float | None = None
    num_preemptions: int = 0
    num_cached_tokens: int = 0
    num_generated: int = 0
    done: bool = False

    def on_output(self, out: GenerationOutput) -> None:
        if out.events:
            self.on_events(out.events)
            if self.trace is not None:
                self.trace.on_events(out.events)
        self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
        self.on_tokens(len(out.token_ids))
        self.last_output = time.monotonic()

    def on_events(self, events: Sequence[EngineEvent]) -> None:
        for event in events:
            if event.kind == "queued" and self.queued is None:
                self.queued = event.timestamp
            elif event.kind == "scheduled" and self.scheduled is None:
                self.scheduled = event.timestamp
            elif event.kind == "preempted":
                self.num_preemptions += 1

    def on_tokens(self, count: int) -> None:
        if count <= 0:
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            self.metrics.ttft.observe(now - self.start)
            if self.trace is not None:
                self.trace.on_first_token(now)
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
        m = self.metrics
        m.e2e.observe(time.monotonic() - self.start)
        m.prompt_tokens.inc(self.num_prompt_tokens)
        m.generation_tokens.inc(num_generated)
        m.request_prompt_tokens.observe(self.num_prompt_tokens)
        m.request_generation_tokens.observe(num_generated)
        m.success(finished_reason)
        if self.max_tokens:
            m.request_params_max_tokens.observe(self.max_tokens)
        if self.queued is not None:  # an engine request (embeddings have no phases)
            m.prompt_tokens_cached.inc(self.num_cached_tokens)
            m.prompt_local_hit.inc(self.num_cached_tokens)
            m.prompt_cached_device.inc(self.num_cached_tokens)
            m.prompt_computed.inc(self.num_prompt_tokens - self.num_cached_tokens)
            m.request_prefill_kv_computed.observe(self.num_prompt_tokens - self.num_cached_tokens)
            m.request_preemptions.observe(self.num_preemptions)
            self._observe_phases()
        if self.group is not None:
            self.group.finished(num_generated)
        if self.trace is not None:
            self.trace.finished(finished_reason, num_generated)

    def _observe_phases(self) -> None:
        m = self.metrics
        if self.queued is None or self.scheduled is None:
            return  # left before the engine admitted it: no phase happened
        m.queue_time.observe(max(0.0, self.scheduled - self.queued))
        if self.first_token is None:
            return
        end = self.last_output or self.first_token
        m.prefill_time.observe(max(0.0, self.first_token - self.scheduled))
        decode = max(0.0, end - self.first_token)
        m.decode_time.observe(decode)
        m.inference_time.observe(max(0.0, end - self.scheduled))
        m.request_tpot.observe(decode / (self.num_generated - 1) if self.num_generated > 1 else 0.0)
