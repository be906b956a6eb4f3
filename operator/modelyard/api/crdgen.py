"""Render the LLMModel CustomResourceDefinition from the pydantic models in `llmmodel.py`.

    python -m modelyard.api.crdgen > crds/modelyard.dev_llmmodels.yaml
    python -m modelyard.api.crdgen --peering > crds/kopf.dev_peerings.yaml
    python -m modelyard.api.crdgen --docs > docs/llmmodel.md

pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined, nullable
unions collapsed, titles dropped, and the `x-kubernetes-*` extensions (CEL rules, int-or-string,
preserve-unknown-fields) kept. A unit test fails when the committed file differs from this output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from modelyard.api.adapters import ADAPTER_NAME_RULE
from modelyard.api.llmmodel import LLMModelSpec, LLMModelStatus
from modelyard.api.metadata import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = f"crds/{GROUP}_{PLURAL}.yaml"

_DROP = {"title", "$defs"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.url", "description": "Model source URL."},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the model serves requests.",
    },
    {
        "name": "Replicas",
        "type": "string",
        "jsonPath": ".status.replicaSummary",
        "description": "Ready replicas / desired replicas.",
    },
    {
        "name": "GPUs",
        "type": "integer",
        "jsonPath": ".spec.resources.gpus",
        "description": "GPUs per replica.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why the model is (not) ready.",
    },
    {"name": "Engine", "type": "string", "jsonPath": ".spec.engine", "priority": 1},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
    {"name": "Progress", "type": "string", "jsonPath": ".status.loadProgress", "priority": 1},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# metav1.Condition, as every Kubernetes API spells it (kept explicit: a list-map keyed by type).
_CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "metav1.Condition: the latest observation of one aspect of the model.",
    "required": ["type", "status", "reason"],
    "properties": {
        "type": {"type": "string", "description": "Ready, Progressing, Degraded or CacheShared."},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "description": "CamelCase reason, e.g. Unschedulable."},
        "message": {"type": "string", "description": "Human-readable detail, e.g. the scheduler's message."},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "format": "int64"},
    },
}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**_structural(target, defs), **{k: v for k, v in node.items() if k not in _DROP}}
        return _structural(merged, defs)
    for union in ("anyOf", "allOf"):
        if union in node and not node.get("x-kubernetes-int-or-string"):
            options = [o for o in node.pop(union) if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express union {options!r} structurally")
            if node.get("default", ...) is None:
                node.pop("default")
            return _structural({**_structural(options[0], defs), **node}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "default" and value is None:
            continue
        elif key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())  # docstrings are wrapped; kubectl explain re-wraps
        elif key == "const":
            out["enum"] = [value]  # a one-value Literal; structural schemas have no `const`
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_structural(raw, raw.get("$defs", {})))


# The LLMModel's name names its Service, so it must be a DNS-1035 label.
NAME_PATTERN = "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
NAME_MESSAGE = (
    "must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with "
    "a letter or digit, at most 63 characters (it names the Service)"
)


def openapi_schema() -> dict[str, Any]:
    spec = schema_of(LLMModelSpec)
    status = schema_of(LLMModelStatus)
    status["properties"]["conditions"] = {
        "type": "array",
        "description": status["properties"]["conditions"]["description"],
        "items": _CONDITION_SCHEMA,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }
    return {
        "type": "object",
        "description": "LLMModel serves one open LLM behind an OpenAI-compatible API: the operator runs it "
        "as a Deployment of model server pods plus a Service, and the router sends requests for its "
        "served name and aliases to the ready pods.",
        "required": ["spec"],
        # On the root (the only place a CRD may check metadata.name) but reported at metadata.name
        # (fieldPath, which needs the property declared below), so the API server says
        # `metadata.name: Invalid value: ...` instead of `<nil>: Invalid value: ...`.
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": NAME_MESSAGE,
                "messageExpression": f'"{NAME_MESSAGE}, got \'" + self.metadata.name + "\'"',
                "fieldPath": ".metadata.name",
                "reason": "FieldValueInvalid",
            },
            ADAPTER_NAME_RULE,
        ],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object: modelyard.dev/v1alpha1.",
            },
            "kind": {"type": "string", "description": "Kind of this object: LLMModel."},
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "modelyard"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


PEERING_CRD_PATH = "crds/kopf.dev_peerings.yaml"


def peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (used for HA: one active operator replica). Their status is free-form,
    written by kopf as keep-alives, so it is preserved rather than described."""
    out = []
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "description": "kopf peering: which operator replicas are alive.",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


HEADER = (
    "# Generated by `python -m modelyard.api.crdgen` from operator/modelyard/api/llmmodel.py. Do not edit.\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)


def render_peering() -> str:
    return HEADER.replace("llmmodel.py", "crdgen.py") + yaml.safe_dump_all(
        peering_crds(), sort_keys=False, width=120
    )


DOCS_PATH = "docs/llmmodel.md"

DOCS_INTRO = """# LLMModel reference (`modelyard.dev/v1alpha1`)

<!-- Generated by `python -m modelyard.api.crdgen --docs` (source: api/llmmodel.py). Do not edit. -->

One `LLMModel` is one served model. The operator turns it into a Deployment of model server pods
(the built-in `modelyard-server`, or vLLM or SGLang: `spec.engine`), a Service, and, when asked, a cache PVC
and a PodDisruptionBudget; the router sends
OpenAI requests whose `model` is the served name or an alias to the ready pods, and those naming one of its
LoRA adapters (`spec.adapters`) to the ready pods that have it loaded.
`kubectl get llm` shows it; `kubectl explain llmmodel.spec` documents the same fields as below.

```yaml
apiVersion: modelyard.dev/v1alpha1
kind: LLMModel
metadata:
  name: llama-8b
  namespace: team-a
spec:
  url: hf://meta-llama/Llama-3.1-8B-Instruct
  servedName: llama-3.1-8b
  aliases: [default]
  hubTokenSecret: {name: hf-token}
  resources: {gpus: 1, cpu: "8", memory: 48Gi}
  server: {dtype: bfloat16, maxModelLen: 8192, maxNumSeqs: 64}
  cache: {size: 100Gi}
  autoscaling: {minReplicas: 1, maxReplicas: 4}
  loadBalancing: {strategy: PrefixHash}
```

Model sources: `hf://[<org>/]<name>` (the hub's root-level repos such as `hf://gpt2` have no org) is
downloaded by the server (into `HF_HOME` on the cache volume when
`cache` is set; `revision` selects a branch, tag or commit); `pvc://<claim>/<path>` mounts the claim
read-only at `/models/<claim>` and serves `/models/<claim>/<path>`; `s3://<bucket>/<path>` is copied by an
init container (`aws s3 sync`, image set by the operator's `MODELYARD_OPERATOR_S3_INIT_IMAGE`) into an
emptyDir; credentials come from `spec.server.envFrom` (a Secret with `AWS_*` keys) or the pod's cloud
identity (IRSA, pod identity).

Storage: without `cache`, `hf://` downloads (and `s3://` copies) land in an emptyDir sized by
`resources.ephemeralStorage` (default 100Gi), which is also the container's `ephemeral-storage` request and
limit, so the scheduler picks a node with room and an oversized download evicts the pod instead of
filling the node's disk. `/dev/shm` is limited to `resources.shmSize`. A new cache PVC (`cache.size`) is
ReadWriteOnce by default: it attaches to one node, so with more than one replica use
`accessMode: ReadWriteMany` (the operator reports `CacheShared=False` otherwise). `cache.retain: true`
keeps the PVC (and the downloaded weights) when the LLMModel is deleted.

Scaling: `spec.replicas` is the target of the `scale` subresource. The operator copies it to the
Deployment, clamped to `autoscaling.minReplicas..maxReplicas` when set.

## Autoscaling

With `spec.autoscaling` and `mode: Builtin` (the default) the operator's autoscaler owns `spec.replicas`
and writes it only through the scale subresource:

```yaml
spec:
  autoscaling:
    minReplicas: 0              # 0: scale to zero when idle; the first request scales it back up
    maxReplicas: 4
    targetRequests: 16          # requests in flight + waiting per replica to aim for
    windowSeconds: 30           # averaging window for scaling up
    scaleDownDelaySeconds: 120  # the load must stay low this long before replicas go
```

- The signal is the routers' own count of requests in flight for the model (answered or held while no pod
  is ready), summed over router replicas. Replicas wanted = `ceil(average / targetRequests)`.
- **Scale from zero**: at 0 replicas the first request is held by the router and sets replicas to 1 within
  about a second (the router's `hold_max_wait_s` bounds how long it waits for the pod to be ready).
- **Scale up** at once when the window average needs more replicas; **scale down** only after
  `scaleDownDelaySeconds` during which the highest need stayed lower (no flapping), never below what the
  requests in flight need, never below `minReplicas`.
- Every change is an Event on the LLMModel (`ScaledFromZero`, `ScaledUp`, `ScaledDown`, `ScaledToZero`)
  with the numbers behind it, and `status.autoscaler` shows the last decision (`kubectl get llm -o yaml`).
- Scale-down and rollouts drain: a removed pod gets no new requests and finishes its streams first.

`mode: External` hands `spec.replicas` to someone else (`kubectl scale llm`, an HPA or a KEDA
`ScaledObject` pointing at the LLMModel's scale subresource): the operator then never writes it. Set
`spec.replicas` (within the bounds) when an HPA will own it: an HPA reads an unset `spec.replicas` as 0
and does not scale from 0. Without `spec.autoscaling`, replicas are whatever `spec.replicas` says.
"""

# Wide Markdown tables: one row per line, as Markdown needs.
ENGINES_DOC = """## Engines

`spec.engine` picks the server in the pod; the router, API keys, hold, balancing, status and dashboards
are the same for all three. The same fields map onto each engine's own flags (the operator's builders in
`operator/modelyard/operator/builders/engines/`), the image is the operator's default for the engine
(`MODELYARD_OPERATOR_SERVER_IMAGE` / `_VLLM_IMAGE` / `_SGLANG_IMAGE`, Helm `serverImage`, `engineImages.*`)
unless `server.image` sets one, and every engine listens on port 8000 with its metrics at `/metrics`.

| Field | modelyard (`modelyard-server`) | vllm (`vllm serve`) | sglang (`python3 -m sglang.launch_server`) |
|---|---|---|---|
| `servedName`, `aliases` | `--served-model-name`, `--alias` each | `--served-model-name NAME ALIAS...` | `--served-model-name NAME` (SGLang does not check `model`; the router resolves aliases) |
| `task: embed` | `--task embed` | `--runner pooling --convert embed` | `--is-embedding` |
| `server.dtype` | `--dtype` | `--dtype` | `--dtype` |
| `server.maxModelLen` | `--max-model-len` | `--max-model-len` | `--context-length` |
| `server.maxNumSeqs` | `--max-num-seqs` | `--max-num-seqs` | `--max-running-requests` |
| `resources.gpus` (> 0) | `--tensor-parallel-size` when > 1 (layers split across the GPUs) | `--tensor-parallel-size` | `--tp-size` |
| `server.prefixCaching` | `--enable-prefix-caching` / `--no-enable-prefix-caching` (on by default) | `--enable-prefix-caching` / `--no-enable-prefix-caching` | `false`: `--disable-radix-cache` (on by default) |
| `revision` | env `MODELYARD_SERVER_REVISION` | `--revision` | `--revision` |
| probes (startup / liveness / readiness) | `/health` / `/health` / `/ready` | `/health` | `/health` |
| load progress (`status.loadProgress`) | `/ready` stage and percent | health answer only | health answer only |
| `/dev/shm` (memory emptyDir) | `resources.shmSize` | `resources.shmSize` (NCCL between GPUs) | `resources.shmSize` (NCCL between GPUs) |

What each engine supports:

| | modelyard | vllm | sglang |
|---|---|---|---|
| several GPUs per replica | layer split (contiguous runs of decoder layers per GPU, one GPU busy at a time) | tensor parallel | tensor parallel |
| prefix caching | yes (on by default: full KV blocks named by a hash of their tokens; docs/server.md) | yes | yes (radix cache) |
| LoRA adapters | no | yes (`--enable-lora --lora-modules ...` in `extraArgs`) | yes (`--lora-paths ...` in `extraArgs`) |
| structured output (`response_format`) | yes (`json_schema`, `json_object`; docs/server.md) | yes | yes |
| embeddings (`task: embed`) | yes | yes | yes |
| CPU (`resources.gpus: 0`) | yes | only with a CPU build in `server.image` | only with a CPU build in `server.image` |

Combinations an engine cannot honour are rejected at `kubectl apply` (the CEL rules listed below) and
again by the operator.
"""  # noqa: E501


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type_of(node.get('items') or {})}"
    if "enum" in node:
        return " \\| ".join(str(v) for v in node["enum"])
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return kind


def _rows(node: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, sub in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        description = str(sub.get("description", "")).replace("|", "\\|")
        rules = "; ".join(r["message"] for r in sub.get("x-kubernetes-validations", []))
        if rules:
            description += f" Validation: {rules}."
        flag = " (required)" if name in required else ""
        rows.append(f"| `{path}`{flag} | {_type_of(sub)} | {default} | {description} |")
        if sub.get("type") == "object" and "properties" in sub:
            rows += _rows(sub, path)
        items = sub.get("items")
        if sub.get("type") == "array" and isinstance(items, dict) and "properties" in items:
            rows += _rows(items, f"{path}[]")
    return rows


def render_docs() -> str:
    schema = openapi_schema()
    table = "| Field | Type | Default | Description |\n|---|---|---|---|\n"
    out = [
        DOCS_INTRO,
        ENGINES_DOC,
        "## Spec\n",
        table + "\n".join(_rows(schema["properties"]["spec"], "spec")),
        "",
    ]
    rules = [r["message"] for r in schema["properties"]["spec"].get("x-kubernetes-validations", [])]
    rules += [
        f"{r['fieldPath'].lstrip('.')}: {r['message']}" for r in schema.get("x-kubernetes-validations", [])
    ]
    out += ["Object-level validation (CEL, enforced by the API server at apply time):\n"]
    out += [f"- {m}" for m in rules] + [""]
    out += ["## Status\n", table + "\n".join(_rows(schema["properties"]["status"], "status")), ""]
    out += [
        "Conditions: `Ready` (True once at least one replica is ready and reachable through the model's "
        "Service (a ready endpoint in its EndpointSlices); reasons `Serving`, `NoEndpoints` when ready "
        "pods are not behind the Service, `Unschedulable` with "
        "the scheduler's message, `CrashLoopBackOff`/`ImagePullBackOff`/..., `Downloading`, `Loading`, "
        "`Pending`, `ScaledToZero`, `ReconcileFailed` with the API server's message when a child could not "
        "be applied, `NameConflict` naming the older LLMModel that holds this model's served name, an "
        "alias or an adapter name), `Progressing` (`RollingOut`, `RolloutComplete`, "
        "`ProgressDeadlineExceeded`, "
        "`ReconcileFailed`), `Degraded` (`AsExpected`, or the problem's reason) and, with a new cache PVC, "
        "`CacheShared` (False when a ReadWriteOnce cache meets more than one replica), and with adapters "
        "`AdaptersReady` (`AllLoaded`, `Loading`, `LoadFailed` naming the adapter and the pod's message).",
        "",
        "## kubectl get columns\n",
        "| Column | JSONPath |\n|---|---|",
    ]
    out += [f"| {c['name']} | `{c['jsonPath']}` |" for c in PRINTER_COLUMNS]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--peering"]:
        sys.stdout.write(render_peering())
    elif args == ["--docs"]:
        sys.stdout.write(render_docs())
    else:
        sys.stdout.write(render())


if __name__ == "__main__":
    main()
