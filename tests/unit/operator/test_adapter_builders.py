"""LoRA in the pod: each engine's flags, where each adapter source lands, and that the list of adapters
itself is not in the pod template (a new hf:// adapter loads at runtime, it does not roll the pods)."""

from __future__ import annotations

from typing import Any

from modelyard.operator.builders.adapters import lora_path
from modelyard.operator.builders.common import content_hash
from modelyard.operator.builders.deployment import build_deployment
from tests.unit.operator.factories import SETTINGS, model

HF_ADAPTERS = [{"name": "sql", "source": "hf://org/sql-lora"}]
LIMITS = {"lora": {"maxLoras": 4, "maxLoraRank": 64, "maxCpuLoras": 8}}


def deploy(**spec: Any) -> dict[str, Any]:
    return build_deployment(model(**spec), SETTINGS)


def pod(d: dict[str, Any]) -> dict[str, Any]:
    return dict(d["spec"]["template"]["spec"])


def server(d: dict[str, Any]) -> dict[str, Any]:
    return dict(pod(d)["containers"][0])


def env(d: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in server(d)["env"]}


def after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_no_lora_flags_without_adapters_or_limits() -> None:
    for engine in ("modelyard", "vllm", "sglang"):
        args = server(deploy(engine=engine))["args"]
        assert "--enable-lora" not in args
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env(deploy(engine="vllm"))


def test_builtin_server_flags() -> None:
    args = server(deploy(adapters=HF_ADAPTERS, server=LIMITS))["args"]
    assert "--enable-lora" in args
    assert (after(args, "--max-loras"), after(args, "--max-lora-rank"), after(args, "--max-cpu-loras")) == (
        "4",
        "64",
        "8",
    )
    assert "--allow-runtime-lora-updating" in args
    i = args.index("--allowed-lora-paths")
    assert args[i + 1 : i + 3] == ["/models", "/cache"]
    # Limits unset: the server's own defaults.
    args = server(deploy(adapters=HF_ADAPTERS))["args"]
    assert "--enable-lora" in args
    assert "--max-loras" not in args
    assert "--max-lora-rank" not in args


def test_vllm_flags_and_runtime_updating() -> None:
    d = deploy(engine="vllm", adapters=HF_ADAPTERS, server=LIMITS)
    args = server(d)["args"]
    assert "--enable-lora" in args
    assert (after(args, "--max-loras"), after(args, "--max-lora-rank"), after(args, "--max-cpu-loras")) == (
        "4",
        "64",
        "8",
    )
    assert env(d)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # A hub adapter is downloaded by vLLM itself: the hub cache and the hub stay reachable.
    assert env(d)["HF_HOME"] == "/cache/huggingface"


def test_sglang_flags() -> None:
    args = server(deploy(engine="sglang", server={"lora": {}}))["args"]
    assert "--enable-lora" in args
    # SGLang sizes its adapter pool at start: a rank and the target modules must be given.
    assert after(args, "--max-lora-rank") == "16"
    assert after(args, "--lora-target-modules") == "all"
    args = server(deploy(engine="sglang", server=LIMITS))["args"]
    assert (
        after(args, "--max-loras-per-batch"),
        after(args, "--max-lora-rank"),
        after(args, "--max-loaded-loras"),
    ) == ("4", "64", "8")


def test_the_adapter_list_is_not_in_the_pod_template() -> None:
    one = deploy(engine="vllm", adapters=HF_ADAPTERS)
    two = deploy(engine="vllm", adapters=[*HF_ADAPTERS, {"name": "b", "source": "hf://org/b"}])
    assert content_hash(one["spec"]["template"]) == content_hash(two["spec"]["template"])
    # server.lora keeps LoRA on with no adapter, so the first adapter rolls nothing either.
    empty = deploy(url="pvc://weights/llama", server={"lora": {}})
    first = deploy(url="pvc://weights/llama", server={"lora": {}}, adapters=HF_ADAPTERS)
    assert content_hash(empty["spec"]["template"]) == content_hash(first["spec"]["template"])


def test_lora_on_a_local_model_can_still_reach_the_hub() -> None:
    d = deploy(url="pvc://weights/llama", adapters=HF_ADAPTERS, hubTokenSecret={"name": "hf"})
    e = {x["name"]: x for x in server(d)["env"]}
    assert "HF_HUB_OFFLINE" not in e
    assert e["HF_HOME"]["value"] == "/cache/huggingface"
    assert e["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    assert {"name": "cache", "mountPath": "/cache"} in server(d)["volumeMounts"]


def test_pvc_adapters_mount_each_claim_once_read_only() -> None:
    adapters = [
        {"name": "a", "source": "pvc://adapters/team/a"},
        {"name": "b", "source": "pvc://adapters/team/b"},
        {"name": "c", "source": "pvc://weights/c"},  # the model's own claim: mounted already
    ]
    d = deploy(url="pvc://weights/llama", adapters=adapters)
    claims = [v for v in pod(d)["volumes"] if "persistentVolumeClaim" in v]
    assert sorted(v["persistentVolumeClaim"]["claimName"] for v in claims) == ["adapters", "weights"]
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims)
    mounts = {m["mountPath"]: m for m in server(d)["volumeMounts"]}
    assert mounts["/models/adapters"]["readOnly"] is True
    assert [lora_path(a) for a in model(url="pvc://weights/llama", adapters=adapters).spec.adapters] == [
        "/models/adapters/team/a",
        "/models/adapters/team/b",
        "/models/weights/c",
    ]


def test_s3_adapters_are_synced_by_one_init_container() -> None:
    adapters = [{"name": "a", "source": "s3://bucket/a"}, {"name": "b", "source": "s3://bucket/x/b"}]
    d = deploy(adapters=adapters, server={"envFrom": [{"secretRef": {"name": "aws"}}]})
    [init] = pod(d)["initContainers"]
    assert init["name"] == "fetch-adapters"
    assert init["command"][:2] == ["sh", "-c"]
    assert "aws s3 sync s3://bucket/a /models/.s3-adapters/a" in init["command"][2]
    assert "aws s3 sync s3://bucket/x/b /models/.s3-adapters/b" in init["command"][2]
    assert init["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert {"name": "s3-adapters", "mountPath": "/models/.s3-adapters", "readOnly": True} in server(d)[
        "volumeMounts"
    ]
    assert [lora_path(a) for a in model(adapters=adapters).spec.adapters] == [
        "/models/.s3-adapters/a",
        "/models/.s3-adapters/b",
    ]


def test_hub_adapters_load_by_id() -> None:
    assert lora_path(model(adapters=HF_ADAPTERS).spec.adapters[0]) == "org/sql-lora"
