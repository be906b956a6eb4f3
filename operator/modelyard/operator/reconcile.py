"""Make an LLMModel's children match its spec: build, compare, apply only what changed.

Each child carries a hash of the manifest it was applied from, and is compared field by field with
what it holds now (`drift.py`); a child that is up to date and untouched is not written, so a resync, a
restart or a second reconcile costs reads, never writes, while a hand-edited child is put back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.operator.builders.common import content_hash, pdb_name
from modelyard.operator.builders.deployment import build_deployment
from modelyard.operator.builders.endpoint_picker import build_endpoint_picker
from modelyard.operator.builders.inference_pool import (
    ROUTE_KIND,
    build_http_route,
    build_inference_pool,
    pool_enabled,
)
from modelyard.operator.builders.pdb import build_pdb
from modelyard.operator.builders.pvc import build_cache_pvc
from modelyard.operator.builders.service import build_service
from modelyard.operator.drift import drifted, whole_field_patch
from modelyard.operator.k8s import ApiError
from modelyard.operator.settings import OperatorSettings


class KubeWriter(Protocol):
    async def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None: ...

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def delete(self, kind: str, name: str, namespace: str) -> None: ...

    async def json_patch(self, kind: str, name: str, namespace: str, ops: list[dict[str, Any]]) -> None: ...


class PoolState(Protocol):
    pools: dict[tuple[str, str], str]


# The Gateway API inference extension children (kind, name suffix), in the order they are reported; the
# picker's Deployment and Service share the kinds above and are told apart by name.
POOL_CHILDREN = (
    ("InferencePool", ""),
    ("HTTPRoute", ""),
    ("ServiceAccount", "-epp"),
    ("Role", "-epp"),
    ("RoleBinding", "-epp"),
    ("Deployment", "-epp"),
    ("Service", "-epp"),
)

# Children with no state of their own: re-created when apply alone cannot undo a hand edit.
RECREATABLE = frozenset({"Service", "PodDisruptionBudget"})

_KINDS = (
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    *(kind for kind, _ in POOL_CHILDREN),
)


def _kind_order(ref: str) -> int:
    """Report children in a stable order whatever finished first."""
    return _KINDS.index(ref.split("/", 1)[0])


@dataclass
class ReconcileResult:
    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Children changed by hand (the spec hash still matches) and put back: ref -> the fields.
    repaired: dict[str, list[str]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.deleted)


def stamp(obj: dict[str, Any], model: LLMModel) -> dict[str, Any]:
    """Add the spec-hash (and, on the Deployment, the LLMModel generation) annotations."""
    meta = obj["metadata"]
    annotations = dict(meta.get("annotations") or {})
    if obj["kind"] == "Deployment":
        annotations[md.ANNOTATION_GENERATION] = str(model.generation)
    annotations.pop(md.ANNOTATION_SPEC_HASH, None)
    unstamped = {**obj, "metadata": {**meta, "annotations": annotations}}
    annotations[md.ANNOTATION_SPEC_HASH] = content_hash(unstamped)
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def desired_children(model: LLMModel, settings: OperatorSettings) -> list[dict[str, Any]]:
    children = [
        build_cache_pvc(model, settings),
        build_deployment(model, settings),
        build_service(model, settings),
        build_pdb(model, settings),
        build_inference_pool(model, settings),
        build_http_route(model, settings),
        *build_endpoint_picker(model, settings),
    ]
    return [stamp(c, model) for c in children if c is not None]


def child_drift(
    model: LLMModel, settings: OperatorSettings, child: Mapping[str, Any], deleted: bool
) -> list[str]:
    """Why an observed child must be re-applied ([] if it matches, or is not one the model wants)."""
    kind, name = child.get("kind"), (child.get("metadata") or {}).get("name")
    desired = next(
        (c for c in desired_children(model, settings) if c["kind"] == kind and c["metadata"]["name"] == name),
        None,
    )
    if desired is None:
        return []
    if deleted:
        return ["deleted"]
    return drifted(desired, dict(child))


def _hash_of(obj: dict[str, Any] | None) -> str | None:
    if obj is None:
        return None
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations.get(md.ANNOTATION_SPEC_HASH)


def _owned_by(obj: dict[str, Any], model: LLMModel) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == model.uid and r.get("controller") for r in refs)


async def _sync_child(
    child: dict[str, Any], model: LLMModel, kube: KubeWriter, result: ReconcileResult, fresh: bool
) -> None:
    meta = child["metadata"]
    ref = f"{child['kind']}/{meta['name']}"
    existing = None if fresh else await kube.get(child["kind"], meta["name"], meta["namespace"])
    same_spec = existing is not None and _hash_of(existing) == _hash_of(child)
    drift = drifted(child, existing) if existing is not None else []
    if same_spec and not drift and (_owned_by(existing or {}, model) or not meta.get("ownerReferences")):
        # (a retained cache has no owner)
        result.unchanged.append(ref)
        return
    if same_spec and drift:
        result.repaired[ref] = drift
    try:
        live = await kube.apply(child)
    except ApiError as exc:
        # Server-side apply merges list items by key: a Service port someone renumbered stays as theirs
        # next to ours (duplicate name, 422). A Service or PDB holds no state, so put it back whole.
        if exc.status.code != 422 or existing is None or child["kind"] not in RECREATABLE:
            raise
        await kube.delete(child["kind"], meta["name"], meta["namespace"])
        live = await kube.apply(child)
        result.deleted.append(ref)
    if ops := whole_field_patch(child, live):
        await kube.json_patch(child["kind"], meta["name"], meta["namespace"], ops)
    result.applied.append(ref)


async def _drop_stale_pdb(model: LLMModel, kube: KubeWriter, result: ReconcileResult) -> None:
    # Scaled down to one replica: a maxUnavailable=1 budget would now allow zero, so drop it.
    existing = await kube.get("PodDisruptionBudget", pdb_name(model), model.namespace)
    if existing is not None and _owned_by(existing, model):
        await kube.delete("PodDisruptionBudget", pdb_name(model), model.namespace)
        result.deleted.append(f"PodDisruptionBudget/{pdb_name(model)}")


async def _drop_pool(model: LLMModel, kube: KubeWriter, result: ReconcileResult) -> None:
    """The pool was turned off (status still names it): delete what the operator made for it."""
    for kind, suffix in POOL_CHILDREN:
        name = f"{model.name}{suffix}"
        existing = await kube.get(kind, name, model.namespace)
        if existing is not None and _owned_by(existing, model):
            await kube.delete(kind, name, model.namespace)
            result.deleted.append(f"{kind}/{name}")


def record_pool(state: PoolState, key: tuple[str, str], result: ReconcileResult) -> None:
    """After a successful reconcile: the pool exists if it was applied or found up to date."""
    pool = next(
        (
            ref.split("/", 1)[1]
            for ref in result.applied + result.unchanged
            if ref.startswith("InferencePool/")
        ),
        None,
    )
    if pool is None:
        state.pools.pop(key, None)
    else:
        state.pools[key] = pool


async def _drop_route(model: LLMModel, kube: KubeWriter, result: ReconcileResult) -> None:
    existing = await kube.get("HTTPRoute", model.name, model.namespace)
    if existing is not None and _owned_by(existing, model):
        await kube.delete("HTTPRoute", model.name, model.namespace)
        result.deleted.append(f"HTTPRoute/{model.name}")


async def reconcile(
    model: LLMModel, settings: OperatorSettings, kube: KubeWriter, fresh: bool = False
) -> ReconcileResult:
    """Children are independent objects, so they are checked and applied concurrently: a new model
    costs one round trip of latency, not one per child.

    `fresh`: the LLMModel was just created (first attempt), so its children cannot exist yet (they
    would carry another uid); skip the GETs and apply straight away. A burst of new models then costs
    one request per child instead of two, and no PDB lookup."""
    result = ReconcileResult()
    children = desired_children(model, settings)
    wanted = {c["kind"] for c in children}
    steps = [_sync_child(child, model, kube, result, fresh) for child in children]
    if "PodDisruptionBudget" not in wanted and not fresh:
        steps.append(_drop_stale_pdb(model, kube, result))
    if not pool_enabled(model, settings) and model.status.inference_pool and not fresh:
        steps.append(_drop_pool(model, kube, result))
    elif ROUTE_KIND not in wanted and model.status.inference_pool and not fresh:
        steps.append(_drop_route(model, kube, result))
    await asyncio.gather(*steps)
    result.applied.sort(key=_kind_order)
    result.unchanged.sort(key=_kind_order)
    return result
