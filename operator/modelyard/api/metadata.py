"""Keys shared by the operator (which writes them) and the router (which reads them).

One small module, imported by both sides, so that the contract between the control plane and the
data plane is spelled in exactly one place.
"""

from __future__ import annotations

GROUP = "modelyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMModel"
PLURAL = "llmmodels"
SINGULAR = "llmmodel"
SHORT_NAMES = ("llm", "llms")

FIELD_MANAGER = "modelyard-operator"

# Labels on every child object (Deployment, pod template, Service, PVC, PDB).
LABEL_MODEL = f"{GROUP}/model"  # value: the LLMModel's metadata.name
LABEL_COMPONENT = "app.kubernetes.io/component"  # "model-server"
LABEL_NAME = "app.kubernetes.io/name"  # "modelyard"
LABEL_INSTANCE = "app.kubernetes.io/instance"  # the LLMModel's name
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"  # "modelyard-operator"
COMPONENT_MODEL_SERVER = "model-server"

# The model server's container port name and number on every model pod / Service.
SERVER_PORT_NAME = "http"
SERVER_PORT = 8000

# Service and EndpointSlice: kubernetes.io/service-name on slices points at the Service, whose name is
# the LLMModel's name (see operator builders); the router joins slices to models by this label.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"

# The router's API port (OpenAI API, /healthz, /readyz) and the Service port the chart exposes.
ROUTER_PORT_NAME = "http"
ROUTER_PORT = 8080
# The router's internal port (/metrics, /autoscaler/load): the name of its Service port, by which the
# operator's autoscaler finds it on the router pods' EndpointSlices.
ROUTER_METRICS_PORT_NAME = "metrics"

# On a cache PVC kept when its LLMModel is deleted (spec.cache.retain): no owner reference, this label.
LABEL_RETAIN = f"{GROUP}/retain"

# Added by the operator: hash of the last applied child manifest, so an unchanged reconcile writes nothing.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
# Added by the operator: the LLMModel generation a Deployment was built from (status.observedGeneration).
ANNOTATION_GENERATION = f"{GROUP}/generation"
