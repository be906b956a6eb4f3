"""The router's limits store in the chart: none, deployed (Valkey with persistence), or external."""

from __future__ import annotations

from typing import Any

from tests.unit.chart.render import CHART_DIR, NAMESPACE, RELEASE, find, one, render, render_error


def router_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment", "-router")["spec"]["template"]["spec"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["containers"][0]["env"]}


def test_by_default_two_replicas_spread_over_nodes_and_zones_with_a_pdb_and_no_store() -> None:
    docs = render()
    deployment = one(docs, "Deployment", "-router")
    assert deployment["spec"]["replicas"] == 2
    one(docs, "PodDisruptionBudget", "-router")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]
    (spread,) = pod["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone",
        "ScheduleAnyway",
    )
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not [n for n in router_env(docs) if n.startswith("MODELYARD_ROUTER_STORE")]
    assert not find(docs, "StatefulSet")


def test_a_deployed_store_is_one_valkey_with_a_volume_its_service_and_the_routers_point_at_it() -> None:
    docs = render(values=[CHART_DIR / "ci" / "store-values.yaml"])
    store = one(docs, "StatefulSet", "-router-store")
    service = one(docs, "Service", "-router-store")
    env = router_env(docs)
    assert (
        env["MODELYARD_ROUTER_STORE_URL"]
        == f"redis://{RELEASE}-modelyard-router-store.{NAMESPACE}.svc:6379/0"
    )
    assert env["MODELYARD_ROUTER_STORE_FAILURE_MODE"] == "open"
    secret = {"secretKeyRef": {"name": "modelyard-store-password", "key": "password"}}
    assert env["MODELYARD_ROUTER_STORE_PASSWORD"] == secret
    pod = store["spec"]["template"]["spec"]
    (valkey,) = pod["containers"]
    assert valkey["image"].startswith("docker.io/valkey/valkey:")
    assert valkey["args"][valkey["args"].index("--appendonly") + 1] == "yes"
    assert valkey["args"][valkey["args"].index("--requirepass") + 1] == "$(VALKEY_PASSWORD)"
    assert valkey["env"][0]["valueFrom"] == secret
    (claim,) = store["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert service["spec"]["selector"] == store["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 6379


def test_without_persistence_the_store_uses_an_emptydir() -> None:
    docs = render("router.store.mode=deploy", "router.store.persistence.enabled=false")
    store = one(docs, "StatefulSet", "-router-store")
    assert "volumeClaimTemplates" not in store["spec"]
    assert store["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_an_external_store_is_only_a_url_and_modes_are_checked() -> None:
    docs = render(
        "router.store.mode=external",
        "router.store.url=rediss://store.example:6380/2",
        "router.store.failureMode=closed",
    )
    assert not find(docs, "StatefulSet")
    env = router_env(docs)
    assert env["MODELYARD_ROUTER_STORE_URL"] == "rediss://store.example:6380/2"
    assert env["MODELYARD_ROUTER_STORE_FAILURE_MODE"] == "closed"
    assert "MODELYARD_ROUTER_STORE_PASSWORD" not in env
    assert "url" in render_error("router.store.mode=external")
    render_error("router.store.mode=cluster")
    render_error("router.store.url=http://not-redis")


def test_workers_reach_the_router_and_need_a_store_when_keys_have_limits() -> None:
    assert "MODELYARD_ROUTER_WORKERS" not in router_env(render())
    assert router_env(render("router.workers=4"))["MODELYARD_ROUTER_WORKERS"] == "4"
    keys = ("router.apiKeys.enabled=true", "router.apiKeys.keys=keys: []")
    assert "needs router.store.mode" in render_error("router.workers=2", *keys)
    with_store = render("router.workers=2", *keys, "router.store.mode=deploy")
    assert router_env(with_store)["MODELYARD_ROUTER_WORKERS"] == "2"
    render_error("router.workers=0")


def test_the_deployed_store_can_be_placed() -> None:
    docs = render("router.store.mode=deploy", "router.store.nodeSelector.pool=infra")
    pod = one(docs, "StatefulSet", "-router-store")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "infra"}
