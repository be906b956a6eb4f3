"""The vLLM v1 request-phase histograms, parameter histograms, ``iteration_tokens_total`` and
``cache_config_info``, fed the way the serving layer feeds them: engine outputs carrying engine events."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from modelyard.server.engine.core.step_tokens import StepTokens
from modelyard.server.engine.types import EngineEvent, EngineStats, GenerationOutput
from modelyard.server.metrics import CacheInfo, ServerMetrics, metric_groups

MODEL = "m"
LABELS = {"model_name": MODEL, "engine": "0"}


def _stats(**kw: object) -> EngineStats:
    base: dict[str, object] = {
        "num_running": 1,
        "num_waiting": 2,
        "kv_cache_usage": 0.5,
        "max_num_seqs": 8,
        "max_queue": 8,
        "kv_blocks_total": 40,
        "block_size": 16,
    }
    return EngineStats(**(base | kw))  # type: ignore[arg-type]


def _samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return _samples(metrics)[(name, frozenset((LABELS | labels).items()))]


def test_phases_come_from_engine_events_and_the_outputs() -> None:
    metrics = ServerMetrics(MODEL, 512, lambda: None)
    tracker = metrics.track(10, max_tokens=5)
    start = tracker.start
    events = (EngineEvent("queued", start + 0.5), EngineEvent("scheduled", start + 2.0))
    tracker.on_output(GenerationOutput((1,), num_generated_tokens=1, num_cached_tokens=4, events=events))
    tracker.first_token = start + 3.0  # pin the serving-side clock readings
    tracker.on_output(GenerationOutput((2,), num_generated_tokens=2))
    tracker.on_output(GenerationOutput((), finish_reason="stop", events=(EngineEvent("preempted", start),)))
    tracker.last_output = start + 7.0
    tracker.finish("stop", 2)

    assert _value(metrics, "vllm:request_queue_time_seconds_sum") == 1.5
    assert _value(metrics, "vllm:request_prefill_time_seconds_sum") == 1.0
    assert _value(metrics, "vllm:request_decode_time_seconds_sum") == 4.0
    assert _value(metrics, "vllm:request_inference_time_seconds_sum") == 5.0
    assert _value(metrics, "vllm:request_time_per_output_token_seconds_sum") == 4.0
    assert _value(metrics, "vllm:request_queue_time_seconds_bucket", le="2.0") == 1
    assert _value(metrics, "vllm:request_queue_time_seconds_bucket", le="1.0") == 0
    assert _value(metrics, "vllm:request_num_preemptions_sum") == 1
    assert _value(metrics, "vllm:request_prefill_kv_computed_tokens_sum") == 6
    assert _value(metrics, "vllm:prompt_tokens_cached_total") == 4
    assert _value(metrics, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == 4
    assert _value(metrics, "vllm:prompt_tokens_by_source_total", source="local_compute") == 6
    assert _value(metrics, "vllm:prompt_tokens_cached_by_source_total", source="device") == 4
    assert _value(metrics, "vllm:request_params_max_tokens_sum") == 5
    assert _value(metrics, "vllm:request_success_total", finished_reason="stop") == 1


def test_a_request_that_never_reached_the_engine_has_no_phases() -> None:
    metrics = ServerMetrics(MODEL, 512, lambda: None)
    metrics.track(3).finish("abort", 0)
    assert _value(metrics, "vllm:request_queue_time_seconds_count") == 0
    assert _value(metrics, "vllm:request_prefill_time_seconds_count") == 0
    assert _value(metrics, "vllm:e2e_request_latency_seconds_count") == 1
    assert _value(metrics, "vllm:request_success_total", finished_reason="abort") == 1


def test_n_and_the_longest_choice_are_observed_once_per_prompt() -> None:
    metrics = ServerMetrics(MODEL, 512, lambda: None)
    a, b = [1, 2], [3]
    groups = metric_groups(metrics, [a, a, a, b])  # n=3 on one prompt, n=1 on the other
    assert groups[0] is groups[1] is groups[2] is not groups[3]
    for group, generated in zip(groups, (4, 9, 2, 7), strict=True):
        metrics.track(2, 16, group).finish("length", generated)
    assert _value(metrics, "vllm:request_params_n_count") == 2
    assert _value(metrics, "vllm:request_params_n_sum") == 4
    assert _value(metrics, "vllm:request_max_num_generation_tokens_count") == 2
    assert _value(metrics, "vllm:request_max_num_generation_tokens_sum") == 9 + 7


def test_iteration_tokens_buckets_are_exact_from_the_engine_classes() -> None:
    steps = StepTokens()
    for tokens in (1, 1, 4, 8, 9, 16, 17, 300):
        steps.record(tokens)
    stats = _stats(step_tokens_log2=steps.counts(), step_tokens_sum=steps.total)
    metrics = ServerMetrics(MODEL, 512, lambda: stats)
    expected = {"1.0": 2, "8.0": 4, "16.0": 6, "32.0": 7, "256.0": 7, "512.0": 8, "+Inf": 8}
    for le, count in expected.items():
        assert _value(metrics, "vllm:iteration_tokens_total_bucket", le=le) == count, le
    assert _value(metrics, "vllm:iteration_tokens_total_sum") == 356
    assert _value(metrics, "vllm:iteration_tokens_total_count") == 8


def test_cache_config_info_carries_block_size_and_count() -> None:
    metrics = ServerMetrics(MODEL, 512, _stats, CacheInfo(512, enable_prefix_caching=False))
    (info,) = [labels for (name, labels) in _samples(metrics) if name == "vllm:cache_config_info"]
    labels = dict(info)
    assert labels["block_size"] == "16"
    assert labels["num_gpu_blocks"] == "40"
    assert labels["enable_prefix_caching"] == "False"
    assert labels["engine"] == "0"
    assert labels["kv_cache_size_tokens"] == "640"
    assert "model_name" not in labels  # as vLLM: the info gauge has the config's labels only


def test_gauges_carry_vllm_labels_and_waiting_by_reason() -> None:
    metrics = ServerMetrics(MODEL, 512, _stats)
    assert _value(metrics, "vllm:num_requests_waiting") == 2
    assert _value(metrics, "vllm:num_requests_waiting_by_reason", reason="capacity") == 2
    assert _value(metrics, "vllm:num_requests_waiting_by_reason", reason="deferred") == 0
    assert _samples(metrics)[("modelyard_max_num_seqs", frozenset({("model_name", MODEL)}))] == 8
