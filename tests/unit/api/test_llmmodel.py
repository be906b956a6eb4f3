"""The LLMModel spec as the operator parses it: defaults, URL schemes, validation, replica rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelyard.api.llmmodel import (
    Dtype,
    LLMModel,
    LLMModelSpec,
    LoadBalancingStrategy,
    ModelSource,
    Task,
)


def spec(**fields: object) -> LLMModelSpec:
    return LLMModelSpec.model_validate({"url": "hf://org/name", **fields})


def test_defaults_are_a_single_generate_replica_on_one_nvidia_gpu() -> None:
    s = spec()
    assert s.task is Task.GENERATE
    assert s.server.dtype is Dtype.AUTO
    assert s.resources.gpus == 1
    assert s.resources.gpu_resource_name == "nvidia.com/gpu"
    assert s.desired_replicas == 1
    assert s.load_balancing.strategy is LoadBalancingStrategy.LEAST_LOAD
    assert s.cache is None
    assert s.hub_token_secret is None
    assert s.autoscaling is None


@pytest.mark.parametrize(
    ("url", "source", "path"),
    [
        ("hf://meta-llama/Llama-3.1-8B", ModelSource.HF, "meta-llama/Llama-3.1-8B"),
        ("hf://gpt2", ModelSource.HF, "gpt2"),
        ("pvc://weights/llama/8b", ModelSource.PVC, "weights/llama/8b"),
        ("pvc://weights", ModelSource.PVC, "weights"),
        ("s3://my-bucket/models/llama", ModelSource.S3, "my-bucket/models/llama"),
    ],
)
def test_supported_url_schemes(url: str, source: ModelSource, path: str) -> None:
    s = spec(url=url)
    assert (s.source, s.source_path) == (source, path)


@pytest.mark.parametrize(
    "url", ["http://example.com/model", "gs://bucket/x", "meta-llama/Llama", "hf://", "pvc://Bad_Claim/x", ""]
)
def test_unsupported_urls_are_rejected_with_the_supported_schemes(url: str) -> None:
    with pytest.raises(ValidationError, match="supported schemes: hf, pvc, s3"):
        spec(url=url)


def test_negative_gpus_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"resources.gpus must be >= 0"):
        spec(resources={"gpus": -1})


def test_autoscaling_min_above_max_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"minReplicas must be <= autoscaling\.maxReplicas"):
        spec(autoscaling={"minReplicas": 3, "maxReplicas": 2})


@pytest.mark.parametrize(
    ("fields", "desired"),
    [
        ({}, 1),
        ({"replicas": 0}, 0),
        ({"replicas": 4}, 4),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2),
        ({"replicas": 3, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 3),
        # A scaler writing outside the bounds is clamped, never trusted blindly.
        ({"replicas": 9, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 5),
        ({"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2),
    ],
)
def test_desired_replicas(fields: dict[str, object], desired: int) -> None:
    assert spec(**fields).desired_replicas == desired


def test_wire_names_are_camel_case_and_round_trip() -> None:
    wire = {
        "url": "hf://org/name",
        "servedName": "chat",
        "hubTokenSecret": {"name": "hf", "key": "tok"},
        "server": {"maxModelLen": 4096, "maxNumSeqs": 8, "extraArgs": ["--seed", "1"]},
        "loadBalancing": {"strategy": "PrefixHash", "prefixCharLength": 50},
        "priorityClassName": "gpu-high",
    }
    s = LLMModelSpec.model_validate(wire)
    assert s.served_name == "chat"
    assert s.server.max_model_len == 4096
    assert s.load_balancing.strategy is LoadBalancingStrategy.PREFIX_HASH
    out = s.to_wire()
    for key in wire:
        assert out[key] == wire[key] or key in ("server", "loadBalancing", "hubTokenSecret")
    assert out["server"]["maxModelLen"] == 4096
    assert out["hubTokenSecret"] == {"name": "hf", "key": "tok"}


def test_served_name_defaults_to_the_object_name() -> None:
    body = {"metadata": {"name": "m1", "namespace": "ns", "uid": "u"}, "spec": {"url": "hf://o/n"}}
    assert LLMModel.from_body(body).served_name == "m1"
    body["spec"]["servedName"] = "chat"
    assert LLMModel.from_body(body).served_name == "chat"


def test_unknown_fields_from_newer_schemas_are_ignored() -> None:
    assert spec(somethingNew=1).url == "hf://org/name"


@pytest.mark.parametrize(
    "name", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "nvidia.com/mig-1g.10gb"]
)
def test_gpu_resource_names_that_the_api_server_accepts(name: str) -> None:
    assert spec(resources={"gpuResourceName": name}).resources.gpu_resource_name == name


@pytest.mark.parametrize(
    "name", ["nvidia/gpu x", "gpu", "Nvidia.com/gpu", "nvidia.com/", "/gpu", "nvidia.com/gpu/0"]
)
def test_gpu_resource_names_that_would_break_the_deployment_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="gpuResourceName must be an extended resource name"):
        spec(resources={"gpuResourceName": name})


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--port", "9000"], "listens on 0.0.0.0:8000"),
        (["--host=::"], "listens on 0.0.0.0:8000"),
        (["--tensor-parallel-size", "2"], "from spec.resources.gpus"),
        (["--tp-size=2"], "from spec.resources.gpus"),
        (["--max-model-len", "9"], "from spec.server.maxModelLen"),
        (["--served-model-name", "x"], "from spec.servedName and spec.aliases"),
    ],
)
def test_extra_args_that_set_an_operator_owned_flag_are_refused_naming_the_field(
    args: list[str], field: str
) -> None:
    flag = args[0].split("=")[0]
    with pytest.raises(ValidationError, match=f"extraArgs: {flag} is set by the operator") as info:
        spec(server={"extraArgs": args})
    assert field in str(info.value)


def test_extra_args_the_operator_does_not_own_pass() -> None:
    assert (
        spec(server={"extraArgs": ["--seed", "1", "--portal", "x=--port"]}).server.extra_args[0] == "--seed"
    )
