"""The example LLMModels are valid against the CRD's schema and cover CPU, one GPU and many GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.chart.render import EXAMPLES
from tests.unit.chart.tools import REPO_ROOT

CRD = yaml.safe_load((REPO_ROOT / "crds" / "modelyard.dev_llmmodels.yaml").read_text())
SCHEMA: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_the_crd_schema(example: Path) -> None:
    doc = load(example)
    assert doc["apiVersion"] == f"{CRD['spec']['group']}/{CRD['spec']['versions'][0]['name']}"
    assert doc["kind"] == CRD["spec"]["names"]["kind"]
    # The structural schema is JSON Schema apart from the x-kubernetes-* keywords, which jsonschema ignores;
    # the CEL rules are checked by the real API server in tests/integration/chart.
    jsonschema.Draft7Validator(SCHEMA["properties"]["spec"]).validate(doc["spec"])


def test_a_wrong_field_fails_the_same_check() -> None:
    bad = load(REPO_ROOT / "examples" / "single-gpu.yaml")
    bad["spec"]["resources"]["gpus"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA["properties"]["spec"]).validate(bad["spec"])


def test_examples_cover_cpu_single_gpu_and_multi_gpu() -> None:
    gpus = sorted(load(p)["spec"]["resources"]["gpus"] for p in EXAMPLES)
    assert gpus[0] == 0
    assert 1 in gpus
    assert gpus[-1] > 1


def test_each_engine_has_a_multi_gpu_example_whose_pod_gets_the_matching_flag() -> None:
    from modelyard.api.llmmodel import LLMModel
    from modelyard.operator.builders.deployment import build_deployment
    from modelyard.operator.settings import OperatorSettings

    tp_flag = {"modelyard": "--tensor-parallel-size", "vllm": "--tensor-parallel-size", "sglang": "--tp-size"}
    seen = set()
    for path in EXAMPLES:
        doc = load(path)
        gpus = doc["spec"]["resources"]["gpus"]
        if gpus < 2:
            continue
        body = {
            "metadata": {"name": doc["metadata"]["name"], "namespace": "x", "uid": "u"},
            "spec": doc["spec"],
        }
        model = LLMModel.from_body(body)  # the pydantic model mirrors the CEL rules
        (c,) = build_deployment(model, OperatorSettings())["spec"]["template"]["spec"]["containers"]
        flag = tp_flag[model.spec.engine.value]
        assert c["args"][c["args"].index(flag) + 1] == str(gpus), path.name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        seen.add(model.spec.engine.value)
    assert seen == set(tp_flag)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_no_example_runs_several_replicas_on_a_read_write_once_cache(example: Path) -> None:
    from modelyard.api.llmmodel import LLMModel
    from modelyard.operator.status import cache_condition

    cond = cache_condition(LLMModel.from_body(load(example)))
    assert cond is None or cond.status == "True", cond


def test_all_examples_applied_together_have_no_served_name_conflict() -> None:
    from modelyard.api.names import name_conflicts

    bodies = [{**load(p), "metadata": {**load(p)["metadata"], "namespace": "default"}} for p in EXAMPLES]
    assert name_conflicts(bodies) == {}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_an_example_that_promises_a_shm_size_gets_it(example: Path) -> None:
    import re

    from modelyard.api.llmmodel import LLMModel
    from modelyard.operator.builders.deployment import build_deployment
    from modelyard.operator.settings import OperatorSettings

    comments = " ".join(
        line.lstrip("# ") for line in example.read_text().splitlines() if line.startswith("#")
    )
    promised = re.search(r"(\d+Gi) `/dev/shm`", comments)
    body = {**load(example), "metadata": {**load(example)["metadata"], "namespace": "x", "uid": "u"}}
    volumes = build_deployment(LLMModel.from_body(body), OperatorSettings())["spec"]["template"]["spec"][
        "volumes"
    ]
    shm = next(v for v in volumes if v["name"] == "dshm")["emptyDir"]["sizeLimit"]
    if promised is not None:
        assert shm == promised.group(1)
    else:
        assert example.name not in ("multi-gpu-vllm.yaml", "multi-gpu-sglang.yaml")
