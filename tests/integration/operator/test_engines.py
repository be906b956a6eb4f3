"""spec.engine on the real control plane: each engine's LLMModel becomes a Ready pod on KWOK GPU nodes
with its own command, probes, /dev/shm and tensor-parallel flag, and the API server rejects the
combinations an engine cannot honour with the CEL message."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.api.llmmodel import (
    EMBED_PREFIX_CACHING_MESSAGE,
    ENGINE_ON_CPU_MESSAGE,
)
from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import OperatorProcess, llm_path, llmmodel
from tests.integration.operator.test_operator import is_ready, wait_llm

# engine -> (command, tensor-parallel flag, readiness path)
EXPECTED: dict[str, tuple[list[str], str, str]] = {
    "modelyard": (["modelyard-server"], "--tensor-parallel-size", "/ready"),
    "vllm": (["vllm", "serve"], "--tensor-parallel-size", "/health"),
    "sglang": (["python3", "-m", "sglang.launch_server"], "--tp-size", "/health"),
}


def running_pod(cluster: ClusterClient, ns: str, name: str) -> dict[str, Any]:
    pods = cluster.get_json(f"/api/v1/namespaces/{ns}/pods?labelSelector={md.LABEL_MODEL}%3D{name}")
    items = [p for p in (pods or {}).get("items", []) if p["status"].get("phase") == "Running"]
    assert items, f"no running pod of {name}"
    return dict(items[0])


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("engine", list(EXPECTED))
def test_each_engine_becomes_ready_with_its_own_container(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess, engine: str
) -> None:
    name = f"engine-{engine}"
    kube_cluster.apply(llmmodel(name, namespace, engine=engine, resources={"gpus": 2}))
    obj = wait_llm(kube_cluster, namespace, name, "Ready=True", is_ready)
    assert obj["status"]["endpoint"] == f"http://{name}.{namespace}.svc.cluster.local:8000/v1"

    pod = running_pod(kube_cluster, namespace, name)
    (c,) = pod["spec"]["containers"]
    command, tp_flag, readiness = EXPECTED[engine]
    assert c["command"] == command
    assert flag_value(c["args"], tp_flag) == "2"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert c["readinessProbe"]["httpGet"]["path"] == readiness
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert shm["emptyDir"]["sizeLimit"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in [
        {k: m[k] for k in ("name", "mountPath")} for m in c["volumeMounts"]
    ]
    assert pod["metadata"]["annotations"]["modelyard.dev/engine"] == engine
    assert pod["spec"]["nodeName"]  # scheduled on a GPU node with room for 2 GPUs
    wide = kube_cluster.kubectl("get", "llm", name, "-n", namespace, "-o", "wide").stdout.splitlines()
    assert dict(zip(wide[0].split(), wide[1].split(), strict=False))["ENGINE"] == engine


def test_a_four_gpu_vllm_model_gets_four_gpus_and_the_matching_flag(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    kube_cluster.apply(llmmodel("engine-tp4", namespace, engine="vllm", resources={"gpus": 4}))
    wait_llm(kube_cluster, namespace, "engine-tp4", "Ready=True", is_ready)
    (c,) = running_pod(kube_cluster, namespace, "engine-tp4")["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert flag_value(c["args"], "--tensor-parallel-size") == "4"


def test_engine_combinations_that_cannot_be_honoured_are_rejected_at_apply(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "bad-engine": ({"engine": "tgi"}, "Unsupported value"),
        "my-embed-prefix": (
            {"task": "embed", "server": {"prefixCaching": True}},
            EMBED_PREFIX_CACHING_MESSAGE,
        ),
        "vllm-cpu": ({"engine": "vllm", "resources": {"gpus": 0}}, ENGINE_ON_CPU_MESSAGE),
        "sgl-cpu": ({"engine": "sglang", "resources": {"gpus": 0}}, ENGINE_ON_CPU_MESSAGE),
        "vllm-embed": (
            {"engine": "vllm", "task": "embed", "server": {"prefixCaching": True}},
            EMBED_PREFIX_CACHING_MESSAGE,
        ),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(subprocess.CalledProcessError) as info:
            kube_cluster.apply(llmmodel(name, namespace, **spec))
        stderr = " ".join(str(info.value.stderr).split())
        assert message in stderr, stderr
        assert kube_cluster.get_json(llm_path(namespace, name)) is None
    # The neighbouring combinations are accepted.
    kube_cluster.apply(
        llmmodel(
            "vllm-cpu-ok", namespace, engine="vllm", resources={"gpus": 0}, server={"image": "my/vllm-cpu:1"}
        ),
        llmmodel("sgl-embed-ok", namespace, engine="sglang", task="embed", server={"prefixCaching": True}),
        llmmodel("my-prefix-ok", namespace, server={"prefixCaching": True}),
    )
    assert kube_cluster.get_json(llm_path(namespace, "my-prefix-ok")) is not None
    assert kube_cluster.get_json(llm_path(namespace, "vllm-cpu-ok")) is not None


def test_extra_args_that_set_an_operator_owned_flag_are_rejected_at_apply(
    kube_cluster: ClusterClient, namespace: str, operator: OperatorProcess
) -> None:
    for name, args in {"own-port": ["--port", "9000"], "own-tp": ["--tensor-parallel-size=2"]}.items():
        with pytest.raises(subprocess.CalledProcessError) as info:
            kube_cluster.apply(llmmodel(name, namespace, server={"extraArgs": args}))
        stderr = " ".join(str(info.value.stderr).split())
        assert "server.extraArgs must not set a flag the operator sets from a field" in stderr, stderr
        assert kube_cluster.get_json(llm_path(namespace, name)) is None
    # Flags the operator does not own pass, including ones that merely start like an owned one.
    kube_cluster.apply(llmmodel("own-ok", namespace, server={"extraArgs": ["--portal", "--seed=1"]}))
