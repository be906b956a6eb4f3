"""Each engine's server container, golden per engine and field, and the combinations it cannot honour.

The same LLMModel fields map onto each engine's own flags; the pod around the container (resources,
volumes, security, rollout) is the engine-agnostic part tested in test_deployment.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelyard.api.llmmodel import (
    EMBED_PREFIX_CACHING_MESSAGE,
    ENGINE_ON_CPU_MESSAGE,
    Engine,
)
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.builders.engines import engine_builder
from tests.unit.operator.factories import SETTINGS, model

HUB = "meta-llama/Llama-3.1-8B-Instruct"
LISTEN = ["--host", "0.0.0.0", "--port", "8000"]
ENGINES = [e.value for e in Engine]
SPECULATIVE = {"server": {"speculative": {"numSpeculativeTokens": 4, "promptLookupMax": 3}}}
SPECULATIVE_JSON = '{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":3}'


def deploy(**spec: Any) -> dict[str, Any]:
    return build_deployment(model(**spec), SETTINGS)


def container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return dict(c)


def args(engine: str, **spec: Any) -> list[str]:
    return list(container(deploy(engine=engine, **spec))["args"])


def env(d: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(d)["env"]}


# --- golden: the whole container of a default model, per engine -----------------------------------

GOLDEN_DEFAULT: dict[str, dict[str, Any]] = {
    "modelyard": {
        "image": "registry.test/modelyard-server:1",
        "command": ["modelyard-server"],
        "args": ["--model", HUB, "--served-model-name", "llama", "--task", "generate", "--dtype", "auto",
                 "--device", "cuda", *LISTEN],
        "probes": ("/health", "/health", "/ready"),
        "shm": "8Gi",
    },
    "vllm": {
        "image": "vllm/vllm-openai:v0.32.0",
        "command": ["vllm", "serve"],
        "args": [HUB, "--served-model-name", "llama", *LISTEN, "--dtype", "auto",
                 "--tensor-parallel-size", "1"],
        "probes": ("/health", "/health", "/health"),
        "shm": "8Gi",
    },
    "sglang": {
        "image": "lmsysorg/sglang:v0.5.6",
        "command": ["python3", "-m", "sglang.launch_server"],
        "args": ["--model-path", HUB, "--served-model-name", "llama", *LISTEN, "--dtype", "auto",
                 "--tp-size", "1", "--enable-metrics"],
        "probes": ("/health", "/health", "/health"),
        "shm": "8Gi",
    },
}  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_default_container_per_engine(engine: str) -> None:
    d = deploy(engine=engine)
    c, golden = container(d), GOLDEN_DEFAULT[engine]
    assert c["image"] == golden["image"]
    assert c["command"] == golden["command"]
    assert c["args"] == golden["args"]
    probes = (
        c["startupProbe"]["httpGet"]["path"],
        c["livenessProbe"]["httpGet"]["path"],
        c["readinessProbe"]["httpGet"]["path"],
    )
    assert probes == golden["probes"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    # Same port, same Service, same scrape config for every engine: the router does not care.
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    template = d["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
        "modelyard.dev/engine": engine,
    }
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": golden["shm"]}}
    assert shm in template["spec"]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_engine_defaults_to_modelyard() -> None:
    assert model().spec.engine is Engine.MODELYARD


@pytest.mark.parametrize("engine", ENGINES)
def test_per_model_image_overrides_the_engine_default(engine: str) -> None:
    assert container(deploy(engine=engine, server={"image": "my/engine:7"}))["image"] == "my/engine:7"


def test_engine_images_come_from_operator_settings() -> None:
    settings = SETTINGS.model_copy(update={"vllm_image": "mirror/vllm:1", "sglang_image": "mirror/sgl:2"})
    assert container(build_deployment(model(engine="vllm"), settings))["image"] == "mirror/vllm:1"
    assert container(build_deployment(model(engine="sglang"), settings))["image"] == "mirror/sgl:2"


# --- every spec field, per engine --------------------------------------------------------------------

FIELD_FLAGS: dict[str, dict[str, tuple[dict[str, Any], list[str]]]] = {
    "served name and aliases": {
        "modelyard": ({"servedName": "chat", "aliases": ["a", "b"]},
                      ["--served-model-name", "chat", "--alias", "a", "--alias", "b"]),
        "vllm": ({"servedName": "chat", "aliases": ["a", "b"]}, ["--served-model-name", "chat", "a", "b"]),
        # One name only: SGLang does not check `model`, the router resolves aliases.
        "sglang": ({"servedName": "chat", "aliases": ["a", "b"]}, ["--served-model-name", "chat", "--host"]),
    },
    "dtype": {
        "modelyard": ({"server": {"dtype": "bfloat16"}}, ["--dtype", "bfloat16"]),
        "vllm": ({"server": {"dtype": "bfloat16"}}, ["--dtype", "bfloat16"]),
        "sglang": ({"server": {"dtype": "bfloat16"}}, ["--dtype", "bfloat16"]),
    },
    "max model length": {
        "modelyard": ({"server": {"maxModelLen": 8192}}, ["--max-model-len", "8192"]),
        "vllm": ({"server": {"maxModelLen": 8192}}, ["--max-model-len", "8192"]),
        "sglang": ({"server": {"maxModelLen": 8192}}, ["--context-length", "8192"]),
    },
    "max sequences": {
        "modelyard": ({"server": {"maxNumSeqs": 32}}, ["--max-num-seqs", "32"]),
        "vllm": ({"server": {"maxNumSeqs": 32}}, ["--max-num-seqs", "32"]),
        "sglang": ({"server": {"maxNumSeqs": 32}}, ["--max-running-requests", "32"]),
    },
    "GPUs per replica = tensor parallel size": {
        "modelyard": ({"resources": {"gpus": 4}}, ["--tensor-parallel-size", "4"]),
        "vllm": ({"resources": {"gpus": 4}}, ["--tensor-parallel-size", "4"]),
        "sglang": ({"resources": {"gpus": 4}}, ["--tp-size", "4"]),
    },
    "task embed": {
        "modelyard": ({"task": "embed"}, ["--task", "embed"]),
        "vllm": ({"task": "embed"}, ["--runner", "pooling", "--convert", "embed"]),
        "sglang": ({"task": "embed"}, ["--is-embedding"]),
    },
    "hub revision": {
        "vllm": ({"revision": "abc123"}, ["--revision", "abc123"]),
        "sglang": ({"revision": "abc123"}, ["--revision", "abc123"]),
    },
    "prefix caching on": {
        "modelyard": ({"server": {"prefixCaching": True}}, ["--enable-prefix-caching"]),
        "vllm": ({"server": {"prefixCaching": True}}, ["--enable-prefix-caching"]),
    },
    "prefix caching off": {
        "modelyard": ({"server": {"prefixCaching": False}}, ["--no-enable-prefix-caching"]),
        "vllm": ({"server": {"prefixCaching": False}}, ["--no-enable-prefix-caching"]),
        "sglang": ({"server": {"prefixCaching": False}}, ["--disable-radix-cache"]),
    },
    "speculative": {
        "modelyard": (SPECULATIVE, ["--speculative-config", SPECULATIVE_JSON]),
        "vllm": (SPECULATIVE, ["--speculative-config", SPECULATIVE_JSON]),
    },
}  # fmt: skip

FIELD_CASES = [
    pytest.param(engine, spec, flags, id=f"{field}-{engine}")
    for field, per_engine in FIELD_FLAGS.items()
    for engine, (spec, flags) in per_engine.items()
]


def _contains_run(haystack: list[str], needle: list[str]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


@pytest.mark.parametrize(("engine", "spec", "flags"), FIELD_CASES)
def test_spec_field_maps_onto_the_engine_flag(engine: str, spec: dict[str, Any], flags: list[str]) -> None:
    got = args(engine, **spec)
    assert _contains_run(got, flags), got
    # ...and only when asked for: the default model's command line does not say it.
    assert not _contains_run(args(engine), flags)


@pytest.mark.parametrize("engine", ENGINES)
def test_extra_args_come_last_verbatim(engine: str) -> None:
    got = args(engine, server={"extraArgs": ["--seed", "7", "--enforce-eager"]})
    assert got[-3:] == ["--seed", "7", "--enforce-eager"]


def test_speculative_decoding_is_off_unless_asked_and_sglang_has_no_such_flag() -> None:
    assert not any("speculative" in a for e in ENGINES for a in args(e))
    assert not any("speculative" in a for a in args("sglang", **SPECULATIVE))


def test_prefix_caching_unset_keeps_each_engine_default() -> None:
    assert not any("prefix" in a or "radix" in a for e in ENGINES for a in args(e))


def test_sglang_radix_cache_stays_on_when_prefix_caching_is_true() -> None:
    assert "--disable-radix-cache" not in args("sglang", server={"prefixCaching": True})


def test_modelyard_single_gpu_and_cpu_leave_the_split_to_the_server_default() -> None:
    assert "--tensor-parallel-size" not in args("modelyard")
    assert "--tensor-parallel-size" not in args("modelyard", resources={"gpus": 0})


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_peer_engines_on_cpu_with_a_cpu_image_get_no_tensor_parallel_flag(engine: str) -> None:
    got = args(engine, resources={"gpus": 0}, server={"image": "my/cpu-build:1"})
    assert "--tensor-parallel-size" not in got
    assert "--tp-size" not in got


@pytest.mark.parametrize("engine", ENGINES)
def test_four_gpus_request_four_gpus(engine: str) -> None:
    res = container(deploy(engine=engine, resources={"gpus": 4}))["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "4"


@pytest.mark.parametrize("engine", ENGINES)
def test_pvc_model_is_a_local_path_for_every_engine(engine: str) -> None:
    got = args(engine, url="pvc://weights/llama-8b")
    assert "/models/weights/llama-8b" in got
    assert env(deploy(engine=engine, url="pvc://weights/llama-8b"))["HF_HUB_OFFLINE"]["value"] == "1"


@pytest.mark.parametrize("engine", ENGINES)
def test_hub_token_and_cache_for_every_engine(engine: str) -> None:
    e = env(deploy(engine=engine, hubTokenSecret={"name": "hf"}, cache={"size": "100Gi"}))
    assert e["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert e["HF_HOME"]["value"] == "/cache/huggingface"


def test_revision_goes_to_the_modelyard_server_env_and_to_peer_flags() -> None:
    assert env(deploy(revision="v2"))["MODELYARD_SERVER_REVISION"]["value"] == "v2"
    assert "MODELYARD_SERVER_REVISION" not in env(deploy(engine="vllm", revision="v2"))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_peer_engines_run_non_root_with_a_writable_home(engine: str) -> None:
    d = deploy(engine=engine)
    assert container(d)["securityContext"]["runAsUser"] == 1000
    assert env(d)["HOME"]["value"] == "/tmp"


def test_user_env_wins_over_engine_env() -> None:
    d = deploy(engine="vllm", server={"env": [{"name": "HOME", "value": "/home/me"}]})
    assert env(d)["HOME"]["value"] == "/home/me"


@pytest.mark.parametrize("engine", ENGINES)
def test_shm_size_comes_from_the_model_for_every_engine(engine: str) -> None:
    d = deploy(engine=engine, resources={"gpus": 8, "shmSize": "32Gi"})
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}}
    assert shm in d["spec"]["template"]["spec"]["volumes"]


def test_only_the_builtin_server_has_a_progress_endpoint() -> None:
    assert engine_builder("modelyard").progress_path == "/ready"
    assert engine_builder("vllm").progress_path is None
    assert engine_builder("sglang").progress_path is None


# --- combinations an engine cannot honour -----------------------------------------------------------

REJECTED = [
    pytest.param({"engine": "vllm", "resources": {"gpus": 0}}, ENGINE_ON_CPU_MESSAGE,
                 id="vllm-cpu-default-image"),
    pytest.param({"engine": "sglang", "resources": {"gpus": 0}}, ENGINE_ON_CPU_MESSAGE,
                 id="sglang-cpu-default-image"),
    pytest.param({"engine": "vllm", "task": "embed", "server": {"prefixCaching": True}},
                 EMBED_PREFIX_CACHING_MESSAGE, id="vllm-embed-prefix-caching"),
    pytest.param({"engine": "modelyard", "task": "embed", "server": {"prefixCaching": True}},
                 EMBED_PREFIX_CACHING_MESSAGE, id="modelyard-embed-prefix-caching"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "message"), REJECTED)
def test_combinations_an_engine_cannot_honour_are_rejected(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.split(":")[0]):
        model(**spec)


def test_unknown_engine_is_rejected() -> None:
    with pytest.raises(ValidationError):
        model(engine="tgi")


ACCEPTED = [
    pytest.param({"engine": "modelyard", "server": {"prefixCaching": False}}, id="modelyard-prefix-off"),
    pytest.param({"engine": "modelyard", "server": {"prefixCaching": True}}, id="modelyard-prefix-on"),
    pytest.param({"engine": "vllm", "resources": {"gpus": 0}, "server": {"image": "cpu/vllm:1"}},
                 id="vllm-cpu-image"),
    pytest.param({"engine": "sglang", "task": "embed", "server": {"prefixCaching": True}}, id="sglang-embed"),
    pytest.param({"engine": "vllm", "task": "embed", "server": {"prefixCaching": False}}, id="vllm-embed"),
]  # fmt: skip


@pytest.mark.parametrize("spec", ACCEPTED)
def test_neighbouring_combinations_are_accepted(spec: dict[str, Any]) -> None:
    assert model(**spec).spec.engine.value == spec["engine"]


def test_the_builtin_server_accepts_every_flag_the_operator_builds() -> None:
    from modelyard.server.settings import parse_settings

    c = container(
        deploy(
            servedName="chat",
            aliases=["a"],
            task="embed",
            resources={"gpus": 4},
            server={"dtype": "bfloat16", "maxModelLen": 64, "maxNumSeqs": 8},
        )
    )
    s = parse_settings(c["args"])
    assert (s.served_model_name, s.alias, s.task, s.tensor_parallel_size) == ("chat", ["a"], "embed", 4)
    assert (s.host, s.port, s.max_model_len, s.max_num_seqs) == ("0.0.0.0", 8000, 64, 8)
