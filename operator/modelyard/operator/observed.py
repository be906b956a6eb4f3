"""In-memory view of what the watches have seen: LLMModels, their Deployments and their Pods.

kopf's event handlers feed it; the status syncer reads it, so computing a status costs no API reads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from modelyard.api import metadata as md
from modelyard.api.llmmodel import LLMModel
from modelyard.api.names import NameClaim, NameConflict, name_conflicts
from modelyard.operator.adapters.plan import PodAdapters
from modelyard.operator.failures import ReconcileFailure

Key = tuple[str, str]  # (namespace, LLMModel name)


def _slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    engine = (meta.get("annotations") or {}).get(f"{md.GROUP}/engine")
    return {
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),  # the adapter loop's record of its loads is per pod instance
            "deletionTimestamp": meta.get("deletionTimestamp"),
            # Which endpoint the progress prober asks (builders/engines ENGINE_ANNOTATION).
            **({"annotations": {f"{md.GROUP}/engine": engine}} if engine else {}),
        },
        "status": dict(pod.get("status") or {}),  # includes podIP, used by the progress prober
    }


def _slim_deployment(dep: Mapping[str, Any]) -> dict[str, Any]:
    meta = dep.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "generation": meta.get("generation"),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "status": dict(dep.get("status") or {}),
    }


def ready_endpoints(endpoint_slice: Mapping[str, Any]) -> int:
    """Endpoints the slice marks ready (an absent `ready` means ready, per the API)."""
    return sum(
        1
        for ep in endpoint_slice.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready") is not False
    )


def model_key(body: Mapping[str, Any]) -> Key:
    """The key of an LLMModel body."""
    meta = body["metadata"]
    return (meta.get("namespace") or "default", meta["name"])


def model_key_of(obj: Mapping[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    model = (meta.get("labels") or {}).get(md.LABEL_MODEL)
    if not model:
        return None
    return (meta.get("namespace") or "default", model)


V = TypeVar("V")


def _put(table: dict[Key, dict[str, V]], key: Key, name: str, value: V | None) -> None:
    """Sets ``name`` under ``key``, or with ``value`` None removes it (and ``key`` once it holds nothing)."""
    if value is not None:
        table.setdefault(key, {})[name] = value
        return
    entries = table.get(key)
    if entries is not None:
        entries.pop(name, None)
        if not entries:
            del table[key]


class ObservedState:
    def __init__(self) -> None:
        self.models: dict[Key, dict[str, Any]] = {}
        # Each body in `models` parsed on first use after it changed (None: its spec does not validate).
        self._typed: dict[Key, LLMModel | None] = {}
        self.deployments: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = defaultdict(dict)
        # Ready endpoints per EndpointSlice of each model's Service: what the router can reach.
        self.endpoints: dict[Key, dict[str, int]] = defaultdict(dict)
        # Load progress the model server reported, per loading pod (written by the progress prober).
        self.progress: dict[Key, dict[str, Any]] = {}
        # The last reconcile of each model, when it failed (cleared by the next success): shown as
        # Ready=False/ReconcileFailed with the API server's message.
        self.failures: dict[Key, ReconcileFailure] = {}
        # What each ready pod of a model with LoRA on serves (written by the adapter loop).
        self.adapters: dict[Key, dict[str, PodAdapters]] = {}
        # The InferencePool each model's last successful reconcile applied or found (status.inferencePool).
        self.pools: dict[Key, str] = {}
        # Models that lose a served-name clash (api/names.py), and the names every model claims.
        self.conflicts: dict[Key, NameConflict] = {}
        self._claims: dict[Key, NameClaim] = {}
        self._claims_changed = False

    def set_model(self, body: Mapping[str, Any], deleted: bool) -> Key:
        meta = body["metadata"]
        key = model_key(body)
        claim = None if deleted else NameClaim.of(body)
        if self._claims.get(key) != claim:
            self._claims_changed = True
            if claim is None:
                self._claims.pop(key, None)
            else:
                self._claims[key] = claim
        self._typed.pop(key, None)
        if deleted:
            self.models.pop(key, None)
            self.failures.pop(key, None)
            self.adapters.pop(key, None)
        else:
            self.models[key] = {
                "metadata": dict(meta),
                "spec": dict(body.get("spec") or {}),
                "status": dict(body.get("status") or {}),
            }
        return key

    def model(self, key: Key) -> LLMModel | None:
        """The typed LLMModel last seen for ``key``, parsed once per change; None when there is none or
        its spec does not validate (the reconcile handler records that as a failure)."""
        if key not in self._typed:
            body = self.models.get(key)
            if body is None:
                return None
            try:
                self._typed[key] = LLMModel.from_body(body)
            except ValidationError:
                self._typed[key] = None
        return self._typed[key]

    def refresh_conflicts(self) -> set[Key]:
        """Recompute served-name clashes if any model's names changed; the models whose verdict changed.
        Status events (most LLMModel events) change no names and cost nothing here."""
        if not self._claims_changed:
            return set()
        self._claims_changed = False
        new = name_conflicts(self.models.values())
        changed = {k for k in new.keys() | self.conflicts.keys() if new.get(k) != self.conflicts.get(k)}
        self.conflicts = new
        return changed

    def set_deployment(self, body: Mapping[str, Any], deleted: bool) -> Key | None:
        key = model_key_of(body)
        if key is None:
            return None
        if deleted:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = _slim_deployment(body)
        return key

    def set_pod(self, body: Mapping[str, Any], deleted: bool) -> Key | None:
        key = model_key_of(body)
        if key is None:
            return None
        _put(self.pods, key, str(body["metadata"]["name"]), None if deleted else _slim_pod(body))
        return key

    def set_endpoint_slice(self, body: Mapping[str, Any], deleted: bool) -> Key | None:
        """EndpointSlices carry their Service's labels, so a model's slices have its model label."""
        key = model_key_of(body)
        if key is None:
            return None
        _put(self.endpoints, key, str(body["metadata"]["name"]), None if deleted else ready_endpoints(body))
        return key

    def ready_endpoints_of(self, key: Key) -> int | None:
        """Ready endpoints behind the model's Service; None before any slice was seen (no Service yet,
        or an operator without the watch), so that status then follows the pods alone."""
        slices = self.endpoints.get(key)
        return sum(slices.values()) if slices else None

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        return list(self.pods.get(key, {}).values())

    def phases(self) -> dict[str, int]:
        counts = Counter(str((m.get("status") or {}).get("phase") or "Unknown") for m in self.models.values())
        return dict(counts)
