"""The router's own adders count exactly as prometheus_client's ``inc`` and ``observe`` do."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelyard.router.metrics import LATENCY_BUCKETS, Observe, RouterMetrics, adder

# On a bucket's bound, between bounds, below the first and past the last.
AMOUNTS = (0.0, 0.001, 0.005, 0.0050001, 0.1, 2.5, 7.0, 320.0, 1e6)


def test_observe_fills_the_same_buckets_as_histogram_observe() -> None:
    registry = CollectorRegistry()
    ours = Histogram("ours", "", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    theirs = Histogram("theirs", "", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    observe = Observe.of(ours.labels("m"))
    for amount in AMOUNTS:
        observe(amount)
        theirs.labels("m").observe(amount)
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if not line.startswith("#") and "_created" not in line]
    ours_lines = sorted(line.removeprefix("ours") for line in lines if line.startswith("ours_"))
    theirs_lines = sorted(line.removeprefix("theirs") for line in lines if line.startswith("theirs_"))
    assert ours_lines == theirs_lines
    # 0, 0.001 and 0.005 itself
    assert registry.get_sample_value("ours_bucket", {"model": "m", "le": "0.005"}) == 3


def test_adder_counts_on_the_child() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "", ["model"], registry=registry)
    add = adder(counter.labels("m"))
    add(1)
    add(2.5)
    assert registry.get_sample_value("c_total", {"model": "m"}) == 3.5


def test_router_series_reach_the_registry() -> None:
    metrics = RouterMetrics()
    metrics.requests_of("m", 200, "")(1)
    series = metrics.series("m")
    metrics.in_flight_now["m"] = 1  # the proxy's count: the gauge reads it when scraped
    series.duration(0.02)
    prompt, completion = metrics.tokens_of("m", "")
    prompt(5)
    completion(7)
    r = metrics.registry
    assert (
        r.get_sample_value("modelyard_router_requests_total", {"model": "m", "code": "200", "key": ""}) == 1
    )
    assert r.get_sample_value("modelyard_router_requests_in_flight", {"model": "m"}) == 1
    metrics.in_flight_now["m"] = 0
    assert r.get_sample_value("modelyard_router_requests_in_flight", {"model": "m"}) == 0
    duration = "modelyard_router_request_duration_seconds"
    assert r.get_sample_value(f"{duration}_bucket", {"model": "m", "le": "0.01"}) == 0
    assert r.get_sample_value(f"{duration}_bucket", {"model": "m", "le": "0.025"}) == 1
    assert r.get_sample_value("modelyard_router_prompt_tokens_total", {"model": "m", "key": ""}) == 5
    assert r.get_sample_value("modelyard_router_completion_tokens_total", {"model": "m", "key": ""}) == 7


def test_a_models_in_flight_gauge_exists_at_zero_before_its_first_request() -> None:
    metrics = RouterMetrics()
    metrics.init_model("m")
    assert metrics.registry.get_sample_value("modelyard_router_requests_in_flight", {"model": "m"}) == 0
