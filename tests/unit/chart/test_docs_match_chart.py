"""What the docs and the install notes tell a user matches what the chart and the repository hold."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import jsonschema
import yaml

from modelyard.operator import rbac
from tests.unit.chart.render import CHART_DIR, NAMESPACE, RELEASE, helm
from tests.unit.chart.tools import REPO_ROOT

CRD = yaml.safe_load((REPO_ROOT / "crds" / "modelyard.dev_llmmodels.yaml").read_text())
SPEC_SCHEMA: dict[str, Any] = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
DOCS = {name: (REPO_ROOT / name).read_text() for name in ("README.md", "docs/helm.md")}


def notes() -> str:
    out = helm("install", RELEASE, str(CHART_DIR), "--dry-run=client", "--namespace", NAMESPACE).stdout
    return out.split("NOTES:", 1)[1]


def test_the_notes_point_only_at_examples_that_exist() -> None:
    text = notes()
    mentioned = set(re.findall(r"examples/[\w.-]+\.yaml", text))
    assert mentioned, "the notes should point at the GPU examples"
    for path in mentioned:
        assert (REPO_ROOT / path).is_file(), path
    assert "chart's examples" not in text  # the chart package carries none


def test_the_notes_first_model_is_a_valid_llmmodel() -> None:
    text = notes()
    block = text.split("<<'YAML'", 1)[1].split("YAML", 1)[0]
    doc = yaml.safe_load(textwrap.dedent(block.strip("\n")))
    assert doc["kind"] == "LLMModel"
    jsonschema.Draft7Validator(SPEC_SCHEMA).validate(doc["spec"])


def test_the_documented_uid_is_the_charts() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    for name, text in DOCS.items():
        for found in re.findall(r"UID(?:/GID)? (\d+)", text):
            assert int(found) == uid, f"{name} says UID {found}, the chart runs {uid}"


def test_the_documented_install_namespace_is_the_one_the_rbac_and_examples_use() -> None:
    for name, text in DOCS.items():
        for found in re.findall(r"helm install \S+ \S+ --namespace (\S+)", text):
            assert found == rbac.NAMESPACE, f"{name} installs into {found}"
        for found in re.findall(r"modelyard-router\.([a-z0-9-]+)\.svc", text):
            assert found == rbac.NAMESPACE, f"{name} points at the router in {found}"
