"""Reconciling writes each changed child once and nothing when nothing changed."""

from __future__ import annotations

import copy
from typing import Any

from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from modelyard.api import metadata as md
from modelyard.operator.reconcile import desired_children, reconcile
from tests.unit.operator.factories import SETTINGS, model


class FakeKube:
    """Stores applied objects like an API server would (by kind/namespace/name), counting writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []

    async def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        self.writes.append(f"apply {obj['kind']}/{meta['name']}")
        return obj

    async def delete(self, kind: str, name: str, namespace: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.writes.append(f"delete {kind}/{name}")

    async def json_patch(self, kind: str, name: str, namespace: str, ops: list[dict[str, Any]]) -> None:
        obj = self.objects[(kind, namespace, name)]
        for op in ops:
            *parents, last = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
            target = obj
            for part in parents:
                target = target[part]
            if op["op"] == "test":
                assert target[last] == op["value"]
            elif op["op"] == "remove":
                del target[last]
            else:
                target[last] = op["value"]
        self.writes.append(f"patch {kind}/{name}")


def _merge(live: Any, applied: Any) -> Any:
    """Server-side apply of one manager as far as these tests need: maps merge, so keys that another
    manager added stay; everything else is replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        return {**live, **{k: _merge(live.get(k), v) for k, v in applied.items()}}
    return copy.deepcopy(applied)


class MergingKube(FakeKube):
    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        self.objects[key] = _merge(self.objects.get(key), obj)
        self.writes.append(f"apply {obj['kind']}/{meta['name']}")
        return self.objects[key]


async def test_first_reconcile_applies_deployment_and_service() -> None:
    kube = FakeKube()
    result = await reconcile(model(), SETTINGS, kube)
    assert result.applied == ["Deployment/llama", "Service/llama"]
    assert kube.writes == ["apply Deployment/llama", "apply Service/llama"]


async def test_a_fresh_model_is_applied_without_lookups() -> None:
    kube = FakeKube()
    gets: list[str] = []
    original = kube.get

    async def counting_get(kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        gets.append(kind)
        return await original(kind, name, namespace)

    kube.get = counting_get  # type: ignore[method-assign]
    result = await reconcile(model(), SETTINGS, kube, fresh=True)
    assert result.applied == ["Deployment/llama", "Service/llama"]
    assert gets == []
    await reconcile(model(), SETTINGS, kube)
    assert sorted(gets) == ["Deployment", "PodDisruptionBudget", "Service"]


async def test_second_reconcile_writes_nothing() -> None:
    kube = FakeKube()
    await reconcile(model(), SETTINGS, kube)
    result = await reconcile(model(), SETTINGS, kube)
    assert not result.changed
    assert result.unchanged == ["Deployment/llama", "Service/llama"]
    assert len(kube.writes) == 2


async def test_spec_change_reapplies_only_what_changed_and_stamps_the_generation() -> None:
    kube = FakeKube()
    await reconcile(model(), SETTINGS, kube)
    result = await reconcile(model(generation=2, server={"maxNumSeqs": 8}), SETTINGS, kube)
    assert result.applied == ["Deployment/llama"]
    dep = kube.objects[("Deployment", "team-a", "llama")]
    assert dep["metadata"]["annotations"][md.ANNOTATION_GENERATION] == "2"


async def test_cache_and_pdb_children_when_asked_and_pdb_removed_on_scale_down() -> None:
    kube = FakeKube()
    await reconcile(model(replicas=2, cache={"size": "10Gi"}), SETTINGS, kube)
    assert {k[0] for k in kube.objects} == {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
    }
    result = await reconcile(model(generation=2, replicas=1, cache={"size": "10Gi"}), SETTINGS, kube)
    assert result.deleted == ["PodDisruptionBudget/llama"]
    assert ("PodDisruptionBudget", "team-a", "llama") not in kube.objects


async def test_a_child_of_another_owner_is_taken_over_by_apply() -> None:
    kube = FakeKube()
    await reconcile(model(), SETTINGS, kube)
    for obj in kube.objects.values():
        obj["metadata"]["ownerReferences"] = [{"uid": "someone-else", "controller": True}]
    result = await reconcile(model(), SETTINGS, kube)
    assert result.applied == ["Deployment/llama", "Service/llama"]


def test_every_child_carries_a_spec_hash_that_changes_with_the_spec() -> None:
    before = {
        c["kind"]: c["metadata"]["annotations"][md.ANNOTATION_SPEC_HASH]
        for c in desired_children(model(), SETTINGS)
    }
    after = {
        c["kind"]: c["metadata"]["annotations"][md.ANNOTATION_SPEC_HASH]
        for c in desired_children(model(resources={"gpus": 2}), SETTINGS)
    }
    assert before["Service"] == after["Service"]
    assert before["Deployment"] != after["Deployment"]


async def test_a_hand_scaled_deployment_is_scaled_back_to_the_llmmodels_replicas() -> None:
    kube = FakeKube()
    await reconcile(model(replicas=2), SETTINGS, kube)
    kube.objects[("Deployment", "team-a", "llama")]["spec"]["replicas"] = 4  # kubectl scale deployment
    result = await reconcile(model(replicas=2), SETTINGS, kube)
    assert result.applied == ["Deployment/llama"]
    assert kube.objects[("Deployment", "team-a", "llama")]["spec"]["replicas"] == 2


async def test_a_deleted_service_is_recreated() -> None:
    kube = FakeKube()
    await reconcile(model(), SETTINGS, kube)
    del kube.objects[("Service", "team-a", "llama")]
    result = await reconcile(model(), SETTINGS, kube)
    assert result.applied == ["Service/llama"]


async def test_a_service_apply_cannot_repair_is_recreated() -> None:
    kube = FakeKube()
    await reconcile(model(), SETTINGS, kube)
    kube.objects[("Service", "team-a", "llama")]["spec"]["ports"][0]["port"] = 9999
    original = kube.apply
    rejected: list[str] = []

    async def apply_rejecting_duplicates(obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if obj["kind"] == "Service" and key in kube.objects:
            rejected.append(obj["kind"])
            raise ApiError(status=Status(code=422, message='spec.ports[1].name: Duplicate value: "http"'))
        return await original(obj)

    kube.apply = apply_rejecting_duplicates  # type: ignore[method-assign]
    result = await reconcile(model(), SETTINGS, kube)
    assert rejected == ["Service"]
    assert result.deleted == ["Service/llama"]
    assert kube.objects[("Service", "team-a", "llama")]["spec"]["ports"][0]["port"] == 8000


async def test_a_retained_cache_without_an_owner_is_not_rewritten() -> None:
    kube = FakeKube()
    spec = {"cache": {"size": "10Gi", "retain": True}}
    await reconcile(model(**spec), SETTINGS, kube)
    result = await reconcile(model(**spec), SETTINGS, kube)
    assert "PersistentVolumeClaim/llama-cache" in result.unchanged


async def test_a_key_added_to_the_service_selector_is_removed_and_reported_as_repaired() -> None:
    kube = MergingKube()
    first = await reconcile(model(), SETTINGS, kube)
    assert first.repaired == {}
    service = kube.objects[("Service", "team-a", "llama")]
    service["spec"]["selector"] = {**service["spec"]["selector"], "extra": "x"}  # kubectl patch svc
    kube.writes.clear()
    result = await reconcile(model(), SETTINGS, kube)
    assert result.repaired == {"Service/llama": [".spec.selector"]}
    assert kube.writes == ["apply Service/llama", "patch Service/llama"]
    assert "extra" not in kube.objects[("Service", "team-a", "llama")]["spec"]["selector"]
    kube.writes.clear()
    assert (await reconcile(model(), SETTINGS, kube)).repaired == {}
    assert kube.writes == []


async def test_a_spec_change_is_not_a_repair() -> None:
    kube = MergingKube()
    await reconcile(model(replicas=1), SETTINGS, kube)
    result = await reconcile(model(replicas=1, nodeSelector={"pool": "gpu"}), SETTINGS, kube)
    assert result.applied == ["Deployment/llama"]
    assert result.repaired == {}
