"""Generate the chart's Grafana dashboards (dashboards/*.json) from one table of panels.

    python charts/modelyard/hack/dashboards.py      # rewrites charts/modelyard/dashboards/*.json

The JSON is committed (the chart ships it through .Files.Glob); tests/unit/chart fails when it differs from
this script's output, so edit here, not in the JSON. Metric names are those of the router
(modelyard.router.metrics), the model server (modelyard.server.metrics, vLLM's names labelled model_name)
and the operator (modelyard.operator.metrics). The router's ``model`` label and the server's ``model_name``
label both carry the canonical served name, which is what the ``model`` variable selects.

Model-server panels serve every engine: each query names vLLM's metric (which vLLM exports and the
built-in server copies) ``or`` the same quantity under another engine's name (``ENGINE_NAMES``:
SGLang's ``sglang:*``, and vLLM's renamed per-request TPOT). A pod exports only its own engine's names,
so the alternatives never overlap. docs/observability.md lists which panels each engine fills.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[1] / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SCHEMA_VERSION = 39


@dataclass
class Target:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    w: int = 12
    h: int = 8
    max: float | None = None
    stack: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# vLLM's name -> the same quantity in other engines' exports (same label `model_name` = served name).
ENGINE_NAMES: dict[str, list[str]] = {
    "vllm:num_requests_running": ["sglang:num_running_reqs"],
    "vllm:num_requests_waiting": ["sglang:num_queue_reqs"],
    "vllm:kv_cache_usage_perc": ["sglang:token_usage"],
    "vllm:time_to_first_token_seconds": ["sglang:time_to_first_token_seconds"],
    # vLLM >= 0.11 exports the per-request mean as request_time_per_output_token_seconds.
    "vllm:time_per_output_token_seconds": [
        "vllm:request_time_per_output_token_seconds",
        "sglang:time_per_output_token_seconds",
    ],
    "vllm:inter_token_latency_seconds": ["sglang:inter_token_latency_seconds"],
    "vllm:e2e_request_latency_seconds": ["sglang:e2e_request_latency_seconds"],
    "vllm:prompt_tokens_total": ["sglang:prompt_tokens_total"],
    "vllm:generation_tokens_total": ["sglang:generation_tokens_total"],
}


def names(metric: str) -> list[str]:
    return [metric, *ENGINE_NAMES.get(metric, [])]


def any_engine(metric: str, sel: str, rate: bool = False) -> str:
    """``metric{sel}`` (or its rate) under every engine's name, joined with ``or``."""
    selector = f"{{{sel}}}" if sel else ""
    parts = [f"rate({n}{selector}[{RATE}])" if rate else f"{n}{selector}" for n in names(metric)]
    return " or ".join(parts)


def quantiles(metric: str, by: str, sel: str) -> list[Target]:
    """p50/p95/p99 of a histogram, per ``by`` label (empty: one series)."""
    group = f"le, {by}" if by else "le"
    buckets = " or ".join(any_engine(f"{n}_bucket", sel, rate=True) for n in names(metric))
    return [
        Target(
            f"histogram_quantile({q}, sum by ({group}) ({buckets}))",
            f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.max is not None:
        defaults["max"] = panel.max
        defaults["min"] = 0
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
    out: dict[str, Any] = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.h, "w": panel.w, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": (
            {
                "legend": {
                    "displayMode": "table",
                    "placement": "bottom",
                    "calcs": ["mean", "max", "lastNotNull"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
            if panel.kind == "timeseries"
            else {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
                "textMode": "auto",
            }
        ),
        "targets": [
            {
                "datasource": DS,
                "expr": t.expr,
                "legendFormat": t.legend,
                "refId": chr(ord("A") + i),
                "range": True,
            }
            for i, t in enumerate(panel.targets)
        ],
    }
    out.update(panel.extra)
    return out


def _row(title: str, pid: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
    }


def _variables(model_multi: bool) -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            {
                "name": "model",
                "label": "Model",
                "type": "query",
                "datasource": DS,
                "definition": "label_values(modelyard_router_requests_in_flight, model)",
                "query": {
                    "query": "label_values(modelyard_router_requests_in_flight, model)",
                    "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    "qryType": 1,
                },
                "regex": "/^(?!__unknown__$).*/",
                "refresh": 2,
                "sort": 1,
                "multi": model_multi,
                "includeAll": model_multi,
                "allValue": ".*" if model_multi else None,
                "current": {},
                "hide": 0,
                "options": [],
            },
        ]
    }


def _dashboard(
    uid: str, title: str, description: str, layout: list[Any], model_multi: bool
) -> dict[str, Any]:
    """``layout`` is a list of rows: a str starts a titled row; a list of Panels fills 24 columns."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for item in layout:
        if isinstance(item, str):
            panels.append(_row(item, pid, y))
            pid, y = pid + 1, y + 1
            continue
        x, height = 0, 0
        for panel in item:
            panels.append(_panel_json(panel, pid, x, y))
            pid, x, height = pid + 1, x + panel.w, max(height, panel.h)
        y += height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["modelyard", "llm"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "title": "Modelyard",
                "type": "dashboards",
                "tags": ["modelyard"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": _variables(model_multi),
        "panels": panels,
    }


# ---- Fleet overview -----------------------------------------------------------------------------------
M = 'model=~"$model"'  # fleet: multi-select model filter
R = f'{M}, model!="__unknown__"'
FN = 'model_name=~"$model"'


def fleet() -> dict[str, Any]:
    layout: list[Any] = [
        [
            Panel(
                "Requests/s",
                "All requests the router answered.",
                unit="reqps",
                kind="stat",
                w=4,
                h=4,
                targets=[Target(f"sum(rate(modelyard_router_requests_total{{{M}}}[{RATE}]))", "requests/s")],
            ),
            Panel(
                "Error ratio",
                "Share of router answers with a 5xx status.",
                unit="percentunit",
                kind="stat",
                w=4,
                h=4,
                targets=[
                    Target(
                        f'sum(rate(modelyard_router_requests_total{{{M}, code=~"5.."}}[{RATE}])) '
                        f"/ sum(rate(modelyard_router_requests_total{{{M}}}[{RATE}]))",
                        "5xx ratio",
                    )
                ],
            ),
            Panel(
                "Models routed",
                "Models in the router's routing table.",
                kind="stat",
                w=4,
                h=4,
                targets=[Target("max(modelyard_router_models)", "models")],
            ),
            Panel(
                "Ready pods",
                "Model-server pods the routers can send traffic to.",
                kind="stat",
                w=4,
                h=4,
                targets=[
                    Target(
                        f'sum(max by (model) (modelyard_router_endpoints{{{M}, state="ready"}}))',
                        "ready pods",
                    )
                ],
            ),
            Panel(
                "In flight",
                "Requests being proxied now.",
                kind="stat",
                w=4,
                h=4,
                targets=[Target(f"sum(modelyard_router_requests_in_flight{{{M}}})", "in flight")],
            ),
            Panel(
                "Held",
                "Requests waiting for a ready pod (scale from zero, all pods down).",
                kind="stat",
                w=4,
                h=4,
                targets=[Target(f"sum(modelyard_router_requests_held{{{M}}})", "held")],
            ),
        ],
        "Traffic",
        [
            Panel(
                "Requests/s by model",
                "Router answers per second, per model.",
                unit="reqps",
                stack=True,
                targets=[
                    Target(
                        f"sum by (model) (rate(modelyard_router_requests_total{{{M}}}[{RATE}]))", "{{model}}"
                    )
                ],
            ),
            Panel(
                "Errors/s by model and status",
                "Router answers with a 4xx or 5xx status. `__unknown__` "
                "collects requests for models that do not exist.",
                unit="reqps",
                targets=[
                    Target(
                        f"sum by (model, code) (rate(modelyard_router_requests_total{{{M}, "
                        f'code=~"[45].."}}[{RATE}]))',
                        "{{model}} {{code}}",
                    )
                ],
            ),
        ],
        [
            Panel(
                "Request latency by model",
                "End-to-end latency at the router (arrival to last byte).",
                unit="s",
                targets=quantiles("modelyard_router_request_duration_seconds", "model", R),
            ),
            Panel(
                "Time to first token by model",
                "Streaming requests: arrival at the router to the first chunk relayed.",
                unit="s",
                targets=quantiles("modelyard_router_time_to_first_token_seconds", "model", R),
            ),
        ],
        [
            Panel(
                "Tokens/s by model",
                "Prompt and completion tokens from the backends' `usage`.",
                unit="short",
                targets=[
                    Target(
                        f"sum by (model) (rate(modelyard_router_prompt_tokens_total{{{M}}}[{RATE}]))",
                        "prompt {{model}}",
                    ),
                    Target(
                        f"sum by (model) (rate(modelyard_router_completion_tokens_total{{{M}}}[{RATE}]))",
                        "completion {{model}}",
                    ),
                ],
            ),
            Panel(
                "In-flight and held requests by model",
                "In flight: proxied now. Held: waiting for a ready pod, answered 503 after the hold bound.",
                targets=[
                    Target(
                        f"sum by (model) (modelyard_router_requests_in_flight{{{R}}})", "in flight {{model}}"
                    ),
                    Target(f"sum by (model) (modelyard_router_requests_held{{{R}}})", "held {{model}}"),
                ],
            ),
        ],
        "Model servers",
        [
            Panel(
                "Running requests (batch) by model",
                "Sequences in the running batch, summed over pods.",
                w=8,
                targets=[
                    Target(
                        f"sum by (model_name) ({any_engine('vllm:num_requests_running', FN)})",
                        "{{model_name}}",
                    )
                ],
            ),
            Panel(
                "Waiting requests (queue) by model",
                "Requests queued in the servers.",
                w=8,
                targets=[
                    Target(
                        f"sum by (model_name) ({any_engine('vllm:num_requests_waiting', FN)})",
                        "{{model_name}}",
                    )
                ],
            ),
            Panel(
                "KV cache usage by model",
                "Highest KV-cache usage over a model's pods.",
                unit="percentunit",
                max=1,
                w=8,
                targets=[
                    Target(
                        f"max by (model_name) ({any_engine('vllm:kv_cache_usage_perc', FN)})",
                        "{{model_name}}",
                    )
                ],
            ),
        ],
        [
            Panel(
                f"Server {title} p95 by model",
                f"{doc} (vLLM v1's request-phase histogram; built-in and vLLM engines).",
                unit="s",
                w=8,
                targets=[
                    Target(
                        "histogram_quantile(0.95, sum by (le, model_name) "
                        f"(rate(vllm:request_{phase}_time_seconds_bucket{{{FN}}}[{RATE}])))",
                        "{{model_name}}",
                    )
                ],
            )
            for phase, title, doc in (
                ("queue", "time in queue", "Waiting in the engine's queue before admission"),
                ("prefill", "prefill time", "Admission to first token"),
                ("decode", "decode time", "First to last token"),
            )
        ],
        "Tenants",
        [
            Panel(
                "Tokens/s by key",
                "Prompt + completion tokens per second, per API-key name (from backends' `usage`).",
                stack=True,
                w=6,
                targets=[
                    Target(
                        f"sum by (key) (rate(modelyard_router_prompt_tokens_total{{{M}}}[{RATE}]))"
                        f" + sum by (key) (rate(modelyard_router_completion_tokens_total{{{M}}}[{RATE}]))",
                        "{{key}}",
                    )
                ],
            ),
            Panel(
                "429s/s by key and reason",
                "Requests the router refused: rate-limit (per-minute or concurrency limit), budget (daily "
                "or monthly budget spent), queue-full (shed from a model's full queue).",
                unit="reqps",
                stack=True,
                w=6,
                targets=[
                    Target(
                        f"sum by (key, reason) (rate(modelyard_router_rejections_total{{{M}}}[{RATE}]))",
                        "{{key}} {{reason}}",
                    )
                ],
            ),
            Panel(
                "Budget left by key",
                "What is left of each key's daily and monthly budgets (UTC calendar), the lowest any "
                "router replica last saw.",
                w=6,
                targets=[
                    Target("min by (key, budget) (modelyard_router_budget_remaining)", "{{key}} {{budget}}")
                ],
            ),
            Panel(
                "Queued by model",
                "Requests waiting in the router's fair queue because every ready pod of the model is at "
                "its concurrency.",
                w=4,
                targets=[Target(f"sum by (model) (modelyard_router_requests_queued{{{M}}})", "{{model}}")],
            ),
            Panel(
                "Limits store up",
                "Router replicas that reach the shared limits store (only routers configured with one); "
                "replicas that do not fall back to per-replica limits or refuse (store_failure_mode).",
                kind="stat",
                w=2,
                h=8,
                targets=[Target("sum(modelyard_router_store_up)", "up")],
            ),
        ],
        "Control plane",
        [
            Panel(
                "Models by phase",
                "LLMModels per status phase, as the operator sees them.",
                stack=True,
                w=8,
                targets=[Target("sum by (phase) (modelyard_operator_models)", "{{phase}}")],
            ),
            Panel(
                "Ready pods by model",
                "Endpoints per model and routing state (ejected = failing pods).",
                w=8,
                targets=[
                    Target(
                        f"max by (model, state) (modelyard_router_endpoints{{{R}}})", "{{model}} {{state}}"
                    )
                ],
            ),
            Panel(
                "Reconcile errors/s by kind",
                "Operator reconciles that failed (retried with backoff), by error kind (e.g. api_403).",
                unit="ops",
                w=8,
                targets=[
                    Target(
                        f"sum by (error) (rate(modelyard_operator_reconcile_errors_total[{RATE}]))",
                        "{{error}}",
                    )
                ],
            ),
        ],
    ]
    return _dashboard(
        "modelyard-fleet",
        "Modelyard / Fleet",
        "Every model behind the Modelyard router: traffic, errors, latency, tokens, holds, and the "
        "servers and operator behind them.",
        layout,
        model_multi=True,
    )


# ---- Per model ----------------------------------------------------------------------------------------
S = 'model="$model"'
SN = 'model_name="$model"'


def per_model() -> dict[str, Any]:
    col = 8
    layout: list[Any] = [
        "Router  |  Model server  |  Operator",
        [
            Panel(
                "Router: requests/s by status",
                "Answers for this model per HTTP status.",
                unit="reqps",
                w=col,
                stack=True,
                targets=[
                    Target(
                        f"sum by (code) (rate(modelyard_router_requests_total{{{S}}}[{RATE}]))", "{{code}}"
                    )
                ],
            ),
            Panel(
                "Server: running (batch) and waiting (queue)",
                "Running: sequences in the batch. Waiting: queued requests. Summed over pods.",
                w=col,
                targets=[
                    Target(f"sum({any_engine('vllm:num_requests_running', SN)})", "running"),
                    Target(f"sum({any_engine('vllm:num_requests_waiting', SN)})", "waiting"),
                    Target(f"sum(modelyard_max_num_seqs{{{SN}}})", "batch limit"),
                ],
            ),
            Panel(
                "Replicas: ready and ejected pods",
                "Pods of this model passing readiness, as the routers see them (max over router replicas); "
                "ejected = failing pods taken out of rotation. Desired replicas: `kubectl get llm`.",
                w=col,
                targets=[
                    Target(f'max(modelyard_router_endpoints{{{S}, state="ready"}})', "ready"),
                    Target(f'max(modelyard_router_endpoints{{{S}, state="ejected"}})', "ejected"),
                ],
            ),
        ],
        [
            Panel(
                "Router: latency",
                "Arrival at the router to last byte.",
                unit="s",
                w=col,
                targets=quantiles("modelyard_router_request_duration_seconds", "", S),
            ),
            Panel(
                "Server: KV cache usage",
                "Per pod.",
                unit="percentunit",
                max=1,
                w=col,
                targets=[
                    Target(
                        f"max by (pod, instance) ({any_engine('vllm:kv_cache_usage_perc', SN)})",
                        "{{pod}} {{instance}}",
                    )
                ],
            ),
            Panel(
                "Operator: reconciles/s by result",
                "All LLMModels (the operator's metrics are not per model): applied = children written, "
                "unchanged = nothing to do, retry = transient failure, invalid = spec cannot be built.",
                unit="ops",
                w=col,
                targets=[
                    Target(
                        f"sum by (result) (rate(modelyard_operator_reconciles_total[{RATE}]))",
                        "{{result}}",
                    )
                ],
            ),
        ],
        [
            Panel(
                "Router: time to first token",
                "Streaming: arrival to first relayed chunk.",
                unit="s",
                w=col,
                targets=quantiles("modelyard_router_time_to_first_token_seconds", "", S),
            ),
            Panel(
                "Server: time to first token",
                "Inside the server: admission to first token.",
                unit="s",
                w=col,
                targets=quantiles("vllm:time_to_first_token_seconds", "", SN),
            ),
            Panel(
                "Operator: reconcile errors/s by kind",
                "All LLMModels: failed reconciles (retried with backoff), by error kind.",
                unit="ops",
                w=col,
                targets=[
                    Target(
                        f"sum by (error) (rate(modelyard_operator_reconcile_errors_total[{RATE}]))",
                        "{{error}}",
                    )
                ],
            ),
        ],
        [
            Panel(
                "Router: in flight and held",
                "Proxied now, and waiting for a ready pod.",
                w=col,
                targets=[
                    Target(f"sum(modelyard_router_requests_in_flight{{{S}}})", "in flight"),
                    Target(f"sum(modelyard_router_requests_held{{{S}}})", "held"),
                ],
            ),
            Panel(
                "Server: time per output token",
                "Decode speed per sequence.",
                unit="s",
                w=col,
                targets=quantiles("vllm:time_per_output_token_seconds", "", SN),
            ),
            Panel(
                "Operator: reconcile duration",
                "All LLMModels: how long one reconcile (build, compare, apply) takes.",
                unit="s",
                w=col,
                targets=quantiles("modelyard_operator_reconcile_duration_seconds", "", ""),
            ),
        ],
        [
            Panel(
                "Router: tokens/s",
                "From the backends' `usage`.",
                w=col,
                targets=[
                    Target(f"sum(rate(modelyard_router_prompt_tokens_total{{{S}}}[{RATE}]))", "prompt"),
                    Target(
                        f"sum(rate(modelyard_router_completion_tokens_total{{{S}}}[{RATE}]))", "completion"
                    ),
                ],
            ),
            Panel(
                "Server: tokens/s",
                "Prefill and generated tokens.",
                w=col,
                targets=[
                    Target(f"sum({any_engine('vllm:prompt_tokens_total', SN, rate=True)})", "prompt"),
                    Target(f"sum({any_engine('vllm:generation_tokens_total', SN, rate=True)})", "generation"),
                ],
            ),
            Panel(
                "Router: pods by state",
                "Ready pods and pods ejected after repeated failures.",
                w=col,
                targets=[Target(f"max by (state) (modelyard_router_endpoints{{{S}}})", "{{state}}")],
            ),
        ],
        [
            Panel(
                "Router: upstream errors and retries",
                "Failed attempts by reason, and retries on another pod.",
                unit="ops",
                w=col,
                targets=[
                    Target(
                        f"sum by (reason) (rate(modelyard_router_upstream_errors_total{{{S}}}[{RATE}]))",
                        "{{reason}}",
                    ),
                    Target(f"sum(rate(modelyard_router_upstream_retries_total{{{S}}}[{RATE}]))", "retries"),
                ],
            ),
            Panel(
                "Server: finished requests/s by reason",
                "stop, length, abort, error.",
                unit="reqps",
                w=col,
                targets=[
                    Target(
                        f"sum by (finished_reason) (rate(vllm:request_success_total{{{SN}}}[{RATE}]))",
                        "{{finished_reason}}",
                    )
                ],
            ),
            Panel(
                "Server: end-to-end latency",
                "Admission to last token inside the server.",
                unit="s",
                w=col,
                targets=quantiles("vllm:e2e_request_latency_seconds", "", SN),
            ),
        ],
        [
            Panel(
                "Server: prompt and generation length",
                "Tokens per request (median and p95).",
                w=col,
                targets=[
                    Target(
                        f"histogram_quantile(0.5, sum by (le) (rate(vllm:request_prompt_tokens_bucket{{{SN}}}"
                        f"[{RATE}])))",
                        "p50 prompt",
                    ),
                    Target(
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(vllm:request_prompt_tokens_bucket{{{SN}}}[{RATE}])))",
                        "p95 prompt",
                    ),
                    Target(
                        f"histogram_quantile(0.5, sum by (le) (rate(vllm:request_generation_tokens_bucket"
                        f"{{{SN}}}[{RATE}])))",
                        "p50 generation",
                    ),
                    Target(
                        f"histogram_quantile(0.95, sum by (le) (rate(vllm:request_generation_tokens_bucket"
                        f"{{{SN}}}[{RATE}])))",
                        "p95 generation",
                    ),
                ],
            ),
            Panel(
                "Server: inter-token latency",
                "Gap between consecutive tokens of one sequence.",
                unit="s",
                w=col,
                targets=quantiles("vllm:inter_token_latency_seconds", "", SN),
            ),
            Panel(
                "Router: hold time",
                "How long held requests waited for a ready pod.",
                unit="s",
                w=col,
                targets=quantiles("modelyard_router_hold_duration_seconds", "", S),
            ),
        ],
        [
            Panel(
                "Server: prefix cache hit rate",
                "Share of prompt tokens whose KV came from the prefix cache (vLLM's and the built-in "
                "engine's token counters; SGLang's own gauge).",
                unit="percentunit",
                max=1,
                w=col,
                targets=[
                    Target(
                        f"(sum(rate(vllm:prefix_cache_hits_total{{{SN}}}[{RATE}])) "
                        f"/ sum(rate(vllm:prefix_cache_queries_total{{{SN}}}[{RATE}]))) "
                        f"or avg(sglang:cache_hit_rate{{{SN}}})",
                        "hit rate",
                    )
                ],
            ),
            Panel(
                "Server: prefix cache tokens/s",
                "Prompt tokens looked up in the prefix cache, and those found there.",
                w=col,
                targets=[
                    Target(f"sum(rate(vllm:prefix_cache_queries_total{{{SN}}}[{RATE}]))", "looked up"),
                    Target(f"sum(rate(vllm:prefix_cache_hits_total{{{SN}}}[{RATE}]))", "found"),
                ],
            ),
            Panel(
                "Server: preemptions/s",
                "Requests whose KV was dropped because the cache was full; they are recomputed later. "
                "Sustained preemptions mean the KV cache is too small for the load.",
                w=col,
                targets=[Target(f"sum(rate(vllm:num_preemptions_total{{{SN}}}[{RATE}]))", "preempted")],
            ),
        ],
        "Request phases (model server)",
        [
            Panel(
                "Server: where a request's time goes",
                "Mean seconds per finished request in each phase, as vLLM v1 splits it: queue (waiting for "
                "the batch), prefill (admitted to first token), decode (first to last token). Preemptions "
                "count in the phase they interrupted.",
                unit="s",
                w=col,
                stack=True,
                targets=[
                    Target(
                        f"sum(rate(vllm:request_{phase}_time_seconds_sum{{{SN}}}[{RATE}])) "
                        f"/ sum(rate(vllm:request_{phase}_time_seconds_count{{{SN}}}[{RATE}]))",
                        phase,
                    )
                    for phase in ("queue", "prefill", "decode")
                ],
            ),
            Panel(
                "Server: time in queue",
                "From arrival in the engine's queue to first admission into the running batch.",
                unit="s",
                w=col,
                targets=quantiles("vllm:request_queue_time_seconds", "", SN),
            ),
            Panel(
                "Server: prefill time",
                "From admission to the first generated token (the prompt's forward passes).",
                unit="s",
                w=col,
                targets=quantiles("vllm:request_prefill_time_seconds", "", SN),
            ),
        ],
        [
            Panel(
                "Server: decode time",
                "From the first to the last generated token of a request.",
                unit="s",
                w=col,
                targets=quantiles("vllm:request_decode_time_seconds", "", SN),
            ),
            Panel(
                "Server: tokens per engine step",
                "Prompt tokens computed plus tokens sampled in one engine step (batch size in tokens).",
                w=col,
                targets=[
                    Target(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(vllm:iteration_tokens_total_bucket{{{SN}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
            ),
            Panel(
                "Server: requested max_tokens",
                "Median and p95 of the max_tokens each request ran with (the default fills the context).",
                w=col,
                targets=[
                    Target(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(vllm:request_params_max_tokens_bucket{{{SN}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
            ),
        ],
        "Autoscaler (operator, built-in mode)",
        [
            Panel(
                "Autoscaler: load signal vs target",
                "Requests in flight for this model in every router (held ones included), their average over "
                "the model's window, and what the desired replicas can take at targetRequests each.",
                w=col,
                targets=[
                    Target(f"max(modelyard_operator_autoscaler_requests{{{S}}})", "in flight"),
                    Target(f"max(modelyard_operator_autoscaler_requests_average{{{S}}})", "window average"),
                    Target(
                        f"max(modelyard_operator_autoscaler_target_requests{{{S}}} "
                        f"* modelyard_operator_autoscaler_desired_replicas{{{S}}})",
                        "capacity at target",
                    ),
                    Target(f"max(modelyard_operator_autoscaler_held_requests{{{S}}})", "held (no pod ready)"),
                ],
            ),
            Panel(
                "Autoscaler: desired vs ready replicas",
                "Replicas the autoscaler wants, and pods the routers can send to. The gap is a cold start.",
                w=col,
                targets=[
                    Target(f"max(modelyard_operator_autoscaler_desired_replicas{{{S}}})", "desired"),
                    Target(f'max(modelyard_router_endpoints{{{S}, state="ready"}})', "ready"),
                ],
            ),
            Panel(
                "Autoscaler: decisions",
                "Replica changes written through the scale subresource, by reason; each is also an Event on "
                "the LLMModel with the numbers behind it (`kubectl describe llm`).",
                w=col,
                stack=True,
                targets=[
                    Target(
                        f"sum by (reason) (increase(modelyard_operator_autoscaler_decisions_total{{{S}}}"
                        f"[{RATE}]))",
                        "{{reason}}",
                    )
                ],
            ),
        ],
    ]
    return _dashboard(
        "modelyard-model",
        "Modelyard / Model",
        "One model, router, model server and operator side by side.",
        layout,
        model_multi=False,
    )


DASHBOARDS = {"modelyard-fleet.json": fleet, "modelyard-model.json": per_model}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
