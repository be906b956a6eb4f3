"""Every pod the operator creates is admitted by a namespace that enforces the `restricted` Pod Security
Standard, checked by the real API server: all three engines, and the optional parts of a model pod (the
s3:// download init container, the cache volume, a pvc:// model). The chart's own pods (operator, router)
are checked the same way in tests/integration/chart."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.deployment import S3_INIT_CONTAINER_NAME, build_deployment
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
