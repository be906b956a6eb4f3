"""The model server Deployment, one spec field at a time."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.api import metadata as md
from modelyard.operator.builders.deployment import build_deployment
from tests.unit.operator.factories import SETTINGS, model


def deploy(**spec: Any) -> dict[str, Any]:
    return build_deployment(model(**spec), SETTINGS)


def container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return dict(c)


def pod(d: dict[str, Any]) -> dict[str, Any]:
    return dict(d["spec"]["template"]["spec"])


def env(d: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(d)["env"]}


def test_identity_labels_and_owner() -> None:
    d = deploy()
    meta = d["metadata"]
    assert (meta["name"], meta["namespace"]) == ("llama", "team-a")
    assert meta["labels"][md.LABEL_MODEL] == "llama"
    assert meta["labels"][md.LABEL_MANAGED_BY] == md.FIELD_MANAGER
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "modelyard.dev/v1alpha1",
            "kind": "LLMModel",
            "name": "llama",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    selector = d["spec"]["selector"]["matchLabels"]
    assert selector == {md.LABEL_MODEL: "llama", md.LABEL_COMPONENT: md.COMPONENT_MODEL_SERVER}
    assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_server_command_for_a_hub_model() -> None:
    c = container(deploy())
    assert c["command"] == ["modelyard-server"]
    assert c["args"] == [
        "--model", "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name", "llama",
        "--task", "generate",
        "--dtype", "auto",
        "--device", "cuda",
        "--host", "0.0.0.0",
        "--port", "8000",
    ]  # fmt: skip
    assert c["image"] == "registry.test/modelyard-server:1"


def test_served_name_aliases_task_and_server_options() -> None:
    c = container(
        deploy(
            servedName="chat",
            aliases=["gpt-4o", "default"],
            task="embed",
            server={
                "dtype": "bfloat16",
                "maxModelLen": 8192,
                "maxNumSeqs": 32,
                "extraArgs": ["--seed", "7"],
                "image": "my/server:2",
            },
        )
    )
    args = c["args"]
    assert args[args.index("--served-model-name") + 1] == "chat"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--alias"] == ["gpt-4o", "default"]
    assert args[args.index("--task") + 1] == "embed"
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--max-num-seqs") + 1] == "32"
    assert args[-2:] == ["--seed", "7"]
    assert c["image"] == "my/server:2"


def test_optional_server_flags_are_absent_by_default() -> None:
    args = container(deploy())["args"]
    assert "--max-model-len" not in args
    assert "--max-num-seqs" not in args
    assert "--alias" not in args


def test_pvc_model_is_mounted_read_only_and_passed_as_a_path() -> None:
    d = deploy(url="pvc://weights/llama/8b")
    c = container(d)
    assert c["args"][c["args"].index("--model") + 1] == "/models/weights/llama/8b"
    assert {"name": "model", "mountPath": "/models/weights", "readOnly": True} in c["volumeMounts"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod(d)[
        "volumes"
    ]
    assert env(d)["HF_HUB_OFFLINE"]["value"] == "1"


def test_s3_model_is_fetched_by_an_init_container() -> None:
    d = deploy(url="s3://bucket/models/llama", server={"envFrom": [{"secretRef": {"name": "aws"}}]})
    (init,) = pod(d)["initContainers"]
    assert init["image"] == SETTINGS.s3_init_image
    assert init["command"] == ["aws", "s3", "sync", "s3://bucket/models/llama", "/models/s3"]
    assert init["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert init["securityContext"]["runAsNonRoot"] is True
    c = container(d)
    assert c["args"][c["args"].index("--model") + 1] == "/models/s3"
    assert {"name": "model", "emptyDir": {"sizeLimit": "100Gi"}} in pod(d)["volumes"]


def test_revision_is_passed_to_the_server_settings() -> None:
    assert env(deploy(revision="v2"))["MODELYARD_SERVER_REVISION"]["value"] == "v2"
    assert "MODELYARD_SERVER_REVISION" not in env(deploy())


def test_env_and_env_from_user_entries_win_and_stay_unique() -> None:
    d = deploy(
        cache={"size": "10Gi"},
        server={
            "env": [{"name": "HF_HOME", "value": "/elsewhere"}, {"name": "X", "value": "1"}],
            "envFrom": [{"configMapRef": {"name": "cfg"}}],
        },
    )
    names = [e["name"] for e in container(d)["env"]]
    assert len(names) == len(set(names))
    assert env(d)["HF_HOME"]["value"] == "/elsewhere"
    assert env(d)["X"]["value"] == "1"
    assert container(d)["envFrom"] == [{"configMapRef": {"name": "cfg"}}]


def test_hub_token_secret_becomes_hf_token() -> None:
    e = env(deploy(hubTokenSecret={"name": "hf-secret"}))
    assert e["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-secret", "key": "token"}}


def test_the_hub_token_is_mounted_only_where_the_hub_is_reached() -> None:
    for url in ("pvc://weights/llama", "s3://bucket/llama"):
        d = deploy(url=url, hubTokenSecret={"name": "hf-secret"})
        pod = d["spec"]["template"]["spec"]
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            assert "HF_TOKEN" not in {e["name"] for e in c.get("env", [])}, (url, c["name"])


def test_gpu_requests_equal_limits_with_custom_resource_name_cpu_and_memory() -> None:
    c = container(
        deploy(resources={"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "8", "memory": "64Gi"})
    )
    assert c["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "amd.com/gpu": "2", "ephemeral-storage": "100Gi"},
        "limits": {"memory": "64Gi", "amd.com/gpu": "2", "ephemeral-storage": "100Gi"},
    }


def test_zero_gpus_requests_no_gpu() -> None:
    res = container(deploy(resources={"gpus": 0}, cache={"size": "10Gi"}))["resources"]
    assert res == {}


def test_default_gpu_is_one_nvidia_gpu() -> None:
    res = container(deploy())["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"


def test_probes_port_and_scrape_annotations() -> None:
    d = deploy()
    c = container(d)
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    # Generous: the configured startup timeout (600 s here) for downloads and weight loading.
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert d["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
        "modelyard.dev/engine": "modelyard",
    }


def test_non_root_hardened_security_context_and_shm() -> None:
    d = deploy()
    sc = container(d)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 1000
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod(d)["securityContext"]["runAsNonRoot"] is True
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod(d)["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(d)["volumeMounts"]


def test_scheduling_fields_are_passed_through() -> None:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    }
    p = pod(
        deploy(
            nodeSelector={"gpu": "h100"},
            tolerations=tolerations,
            affinity=affinity,
            priorityClassName="inference",
        )
    )
    assert p["nodeSelector"] == {"gpu": "h100"}
    assert p["tolerations"] == tolerations
    assert p["affinity"] == affinity
    assert p["priorityClassName"] == "inference"


def test_scheduling_fields_are_absent_by_default() -> None:
    p = pod(deploy())
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "initContainers"} & p.keys()


@pytest.mark.parametrize(
    ("spec", "replicas"),
    [({}, 1), ({"replicas": 3}, 3), ({"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}, 2)],
)
def test_replicas(spec: dict[str, Any], replicas: int) -> None:
    assert deploy(**spec)["spec"]["replicas"] == replicas


def test_new_cache_pvc_is_mounted_as_hf_home() -> None:
    d = deploy(cache={"size": "100Gi"})
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "llama-cache"}} in pod(d)["volumes"]
    assert {"name": "cache", "mountPath": "/cache"} in container(d)["volumeMounts"]
    assert env(d)["HF_HOME"]["value"] == "/cache/huggingface"


def test_existing_cache_claim_is_mounted() -> None:
    d = deploy(cache={"claimName": "shared-hf-cache"})
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "shared-hf-cache"}} in pod(d)["volumes"]


def test_rollouts_surge_instead_of_dropping_capacity() -> None:
    assert deploy()["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_load_balancing_does_not_touch_the_deployment() -> None:
    # Read by the router from the LLMModel; changing it must not restart GPU pods.
    assert deploy(loadBalancing={"strategy": "PrefixHash"}) == deploy()


def test_pods_drain_gracefully_within_their_grace_period() -> None:
    """preStop sleep (routers drop the pod meanwhile), then the server's 30 s drain, before SIGKILL."""
    from modelyard.operator.builders import deployment as d

    dep = d.build_deployment(model(), SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": d.PRE_STOP_SLEEP_SECONDS}}
    assert pod["terminationGracePeriodSeconds"] > d.PRE_STOP_SLEEP_SECONDS + d.SERVER_DRAIN_SECONDS
    assert c["readinessProbe"]["periodSeconds"] <= 2


def test_the_device_is_explicit_cuda_with_gpus_and_cpu_without() -> None:
    for spec, expected in (
        ({}, "cuda"),
        ({"resources": {"gpus": 4}}, "cuda"),
        ({"resources": {"gpus": 0}}, "cpu"),
    ):
        args = container(deploy(**spec))["args"]
        assert args[args.index("--device") + 1] == expected, spec
        assert args.count("--device") == 1


def test_without_a_cache_hub_downloads_go_to_a_sized_emptydir_with_matching_ephemeral_storage() -> None:
    d = deploy(resources={"ephemeralStorage": "200Gi"})
    c = container(d)
    assert {"name": "cache", "emptyDir": {"sizeLimit": "200Gi"}} in pod(d)["volumes"]
    assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
    assert {"name": "HF_HOME", "value": "/cache/huggingface"} in c["env"]
    assert (
        c["resources"]["requests"]["ephemeral-storage"]
        == c["resources"]["limits"]["ephemeral-storage"]
        == "200Gi"
    )
    default = deploy()
    assert {"name": "cache", "emptyDir": {"sizeLimit": "100Gi"}} in pod(default)["volumes"]


def test_a_cache_pvc_or_pvc_weights_need_no_local_download_space() -> None:
    for spec in ({"cache": {"size": "50Gi"}}, {"url": "pvc://weights/llama"}):
        d = deploy(**spec)
        assert "ephemeral-storage" not in container(d)["resources"].get("requests", {}), spec
        assert not any(v.get("emptyDir") and v["name"] != "dshm" for v in pod(d)["volumes"]), spec


def test_shm_size_is_configurable() -> None:
    d = deploy(resources={"shmSize": "32Gi"})
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod(d)["volumes"]
