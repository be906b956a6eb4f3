"""Every router setting, in one typed place: env ``MODELYARD_ROUTER_<NAME>`` or CLI ``--<name>``.

Documented field by field in docs/router.md (the Helm chart sets these).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.api import metadata


class DiscoveryMode(StrEnum):
    KUBERNETES = "kubernetes"
    STATIC = "static"


class StoreFailureMode(StrEnum):
    OPEN = "open"  # fall back to per-replica limits
    CLOSED = "closed"  # refuse with 503


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_ROUTER_", env_ignore_empty=True, extra="ignore", cli_kebab_case=True
    )

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(metadata.ROUTER_PORT, description="Port for the API and health endpoints.")
    otlp_traces_endpoint: str | None = Field(
        None,
        description="OTLP endpoint for OpenTelemetry traces (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / "
        "OTEL_EXPORTER_OTLP_ENDPOINT). Unset: no tracing. Protocol, headers, sampler and service name "
        "follow the OTEL_* variables.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Router processes sharing `port` (SO_REUSEPORT; the kernel spreads connections over "
        "them). Above 1, a supervisor starts them, restarts one that dies, stops them with it whatever the "
        "signal, and serves `/metrics` and `/autoscaler/load` for all of them. With API keys this needs "
        "`store_url`: each worker would otherwise count a key's limits on its own. A pod's concurrency is "
        "split between workers; hold and queue bounds are per worker (docs/router.md, Workers).",
    )
    metrics_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Port for Prometheus `/metrics` (kept off the API port: it names every key and model).",
    )

    mode: DiscoveryMode = Field(
        DiscoveryMode.KUBERNETES,
        description="`kubernetes`: watch LLMModels and EndpointSlices; `static`: read `static_config` "
        "(the default when `static_config` is set).",
    )
    static_config: Path | None = Field(
        None,
        description="Static mode: YAML/JSON file mapping model names to backend URLs (re-read on change).",
    )
    namespace: str = Field(
        "", description="Kubernetes mode: namespace whose LLMModels are routed; empty = all namespaces."
    )
    api_keys_secret: str = Field(
        "", description="Kubernetes Secret (in `api_keys_secret_namespace`) holding API keys; empty = none."
    )
    api_keys_secret_namespace: str = Field(
        "", description="Namespace of the keys Secret; empty = the router pod's own namespace."
    )
    api_keys_secret_key: str = Field(
        "keys.yaml", description="Data key inside the Secret with the keys YAML."
    )
    api_keys_file: Path | None = Field(None, description="YAML/JSON API-keys file (re-read on change).")

    upstream_api_key: SecretStr | None = Field(
        None, description="Bearer key the router sends to backends (when model servers require one)."
    )

    store_url: SecretStr | None = Field(
        None,
        description="Redis-protocol store (`redis://host:6379/0`, `rediss://` for TLS) holding every "
        "key's limits and budgets, shared by all replicas; none = per-replica limits.",
    )
    store_password: SecretStr | None = Field(
        None, description="Store password, when it is not in `store_url` (the chart reads it from a Secret)."
    )
    store_failure_mode: StoreFailureMode = Field(
        StoreFailureMode.OPEN,
        description="Store unreachable: `open` = per-replica limits until it is back; `closed` = 503.",
    )
    store_timeout_s: float = Field(
        0.5, gt=0, description="Connect and reply timeout for one store call (then the store counts as down)."
    )
    store_retry_s: float = Field(1.0, gt=0, description="While the store is down, how often it is pinged.")
    store_lease_ttl_s: float = Field(
        30.0,
        gt=0,
        description="Concurrency leases expire this long after their last renewal (renewed every third of "
        "it while the request runs), so a router that dies leaks nothing.",
    )
    store_key_prefix: str = Field(
        "modelyard:", description="Prefix of every key the router writes in the store."
    )
    estimate_max_tokens: int = Field(
        256,
        ge=0,
        description="Completion tokens reserved for a request that sets no `max_tokens` "
        "(the reservation is settled with the real usage when the answer ends).",
    )

    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Request body limit, counted while reading (chunked too); larger -> 413.",
    )
    read_header_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A connection must send a request's headers within this long of connecting or of its "
        "previous response (also the idle keep-alive time), else it is closed.",
    )
    read_body_timeout_s: float = Field(
        60.0, gt=0, description="A request body not fully received within this long gets 408."
    )
    connect_timeout_s: float = Field(3.0, gt=0, description="Upstream TCP connect timeout.")
    upstream_read_timeout_s: float = Field(
        300.0, gt=0, description="Longest silence allowed from a backend (headers or between stream chunks)."
    )
    max_retries: int = Field(2, ge=0, description="Extra attempts on other pods before the first byte.")
    max_migrations: int = Field(
        2,
        ge=0,
        description="Times one stream may move to another pod when its pod fails mid-stream (0 = off).",
    )
    max_migration_tokens: int = Field(
        8192, ge=0, description="A cut stream that had generated more tokens than this is not migrated."
    )
    upstream_max_connections: int = Field(
        0, ge=0, description="Cap on pooled upstream connections (0 = unlimited)."
    )
    upstream_keepalive_s: float = Field(60.0, gt=0, description="Idle upstream keep-alive time.")

    hold_max_wait_s: float = Field(
        30.0, ge=0, description="How long a request for a model with no ready pod waits before 503."
    )
    hold_max_per_model: int = Field(
        256, ge=0, description="Requests held per model at most; beyond that, 503 at once."
    )
    hold_heartbeat_s: float = Field(
        5.0, gt=0, description="Held streaming requests get a `: keepalive` SSE comment this often."
    )
    queue_pod_extra: int = Field(
        2,
        ge=0,
        description="Requests a pod may hold beyond its LLMModel's maxNumSeqs (in its own queue) before the "
        "router queues the rest itself.",
    )
    queue_max_per_model: int = Field(
        256,
        ge=0,
        description="Requests queued per model at most; beyond it the lowest priority is shed (429).",
    )
    queue_max_wait_s: float = Field(
        60.0, gt=0, description="Longest wait in the queue for a slot; then 429 `queue-full`."
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After on 503 when no replica is ready.")

    eject_after_failures: int = Field(3, ge=1, description="Consecutive failures that eject a pod.")
    eject_base_s: float = Field(1.0, gt=0, description="First ejection period; doubles per re-ejection.")
    eject_max_s: float = Field(30.0, gt=0, description="Longest ejection period.")
    probe_interval_s: float = Field(1.0, gt=0, description="How often ejected pods are probed.")
    probe_path: str = Field(
        "/health", description="Path probed on ejected pods (any answer < 500 re-admits)."
    )

    prefix_char_length: int = Field(
        100, gt=0, description="PrefixHash default: prompt characters hashed (per-model override)."
    )
    chwbl_load_factor: float = Field(
        1.25, ge=1.0, description="PrefixHash default: bounded-load factor (per-model override)."
    )
    chwbl_replication: int = Field(
        100, ge=1, description="PrefixHash default: virtual nodes per pod (per-model override)."
    )

    shutdown_drain_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests and streams may finish."
    )
    shutdown_delay_s: float = Field(
        0.0, ge=0, description="On SIGTERM, keep serving (with /readyz failing) this long before draining."
    )
    access_log: bool = Field(True, description="One structured JSON line per request.")
    log_level: str = Field("INFO", description="Python log level.")

    @model_validator(mode="after")
    def _workers_share_limits_only_through_a_store(self) -> RouterSettings:
        keys = self.api_keys_file is not None or bool(self.api_keys_secret)
        if self.workers > 1 and keys and self.store_url is None:
            raise ValueError(
                "workers > 1 with API keys needs store_url (MODELYARD_ROUTER_STORE_URL): without a store "
                "each worker would count every key's limits and budgets on its own, so a key would get "
                f"{self.workers}x its limits; set a store or run one worker"
            )
        return self

    @model_validator(mode="after")
    def _mode_needs_its_source(self) -> RouterSettings:
        if "mode" not in self.model_fields_set and self.static_config is not None:
            self.mode = DiscoveryMode.STATIC
        if self.mode is DiscoveryMode.STATIC and self.static_config is None:
            raise ValueError("static mode needs static_config (MODELYARD_ROUTER_STATIC_CONFIG)")
        return self
