"""Merging the workers' metrics and autoscaler load into the supervisor's one answer."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from modelyard.router.worker_metrics import merge_exposition, merge_load

WORKER_0 = """\
# HELP modelyard_router_requests_total Requests answered.
# TYPE modelyard_router_requests_total counter
modelyard_router_requests_total{code="200",key="",model="m"} 3.0
# HELP modelyard_router_requests_in_flight In flight.
# TYPE modelyard_router_requests_in_flight gauge
modelyard_router_requests_in_flight{model="m"} 2.0
# HELP modelyard_router_endpoints Ready pods.
# TYPE modelyard_router_endpoints gauge
modelyard_router_endpoints{model="m",state="ready"} 4.0
# HELP modelyard_router_store_up Store reachable.
# TYPE modelyard_router_store_up gauge
modelyard_router_store_up 1.0
# HELP modelyard_router_request_duration_seconds Duration.
# TYPE modelyard_router_request_duration_seconds histogram
modelyard_router_request_duration_seconds_bucket{le="0.1",model="m"} 2.0
modelyard_router_request_duration_seconds_bucket{le="+Inf",model="m"} 3.0
modelyard_router_request_duration_seconds_count{model="m"} 3.0
modelyard_router_request_duration_seconds_sum{model="m"} 0.25
"""
WORKER_1 = """\
# HELP modelyard_router_requests_total Requests answered.
# TYPE modelyard_router_requests_total counter
modelyard_router_requests_total{code="200",key="",model="m"} 5.0
modelyard_router_requests_total{code="429",key="",model="m"} 1.0
# HELP modelyard_router_requests_in_flight In flight.
# TYPE modelyard_router_requests_in_flight gauge
modelyard_router_requests_in_flight{model="m"} 1.0
# HELP modelyard_router_endpoints Ready pods.
# TYPE modelyard_router_endpoints gauge
modelyard_router_endpoints{model="m",state="ready"} 4.0
# HELP modelyard_router_store_up Store reachable.
# TYPE modelyard_router_store_up gauge
modelyard_router_store_up 0.0
# HELP modelyard_router_request_duration_seconds Duration.
# TYPE modelyard_router_request_duration_seconds histogram
modelyard_router_request_duration_seconds_bucket{le="0.1",model="m"} 1.0
modelyard_router_request_duration_seconds_bucket{le="+Inf",model="m"} 1.0
modelyard_router_request_duration_seconds_count{model="m"} 1.0
modelyard_router_request_duration_seconds_sum{model="m"} 0.05
"""


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def test_counters_histograms_and_per_worker_gauges_add_up_shared_views_do_not() -> None:
    got = _samples(merge_exposition([WORKER_0, WORKER_1]))
    m = (("model", "m"),)
    assert got[("modelyard_router_requests_total", (("code", "200"), ("key", ""), *m))] == 8
    assert got[("modelyard_router_requests_total", (("code", "429"), ("key", ""), *m))] == 1
    assert got[("modelyard_router_requests_in_flight", m)] == 3
    assert got[("modelyard_router_endpoints", (*m, ("state", "ready")))] == 4  # the same pods, seen twice
    assert got[("modelyard_router_store_up", ())] == 0  # one worker cannot reach the store
    assert got[("modelyard_router_request_duration_seconds_bucket", (("le", "0.1"), *m))] == 3
    assert got[("modelyard_router_request_duration_seconds_count", m)] == 4
    assert got[("modelyard_router_request_duration_seconds_sum", m)] == 0.3


def test_the_merged_text_keeps_help_and_type_once_per_family() -> None:
    text = merge_exposition([WORKER_0, WORKER_1]).decode()
    assert text.count("# TYPE modelyard_router_requests_total counter") == 1
    assert text.count("# HELP modelyard_router_store_up Store reachable.") == 1
    assert merge_exposition([]) == b""


def test_autoscaler_load_adds_each_models_counts() -> None:
    a = [{"name": "m", "source": "ns/m", "inFlight": 2, "started": 10, "held": 0}]
    b = [
        {"name": "m", "source": "ns/m", "inFlight": 1, "started": 7, "held": 3},
        {"name": "n", "source": "ns/n", "inFlight": 0, "started": 1, "held": 0},
    ]
    assert merge_load([a, b]) == [
        {"name": "m", "source": "ns/m", "inFlight": 3, "started": 17, "held": 3},
        {"name": "n", "source": "ns/n", "inFlight": 0, "started": 1, "held": 0},
    ]
