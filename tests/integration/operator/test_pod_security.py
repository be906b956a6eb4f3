"""Every pod the operator creates is admitted by a namespace that enforces the `restricted` Pod Security
Standard, checked by the real API server: all three engines, the optional parts of a model pod (the
s3:// download init container, the cache volume, a pvc:// model, LoRA adapters' s3:// init container and
claims) and the endpoint picker of an InferencePool. The chart's own pods (operator, router)
are checked the same way in tests/integration/chart."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.adapters import S3_ADAPTERS_INIT_CONTAINER_NAME
from modelyard.operator.builders.deployment import S3_INIT_CONTAINER_NAME, build_deployment
from modelyard.operator.builders.endpoint_picker import build_endpoint_picker
from modelyard.operator.settings import OperatorSettings
from tests.cluster.client import ClusterClient

SPECS: dict[str, dict[str, Any]] = {
    "modelyard-cpu": {"url": "hf://gpt2", "resources": {"gpus": 0}, "hubTokenSecret": {"name": "hf"}},
    "modelyard-gpus": {"url": "hf://org/llama", "resources": {"gpus": 2}, "cache": {"size": "10Gi"}},
    "vllm": {"url": "hf://org/llama", "engine": "vllm", "resources": {"gpus": 4, "shmSize": "16Gi"}},
    "sglang": {"url": "pvc://weights/llama", "engine": "sglang", "resources": {"gpus": 4}},
    "s3-download": {
        "url": "s3://bucket/llama",
        "resources": {"gpus": 1},
        "server": {"envFrom": [{"secretRef": {"name": "aws"}}]},
    },
    # LoRA adapters from every scheme: the s3:// adapters' init container, a pvc:// adapter's claim.
    "lora-adapters": {
        "url": "hf://org/llama",
        "resources": {"gpus": 1},
        "adapters": [
            {"name": "sql", "source": "s3://bucket/sql"},
            {"name": "support", "source": "pvc://adapters/support"},
            {"name": "legal", "source": "hf://org/legal"},
        ],
    },
}


@pytest.fixture(scope="module")
def restricted(kube_cluster: ClusterClient) -> str:
    ns = kube_cluster.create_namespace(f"psa-{uuid.uuid4().hex[:8]}")
    kube_cluster.kubectl(
        "label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    return ns


@pytest.mark.parametrize("name", list(SPECS))
def test_the_operators_pods_are_admitted_under_restricted(
    kube_cluster: ClusterClient, restricted: str, name: str
) -> None:
    body = {"metadata": {"name": name, "namespace": restricted, "uid": "u"}, "spec": SPECS[name]}
    deployment = build_deployment(LLMModel.from_body(body), OperatorSettings())
    deployment["metadata"].pop("ownerReferences", None)  # the owner does not exist: not what is tested
    pod_spec = deployment["spec"]["template"]["spec"]
    if name == "s3-download":
        assert [c["name"] for c in pod_spec["initContainers"]] == [S3_INIT_CONTAINER_NAME]
    if name == "lora-adapters":
        assert [c["name"] for c in pod_spec["initContainers"]] == [S3_ADAPTERS_INIT_CONTAINER_NAME]
    # A Pod, not only the Deployment: PSA enforces on pods, and only warns about Deployments.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-pod", "namespace": restricted, "labels": deployment["spec"]["template"]
                     ["metadata"]["labels"]},
        "spec": pod_spec,
    }  # fmt: skip
    for obj in (deployment, pod):
        proc = kube_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert "violate PodSecurity" not in proc.stderr, proc.stderr


def test_the_endpoint_pickers_pod_is_admitted_under_restricted(
    kube_cluster: ClusterClient, restricted: str
) -> None:
    body = {
        "metadata": {"name": "gie", "namespace": restricted, "uid": "u"},
        "spec": {"url": "hf://org/llama", "inferencePool": {"enabled": True}},
    }
    objects = build_endpoint_picker(LLMModel.from_body(body), OperatorSettings())
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    for obj in (deployment, account):
        obj["metadata"].pop("ownerReferences", None)
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(account))  # a pod needs its account to exist
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "picker-pod", "namespace": restricted, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    for obj in (deployment, pod):
        proc = kube_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert "violate PodSecurity" not in proc.stderr, proc.stderr
