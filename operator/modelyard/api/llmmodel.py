"""The LLMModel API: spec and status as pydantic models.

This module is the API's source of truth. `crdgen.py` renders the CustomResourceDefinition from these
models (descriptions, defaults, CEL rules included) and the operator parses every LLMModel body with
them, so the schema the API server enforces and the one the operator reads cannot drift apart.
Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from modelyard.api import owned_flags
from modelyard.api.adapters import (
    ADAPTER_REVISION_MESSAGE,
    ADAPTER_REVISION_RULE,
    AdapterState,
    AdapterStatus,
    LoraAdapter,
    LoraOptions,
    adapter_name_clash,
)
from modelyard.api.base import ApiModel as _Model
from modelyard.api.metadata import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "AdapterState",
    "AdapterStatus",
    "AutoscalerStatus",
    "Autoscaling",
    "AutoscalingMode",
    "Cache",
    "Condition",
    "ConditionType",
    "Dtype",
    "Engine",
    "HubTokenSecret",
    "LLMModel",
    "LLMModelSpec",
    "LLMModelStatus",
    "LoadBalancing",
    "LoadBalancingStrategy",
    "LoraAdapter",
    "LoraOptions",
    "ModelSource",
    "Phase",
    "Resources",
    "ServerOptions",
    "Task",
]

URL_PATTERN = r"^(hf://[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?|s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?)$"
_URL_RE = re.compile(URL_PATTERN)
# Same regex, as a CEL string literal (raw string so backslashes survive).
URL_CEL_MESSAGE = (
    "url must be hf://[<org>/]<name>, pvc://<claim>[/<path>] or s3://<bucket>[/<path>] "
    "(supported schemes: hf, pvc, s3)"
)

# An extended resource name as the API server accepts it in resources.limits: <DNS subdomain>/<name>.
# Checked here (CEL on the field) so that a typo is rejected at `kubectl apply` with a message naming
# the field, not later as a 422 on the Deployment.
RESOURCE_NAME_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"  # vendor domain
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # name
)
_RESOURCE_NAME_RE = re.compile(RESOURCE_NAME_PATTERN)
RESOURCE_NAME_MESSAGE = (
    "resources.gpuResourceName must be an extended resource name <vendor domain>/<name>, "
    "e.g. nvidia.com/gpu or amd.com/gpu (lower-case domain, no spaces)"
)

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Kubernetes quantities are int-or-string on the wire ("16Gi", "500m", 4).
Quantity = Annotated[
    str | int,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


def _opaque_list(description: str) -> WithJsonSchema:
    """A list of core/v1 objects (EnvVar, Toleration...) kept opaque: the API server validates them
    again on the Deployment, and embedding the whole core/v1 schema would bloat the CRD tenfold."""
    return WithJsonSchema(
        {
            "type": "array",
            "description": description,
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        }
    )


OpaqueObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class Task(StrEnum):
    GENERATE = "generate"
    EMBED = "embed"


class Engine(StrEnum):
    """Which inference engine serves the model: the built-in server or a peer engine's own image."""

    MODELYARD = "modelyard"
    VLLM = "vllm"
    SGLANG = "sglang"


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class LoadBalancingStrategy(StrEnum):
    LEAST_LOAD = "LeastLoad"
    PREFIX_HASH = "PrefixHash"


class ModelSource(StrEnum):
    HF = "hf"
    PVC = "pvc"
    S3 = "s3"


class SpeculativeDecoding(_Model):
    """Speculative decoding with prompt-lookup (n-gram) drafts: no draft model, the request's own
    earlier tokens propose the next ones, verified in one forward (same output, faster on repetitive
    text). Maps onto `--speculative-config` as vLLM spells it (modelyard and vllm)."""

    method: Literal["ngram"] = Field(default="ngram", description="Draft method; only `ngram`.")
    num_speculative_tokens: int = Field(ge=1, le=16, description="Draft tokens proposed per step.")
    prompt_lookup_min: int | None = Field(
        default=None, ge=1, description="Shortest suffix n-gram looked up (default: the maximum, or 5)."
    )
    prompt_lookup_max: int | None = Field(
        default=None, ge=1, description="Longest suffix n-gram looked up (default: the minimum, or 5)."
    )

    def config_json(self) -> str:
        """The `--speculative-config` value (vLLM's snake_case keys)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":"))


class ServerOptions(_Model):
    """How the model server runs: the knobs that map onto its command line and container."""

    image: str | None = Field(
        default=None,
        description="Model server image. Defaults to the operator's configured image for spec.engine.",
    )
    dtype: Dtype = Field(default=Dtype.AUTO, description="Weight dtype passed as --dtype.")
    max_model_len: int | None = Field(
        default=None,
        ge=1,
        description="Maximum context length in tokens (--max-model-len). Defaults to the model's own.",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        description="Maximum number of sequences batched concurrently per replica (--max-num-seqs).",
    )
    prefix_caching: bool | None = Field(
        default=None,
        description="Reuse the KV cache of shared prompt prefixes (modelyard and vllm: "
        "--enable-prefix-caching / --no-enable-prefix-caching, on by default; sglang: radix cache, off with "
        "--disable-radix-cache). Unset keeps the engine's default.",
    )
    lora: LoraOptions | None = Field(default=None, description=LoraOptions.__doc__)
    speculative: SpeculativeDecoding | None = Field(
        default=None,
        description="Speculative decoding with prompt-lookup drafts (--speculative-config; modelyard and "
        "vllm). Unset: off.",
    )
    extra_args: list[Annotated[str, StringConstraints(max_length=owned_flags.MAX_EXTRA_ARG_LENGTH)]] = Field(
        default_factory=list,
        max_length=owned_flags.MAX_EXTRA_ARGS,
        description="Extra command-line arguments appended verbatim to the server command. Flags the "
        "operator sets from a field (--port, --tensor-parallel-size, ...) are refused.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": owned_flags.CEL_RULE, "message": owned_flags.CEL_MESSAGE}]
        },
    )
    env: Annotated[
        list[dict[str, Any]],
        _opaque_list("Extra environment variables (core/v1 EnvVar) for the server container."),
    ] = Field(default_factory=list)
    env_from: Annotated[
        list[dict[str, Any]],
        _opaque_list("Extra environment sources (core/v1 EnvFromSource) for the server container."),
    ] = Field(default_factory=list)

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, v: list[str]) -> list[str]:
        # Mirrors the CEL rule for objects that reached the operator without it, with the exact field.
        for arg in v:
            if owned_flags.owned_flag(arg) is not None:
                raise ValueError(owned_flags.refusal(arg))
        return v


class Resources(_Model):
    """Per-replica compute. GPUs are requested and limited equally, as the device plugins require."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.gpus >= 0",
                    "message": "resources.gpus must be >= 0 (0 runs on CPU)",
                    "fieldPath": ".gpus",
                }
            ]
        }
    )

    gpus: int = Field(default=1, description="GPUs per replica (0 runs the server on CPU).")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        max_length=317,  # 253 (DNS subdomain) + "/" + 63; CEL cost estimation needs a bound
        description="Extended resource name of the GPU, e.g. nvidia.com/gpu or amd.com/gpu.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.matches(r'{RESOURCE_NAME_PATTERN}')", "message": RESOURCE_NAME_MESSAGE}
            ]
        },
    )
    cpu: Quantity | None = Field(default=None, description="CPU request per replica, e.g. '4' or '500m'.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit per replica, e.g. '32Gi'."
    )
    ephemeral_storage: Quantity | None = Field(
        default=None,
        description="Local disk per replica for weights downloaded without a cache (hf:// without "
        "spec.cache, and s3://): the size of the emptyDir they land in and the container's "
        "ephemeral-storage request and limit, so the scheduler picks a node with room and a too-big "
        "download evicts the pod instead of filling the node. Default 100Gi.",
    )
    shm_size: Quantity = Field(
        default="8Gi",
        description="Size limit of /dev/shm (a memory-backed emptyDir; counts against the memory limit).",
    )

    @field_validator("gpus")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("resources.gpus must be >= 0 (0 runs on CPU)")
        return v

    @field_validator("gpu_resource_name")
    @classmethod
    def _resource_name(cls, v: str) -> str:
        if not _RESOURCE_NAME_RE.match(v):
            raise ValueError(RESOURCE_NAME_MESSAGE)
        return v


class AutoscalingMode(StrEnum):
    BUILTIN = "Builtin"
    EXTERNAL = "External"


class Autoscaling(_Model):
    """Replica bounds, and the operator's built-in autoscaler. Builtin: the operator sets spec.replicas
    (through the scale subresource) from the requests in flight and waiting in the routers, and scales
    from zero on the first held request. External: an HPA, KEDA or a person owns spec.replicas through
    the scale subresource and the operator never writes it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
                    "fieldPath": ".minReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=0, description="Lowest replica count a scaler may set.")
    max_replicas: int = Field(ge=1, description="Highest replica count a scaler may set.")
    mode: AutoscalingMode = Field(
        default=AutoscalingMode.BUILTIN,
        description="Builtin: the operator's autoscaler writes spec.replicas. External: it never does "
        "(an HPA, KEDA or kubectl scale owns it).",
    )
    target_requests: int = Field(
        default=16,
        ge=1,
        description="Builtin: requests in flight plus waiting per replica that the autoscaler aims for "
        "(averaged over windowSeconds).",
    )
    window_seconds: int = Field(
        default=30, ge=1, le=3600, description="Builtin: the averaging window of the load signal."
    )
    scale_down_delay_seconds: int = Field(
        default=120,
        ge=0,
        le=3600,
        description="Builtin: the load must stay low this long before replicas are removed (the "
        "stabilisation window: the highest need seen in it wins, so the count does not flap).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= autoscaling.maxReplicas")
        return self


class Cache(_Model):
    """Where downloaded weights are kept (HF_HOME). Either a new PVC owned by the model (size) or an
    existing claim (claimName)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.size) != has(self.claimName)",
                    "message": "cache: set exactly one of size (new PVC) or claimName (existing PVC)",
                }
            ]
        }
    )

    size: Quantity | None = Field(default=None, description="Size of a new cache PVC, e.g. '100Gi'.")
    storage_class_name: str | None = Field(
        default=None, description="StorageClass of the new cache PVC (cluster default if unset)."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        default="ReadWriteOnce",
        description="Access mode of the new cache PVC. Use ReadWriteMany for replicas on several nodes.",
    )
    claim_name: str | None = Field(
        default=None, description="Name of an existing PVC (same namespace) to use as the cache."
    )
    retain: bool = Field(
        default=False,
        description="Keep the new cache PVC when the LLMModel is deleted (it then has no owner reference and "
        "carries the label modelyard.dev/retain=true); a model created again with the same name reuses it. "
        "Delete it by hand when done. An existing claim (claimName) is never deleted.",
    )


class HubTokenSecret(_Model):
    """Secret holding a model hub token; exposed to the server as HF_TOKEN, for hf:// models only."""

    name: str = Field(min_length=1, description="Secret name (same namespace).")
    key: str = Field(default="token", min_length=1, description="Key in the Secret.")


class LoadBalancing(_Model):
    """How the router spreads requests over this model's replicas."""

    strategy: LoadBalancingStrategy = Field(
        default=LoadBalancingStrategy.LEAST_LOAD,
        description="LeastLoad: fewest in-flight requests. PrefixHash: consistent hash of the prompt prefix "
        "(bounded load), which keeps KV-cache reuse high.",
    )
    prefix_char_length: int = Field(
        default=100, ge=1, description="PrefixHash only: characters of the prompt that are hashed."
    )


class GatewayRef(_Model):
    """A Gateway (gateway.networking.k8s.io) that gets an HTTPRoute sending this model's requests to its
    InferencePool."""

    name: str = Field(min_length=1, description="Gateway name.")
    namespace: str | None = Field(default=None, description="Gateway namespace (default: the model's).")
    section_name: str | None = Field(default=None, description="Listener of the Gateway to attach to.")
    match_model_header: bool = Field(
        default=False,
        description="Match only requests whose X-Gateway-Model-Name header names this model (set by GIE's "
        "body-based routing), so several models can share one listener; false: every path of the listener.",
    )


class InferencePoolOptions(_Model):
    """Gateway API inference extension: an InferencePool over this model's pods, its endpoint picker
    (Deployment, Service, ServiceAccount, RBAC, config) and, with a gateway, an HTTPRoute
    (docs/gateway.md)."""

    enabled: bool | None = Field(
        default=None,
        description="Emit the pool for this model (unset: the chart-wide inferencePool.enabled).",
    )
    picker_image: str | None = Field(
        default=None,
        description="Endpoint picker image (default: the operator's, llm-d's inference scheduler).",
    )
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailClose",
        description="What the Gateway does when the picker does not answer: FailClose refuses the request, "
        "FailOpen sends it to any pod of the pool.",
    )
    gateway: GatewayRef | None = Field(default=None, description=GatewayRef.__doc__)


# Served names and aliases, as clients spell them in `model`.
NAME_MAX_LENGTH = 253

_PREFIX_CACHING_ON = "has(self.server) && has(self.server.prefixCaching) && self.server.prefixCaching"

# Field combinations an engine cannot honour, rejected at `kubectl apply` (CEL) and again by the operator
# when it parses a spec (`LLMModelSpec._engine_can_honour`), with the same messages.
ENGINE_ON_CPU_MESSAGE = (
    "engine vllm or sglang with resources.gpus: 0 needs server.image: the default vllm and sglang "
    "images are CUDA builds (set a CPU build of the engine)"
)
EMBED_PREFIX_CACHING_MESSAGE = (
    "engines modelyard and vllm have no prefix cache for task: embed (an embedding is one forward, "
    "nothing is reused); leave server.prefixCaching unset or false"
)
ENGINE_RULES: list[JsonValue] = [
    {
        "rule": "self.engine == 'modelyard' || !has(self.resources) || self.resources.gpus > 0 || "
        "(has(self.server) && has(self.server.image))",
        "message": ENGINE_ON_CPU_MESSAGE,
    },
    {
        "rule": f"self.engine == 'sglang' || self.task != 'embed' || !({_PREFIX_CACHING_ON})",
        "message": EMBED_PREFIX_CACHING_MESSAGE,
    },
    ADAPTER_REVISION_RULE,
]


class LLMModelSpec(_Model):
    """Desired state of one served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.autoscaling) || !has(self.replicas) || "
                    "(self.replicas >= self.autoscaling.minReplicas && "
                    "self.replicas <= self.autoscaling.maxReplicas)",
                    "message": "replicas must be within autoscaling.minReplicas..maxReplicas",
                    "fieldPath": ".replicas",
                },
                {
                    "rule": "!has(self.cache) || !self.url.startsWith('pvc://')",
                    "message": "cache is not used with pvc:// models (weights are read from the claim)",
                    "fieldPath": ".cache",
                },
                *ENGINE_RULES,
            ]
        }
    )

    url: str = Field(
        max_length=1024,
        description="Where the weights come from: hf://[<org>/]<name> (model hub; root-level repos "
        "such as hf://gpt2 have no org), "
        "pvc://<claim>[/<path>] (mounted read-only), or s3://<bucket>[/<path>] (fetched by an init "
        "container).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.matches(r'{URL_PATTERN}')", "message": URL_CEL_MESSAGE}
            ]
        },
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) for hf:// models."
    )
    served_name: str | None = Field(
        default=None,
        max_length=NAME_MAX_LENGTH,
        description="Name clients pass as `model` in OpenAI requests. Defaults to metadata.name.",
    )
    # Bounded (names and count) so that CEL rules comparing adapter names with them stay within the API
    # server's cost budget.
    aliases: list[Annotated[str, StringConstraints(max_length=NAME_MAX_LENGTH)]] = Field(
        default_factory=list, max_length=32, description="Extra names that route to this model."
    )
    task: Task = Field(
        default=Task.GENERATE, description="generate (chat/completions) or embed (embeddings)."
    )
    engine: Engine = Field(
        default=Engine.MODELYARD,
        description="Inference engine: modelyard (the built-in server), vllm or sglang (their own "
        "OpenAI servers, images from the operator's settings unless server.image is set). The same "
        "fields map onto each engine's flags; resources.gpus is the tensor-parallel size.",
    )
    server: ServerOptions = Field(default_factory=ServerOptions, description=ServerOptions.__doc__)
    resources: Resources = Field(
        default_factory=Resources,
        description=Resources.__doc__,
        # Defaulted on the API server too (spelled out: CEL rules are checked against the default), so
        # `kubectl get` shows the GPUS column for models that leave resources out.
        json_schema_extra={"default": {"gpus": 1, "gpuResourceName": "nvidia.com/gpu", "shmSize": "8Gi"}},
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the model pods must match."
    )
    tolerations: Annotated[
        list[dict[str, Any]], _opaque_list("Tolerations (core/v1 Toleration) of the model pods.")
    ] = Field(default_factory=list)
    affinity: OpaqueObject | None = Field(
        default=None, description="Affinity (core/v1 Affinity) of the model pods."
    )
    priority_class_name: str | None = Field(default=None, description="PriorityClass of the model pods.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Number of server replicas (default 1, or autoscaling.minReplicas). Also the target of "
        "the scale subresource: the operator's autoscaler writes it there (autoscaling.mode Builtin); with "
        "mode External `kubectl scale`, an HPA or KEDA own it and the operator never writes it.",
    )
    autoscaling: Autoscaling | None = Field(default=None, description=Autoscaling.__doc__)
    cache: Cache | None = Field(default=None, description=Cache.__doc__)
    hub_token_secret: HubTokenSecret | None = Field(default=None, description=HubTokenSecret.__doc__)
    load_balancing: LoadBalancing = Field(default_factory=LoadBalancing, description=LoadBalancing.__doc__)
    adapters: list[LoraAdapter] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters served beside the base model by every pod, each callable by its name "
        "as `model`. Changing the list loads or unloads adapters on running pods, without a restart.",
        # A list-map keyed by name: the API server itself refuses two adapters with one name.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    inference_pool: InferencePoolOptions | None = Field(
        default=None, description=InferencePoolOptions.__doc__
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not _URL_RE.match(v):
            raise ValueError(URL_CEL_MESSAGE)
        return v

    @model_validator(mode="after")
    def _engine_can_honour(self) -> LLMModelSpec:
        # Mirrors ENGINE_RULES for objects that reached the operator without CEL (older CRD).
        prefix_caching = self.server.prefix_caching is True
        if self.engine is not Engine.MODELYARD and self.resources.gpus == 0 and self.server.image is None:
            raise ValueError(ENGINE_ON_CPU_MESSAGE)
        if self.engine is not Engine.SGLANG and self.task is Task.EMBED and prefix_caching:
            raise ValueError(EMBED_PREFIX_CACHING_MESSAGE)
        if self.engine is not Engine.MODELYARD and any(a.revision is not None for a in self.adapters):
            raise ValueError(ADAPTER_REVISION_MESSAGE)
        return self

    @property
    def lora_enabled(self) -> bool:
        """LoRA on the servers: adapters are listed, or spec.server.lora keeps it on without any."""
        return bool(self.adapters) or self.server.lora is not None

    @property
    def source(self) -> ModelSource:
        return ModelSource(self.url.split("://", 1)[0])

    @property
    def source_path(self) -> str:
        """The URL without its scheme: org/name, claim[/path] or bucket[/path]."""
        return self.url.split("://", 1)[1]

    @property
    def desired_replicas(self) -> int:
        if self.replicas is not None:
            if self.autoscaling is not None:
                return min(max(self.replicas, self.autoscaling.min_replicas), self.autoscaling.max_replicas)
            return self.replicas
        return self.autoscaling.min_replicas if self.autoscaling is not None else 1


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    ADAPTERS_READY = "AdaptersReady"


class Phase(StrEnum):
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    LOADING = "Loading"
    READY = "Ready"
    DEGRADED = "Degraded"
    SCALED_TO_ZERO = "ScaledToZero"


class Condition(_Model):
    """A metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class AutoscalerStatus(_Model):
    """What the built-in autoscaler last decided (written only when it changes spec.replicas)."""

    desired_replicas: int | None = Field(default=None, description="Replicas the autoscaler last set.")
    last_scale_time: str | None = Field(default=None, description="When it last changed spec.replicas.")
    reason: str | None = Field(
        default=None, description="ScaleFromZero, ScaleUp, ScaleDown or ScaleToZero (numbers in message)."
    )
    message: str | None = Field(
        default=None, description="The signal, target and counts behind the decision."
    )


class LLMModelStatus(_Model):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec this status describes."
    )
    phase: Phase | None = Field(
        default=None,
        description="Pending (not scheduled), Downloading (fetching weights), Loading (server starting), "
        "Ready, Degraded (some replicas failing) or ScaledToZero.",
    )
    replicas: int = Field(
        default=0, description="Model server pods that exist (the scale subresource's view)."
    )
    ready_replicas: int = Field(default=0, description="Pods that pass the readiness probe.")
    replica_summary: str | None = Field(default=None, description="readyReplicas/desired, for kubectl get.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI base URL of this model.")
    load_progress: str | None = Field(
        default=None,
        description="Load progress the model server reports while a replica loads (stage and percent, "
        "e.g. 'loading weights 50%'); unset when no replica is loading or the server is unreachable.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded and, with a new cache PVC, CacheShared (metav1.Condition).",
    )
    autoscaler: AutoscalerStatus | None = Field(default=None, description=AutoscalerStatus.__doc__)
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        description="Per LoRA adapter of spec.adapters: its state and the pods that serve it.",
    )
    inference_pool: str | None = Field(
        default=None,
        description="Name of the InferencePool the operator keeps for this model; unset when it has none.",
    )

    def condition(self, ctype: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == ctype.value), None)


class LLMModel(_Model):
    """Parsed LLMModel object: only the parts the operator reads."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    spec: LLMModelSpec
    status: LLMModelStatus = Field(default_factory=LLMModelStatus)

    @model_validator(mode="after")
    def _adapter_names(self) -> LLMModel:
        # Mirrors the root CEL rule (crdgen: ADAPTER_NAME_RULE), which alone sees metadata.name.
        clash = adapter_name_clash(self.spec.adapters, self.served_name, self.spec.aliases)
        if clash is not None:
            raise ValueError(clash)
        return self

    @classmethod
    def from_body(cls, body: dict[str, Any] | Any) -> LLMModel:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid", ""),
            generation=meta.get("generation", 1),
            spec=LLMModelSpec.model_validate(dict(body.get("spec") or {})),
            status=LLMModelStatus.model_validate(dict(body.get("status") or {})),
        )

    @property
    def served_name(self) -> str:
        return self.spec.served_name or self.name
