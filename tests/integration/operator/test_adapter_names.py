"""The API server itself refuses adapter lists a pod could not serve: a name used twice, a name that is
the model's served name (servedName, or metadata.name when unset) or one of its aliases, and a hub
revision on an engine that cannot honour it. Each refusal names the field and the adapter."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.client import ClusterClient
from tests.integration.operator.harness import install_crds, llm_path, llmmodel

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ns(kube_cluster: ClusterClient) -> Iterator[str]:
    name = kube_cluster.create_namespace(f"adapter-names-{uuid.uuid4().hex[:6]}")
    install_crds(kube_cluster)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def refused(cluster: ClusterClient, doc: dict[str, Any]) -> str:
    with pytest.raises(subprocess.CalledProcessError) as info:
        cluster.apply(doc)
    assert cluster.get_json(llm_path(doc["metadata"]["namespace"], doc["metadata"]["name"])) is None
    stderr = str(info.value.stderr)
    assert "<nil>" not in stderr, stderr
    return stderr


def adapter(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": f"hf://org/{name}", **extra}


def test_a_duplicate_adapter_name_is_refused(kube_cluster: ClusterClient, ns: str) -> None:
    doc = llmmodel("dup", ns, adapters=[adapter("sql"), adapter("sql")])
    # Server-side apply (what `kubectl apply --server-side`, Helm 4 and GitOps tools send).
    stderr = refused(kube_cluster, doc)
    assert '.spec.adapters: duplicate entries for key [name="sql"]' in stderr, stderr
    # A plain create: the list-map key is checked by validation.
    proc = kube_cluster.kubectl("create", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0
    assert 'spec.adapters[1]: Duplicate value: {"name":"sql"}' in proc.stderr, proc.stderr


def test_an_adapter_named_like_the_model_is_refused(kube_cluster: ClusterClient, ns: str) -> None:
    # servedName unset: the served name is metadata.name.
    stderr = refused(kube_cluster, llmmodel("chat", ns, adapters=[adapter("sql"), adapter("chat")]))
    assert "spec.adapters: Invalid value" in stderr, stderr
    assert "an adapter name is the model's served name (servedName, or metadata.name when unset)" in stderr

    stderr = refused(kube_cluster, llmmodel("m1", ns, servedName="llama", adapters=[adapter("llama")]))
    assert "an adapter name is the model's served name" in stderr, stderr

    stderr = refused(kube_cluster, llmmodel("m2", ns, aliases=["default"], adapters=[adapter("default")]))
    assert "or one of its aliases" in stderr, stderr


def test_distinct_names_are_accepted(kube_cluster: ClusterClient, ns: str) -> None:
    # metadata.name is not the served name once servedName is set, so an adapter may take it.
    names = [adapter("ok"), adapter("sql")]
    doc = llmmodel("ok", ns, servedName="llama", aliases=["default"], adapters=names)
    kube_cluster.apply(doc)
    got = kube_cluster.get_json(llm_path(ns, "ok"))
    assert got is not None
    assert [a["name"] for a in got["spec"]["adapters"]] == ["ok", "sql"]


def test_a_revision_on_a_peer_engine_is_refused(kube_cluster: ClusterClient, ns: str) -> None:
    doc = llmmodel("peer", ns, engine="vllm", adapters=[adapter("sql", revision="v2")])
    stderr = refused(kube_cluster, doc)
    assert "spec.adapters: Invalid value" in stderr, stderr
    assert "honoured by engine modelyard only" in stderr, stderr
