"""Operator configuration: one typed place, read once at start-up by `__main__` and passed down.

Env `MODELYARD_OPERATOR_<NAME>` or CLI `--<name>` (flags win), like the router and the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliImplicitFlag, SettingsConfigDict

from modelyard.api.llmmodel import Engine


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODELYARD_OPERATOR_",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        cli_prog_name="modelyard-operator",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=True,
        # The flags the operator always had (and the chart and docs use); keys are the kebab-case names.
        cli_shortcuts={
            "namespaces": ["n", "namespace"],
            "all-namespaces": "A",
            "peering-name": "peering",
            "verbose": "v",
        },
    )

    # What the operator builds.
    server_image: str = Field(
        default="ghcr.io/modelyard/modelyard-server:0.1.0",
        description="Default image of the modelyard engine (spec.server.image overrides it per model).",
    )
    vllm_image: str = Field(
        default="vllm/vllm-openai:v0.32.0",
        description="Default image of the vllm engine (runs `vllm serve`; spec.server.image overrides it).",
    )
    sglang_image: str = Field(
        default="lmsysorg/sglang:v0.5.6",
        description="Default image of the sglang engine (runs `python3 -m sglang.launch_server`; "
        "spec.server.image overrides it).",
    )
    image_pull_policy: str = "IfNotPresent"
    otlp_traces_endpoint: str | None = Field(
        default=None,
        description="OTLP endpoint the model pods send traces to (Helm tracing.endpoint); unset: no tracing.",
    )
    traces_sampler: str = Field(
        default="parentbased_traceidratio", description="OTEL_TRACES_SAMPLER of the model pods."
    )
    traces_sampler_arg: str = Field(default="1.0", description="OTEL_TRACES_SAMPLER_ARG of the model pods.")
    inference_pool_default: bool = Field(
        default=False,
        description="Emit a Gateway API InferencePool and endpoint picker for every model that does not set "
        "spec.inferencePool.enabled (docs/gateway.md).",
    )
    endpoint_picker_image: str = Field(
        default="ghcr.io/llm-d/llm-d-inference-scheduler:v0.7.1",
        description="Default endpoint picker image of the InferencePools (spec.inferencePool.pickerImage "
        "overrides it).",
    )
    s3_init_image: str = Field(
        default="amazon/aws-cli:2.22.0",
        description="Image of the init container that copies s3:// weights; it must provide `aws s3 sync` "
        "and find credentials through the usual AWS chain (env, IRSA, instance profile).",
    )
    cluster_domain: str = "cluster.local"
    startup_timeout_seconds: int = Field(
        default=3600, description="How long a replica may take to download and load weights."
    )

    # Where and how it runs.
    kubeconfig: Path | None = Field(
        default=None, description="kubeconfig file (default: $KUBECONFIG, then in-cluster)."
    )
    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch (-n/--namespace, repeatable); empty means cluster-wide.",
    )
    all_namespaces: CliImplicitFlag[bool] = Field(
        default=False, description="Watch every namespace (-A); exclusive with -n."
    )
    verbose: CliImplicitFlag[bool] = Field(default=False, description="Debug logging (-v).")
    peering_name: str | None = Field(
        default=None,
        description="kopf peering object for HA (only one operator replica acts at a time); "
        "unset means standalone.",
    )
    priority: int | None = Field(
        default=None,
        description="kopf peering priority of this replica; unset picks a random one, so that exactly one of "
        "several replicas (the highest) is active and the others stand by.",
    )
    peering_lifetime: int = Field(
        default=60, description="Seconds without a keep-alive after which a standby replica takes over."
    )
    health_port: int = 8080
    metrics_port: int = 9090
    bind_address: str = "0.0.0.0"
    worker_limit: int = Field(
        default=256,
        description="kopf workers per watched resource. kopf keeps one worker per object until it has "
        "been idle for worker_idle_seconds, so this bounds how many objects are handled at once.",
    )
    worker_idle_seconds: float = Field(
        default=0.5, description="How long an idle per-object kopf worker waits before freeing its slot."
    )
    status_debounce_seconds: float = Field(
        default=1.0,
        description="Status writes are coalesced over this window, so a burst of Pod events costs one write.",
    )
    watch_server_timeout: int = Field(
        default=300,
        description="Server-side watch timeout (s): watches are re-established at least this often.",
    )
    request_timeout: float = 30.0
    max_inflight_requests: int = Field(
        default=64,
        description="Concurrent API requests of the reconciler and status writer (kopf's watches excluded).",
    )
    post_events: bool = Field(
        default=True,
        description="Post Kubernetes Events on LLMModels for transitions (Ready, Unschedulable...).",
    )
    status_retry_delay: float = 5.0
    adapter_sync_interval_seconds: float = Field(
        default=10.0,
        description="How often the ready pods of models with LoRA on are checked against spec.adapters "
        "(GET /v1/models, then load/unload); rounds also run at once on model and pod changes. 0 disables.",
    )
    progress_interval_seconds: float = Field(
        default=10.0,
        description="How often loading pods are asked for their load progress (GET /ready); 0 disables.",
    )
    autoscaler_router_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of every router's metrics port (e.g. http://10.0.0.5:9090), whose GET "
        "/autoscaler/load the built-in autoscaler sums. Empty: the autoscaler has no signal and never "
        "writes.",
    )
    autoscaler_router_service: str | None = Field(
        default=None,
        description="The routers' Service as namespace/name: every ready router pod behind it (from its "
        "EndpointSlices, re-read every 10 s) is polled on the Service port named metrics. Added to "
        "autoscaler_router_urls.",
    )
    autoscaler_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often the routers are asked for their load. Bounds the delay from the first "
        "request held for a model at zero replicas to the scale-up (one interval plus one PATCH).",
    )
    progress_step: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Reported progress is rounded down to this step (bounds writes).",
    )

    @model_validator(mode="after")
    def _one_scope(self) -> OperatorSettings:
        if self.all_namespaces and self.namespaces:
            raise ValueError("-A/--all-namespaces and -n/--namespace are exclusive")
        return self

    def engine_image(self, engine: Engine) -> str:
        """The default image of an engine (spec.server.image overrides it)."""
        return {
            Engine.MODELYARD: self.server_image,
            Engine.VLLM: self.vllm_image,
            Engine.SGLANG: self.sglang_image,
        }[engine]


def parse_settings(argv: Sequence[str] | None = None) -> OperatorSettings:
    """Flags from `argv` (None: none, only env) layered over the environment."""
    return OperatorSettings(_cli_parse_args=list(argv or []))  # type: ignore[call-arg]
